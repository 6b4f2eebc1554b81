"""``mm15 serve``: an OpenAI-compatible chat-completions server (docs/serving.md).

config.py       ServeConfig: limits, media access, batching
schemas.py      the request (pydantic) and OpenAI-shaped errors
media.py        image_url → decoded image (data URLs; decoding within the limits)
fetch.py        allow-listed http(s): public addresses only, each redirect checked, one deadline
local_files.py  file:// URLs: regular files below --media-root, no symlink followed
prepare.py      request → checked settings → token ids and tiles (the training chat template)
engine.py       one generation thread, bounded admission (429), batches, streaming events
app.py          the FastAPI app: routes, body limit, request → job
middleware.py   Host/Origin/Content-Type guard and API key, before any route
completions.py  engine events → JSON or SSE answers; disconnects cancel the job
http_errors.py  every error as OpenAI's {"error": {...}}
cli.py          ``register(sub)`` for ``mm15 serve``
static/         the upload page served at /
"""
