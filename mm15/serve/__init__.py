"""``mm15 serve``: an OpenAI-compatible chat-completions server (docs/serving.md).

config.py   ServeConfig: limits, media access, batching
schemas.py  the request (pydantic) and OpenAI-shaped errors
media.py    image_url → decoded image (data URLs; allow-listed http(s); files under a root)
prepare.py  request → checked settings → token ids and tiles (the training chat template)
engine.py   one generation thread, bounded admission (429), batches, streaming events
app.py      the FastAPI app: routes, API key, SSE, disconnects
cli.py      ``register(sub)`` for ``mm15 serve``
static/     the upload page served at /
"""
