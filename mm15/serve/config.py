"""Settings of ``mm15 serve``: limits, media access, batching and HTTP (docs/serving.md).

Every limit is enforced before the work it protects: the body size before parsing, the number
of messages before the request model is built, counts, text size and ``max_tokens`` before
admission, admission (the bounded queue) before any image is fetched or decoded, image bytes
before decoding, pixels from the header before pixels are decoded, and the server-wide pixel
budget before each decode (reliability notes §7.6, T13/T14).  Each config checks its own
values when built, so a bad flag is one clear error at start-up, not a server that refuses
every request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from mm15.services.image_settings import check_image_settings

MediaKind = Literal["image", "video"]  # an image_url or a video_url part


def _need(ok: bool, what: str, value: object) -> None:
    if not ok:
        raise ValueError(f"need {what}; got {value!r}")


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _at_least(cfg: object, minimum: float, *names: str, unset_ok: bool = False) -> None:
    """Each named field of ``cfg`` is a finite number >= ``minimum`` (or None, if ``unset_ok``)."""
    for name in names:
        value = getattr(cfg, name)
        if not (unset_ok and value is None):
            want = f"a finite {name} >= {minimum}" + (" or unset" if unset_ok else "")
            _need(_finite(value) and value >= minimum, want, value)


def _positive(cfg: object, *names: str) -> None:
    """Each named field of ``cfg`` is a finite number > 0 (timeouts)."""
    for name in names:
        value = getattr(cfg, name)
        _need(_finite(value) and value > 0, f"a finite {name} > 0", value)


@dataclass(kw_only=True)
class MediaConfig:
    """Where ``image_url`` and ``video_url`` may point, and how big an image or a video may be."""

    max_image_bytes: int = 10 * 2**20  # encoded size, after base64 decoding
    max_image_pixels: int = 16_000_000  # W × H from the header, checked before decoding
    max_video_bytes: int = 64 * 2**20  # a video's encoded size (all frames of a frame list)
    # Frames in a video (K, from its header or by counting packets, before decoding): decoding
    # runs up to the last sampled frame, so K bounds the work.  Each frame is an image for
    # max_image_pixels (and the model's VideoConfig.max_frame_pixels).
    max_video_frames: int = 10_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")  # PIL plugins allowed to parse
    # http(s) fetching: off unless some hosts are allowed (exact host names or IP literals).
    allow_fetch_hosts: tuple[str, ...] = ()
    fetch_timeout_s: float = 10.0  # the whole exchange: connect, headers, body, redirects
    max_redirects: int = 3
    # Private, loopback, link-local and reserved addresses are refused even for allowed hosts;
    # True lifts that (tests, or a trusted intranet) -- never the default.
    allow_private_addresses: bool = False
    # file:// URLs: refused unless set; then only regular files inside this directory.
    media_root: str | None = None
    # Server-wide budget of decoded pixels held by requests being prepared (about 3-7 bytes of
    # memory per pixel at peak).  Each decode reserves max_image_pixels first, then keeps only
    # the image's real W × H until its request is prepared; a request that cannot get its
    # reservation within pixels_wait_s gets 503.
    max_pixels_in_flight: int = 64_000_000
    pixels_wait_s: float = 5.0

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_image_bytes", "max_image_pixels")
        _at_least(self, 1, "max_video_bytes", "max_video_frames")
        _at_least(self, 0, "max_redirects", "pixels_wait_s")
        _positive(self, "fetch_timeout_s")
        _need(
            self.max_pixels_in_flight >= self.max_image_pixels,
            f"max_pixels_in_flight >= max_image_pixels ({self.max_image_pixels}), or no "
            "image of the largest allowed size could ever be decoded",
            self.max_pixels_in_flight,
        )

    def max_bytes(self, kind: MediaKind) -> int:
        """The encoded-size limit of an image or a video."""
        return self.max_video_bytes if kind == "video" else self.max_image_bytes


@dataclass(kw_only=True)
class LimitsConfig:
    """Per-request limits (each breach is a 4xx naming the limit)."""

    max_images: int = 4
    max_videos: int = 1  # video_url parts; their frames count in the pixel budget, not here
    max_body_bytes: int = 48 * 2**20
    max_prompt_tokens: int | None = None  # None: the model's lm.max_seq_len
    # UTF-8 bytes of all text in a request, checked before tokenising.  None: the prompt-token
    # limit × the tokenizer's longest token in bytes (× 4 when it normalises text), a size no
    # prompt within the token limit can exceed.
    max_prompt_bytes: int | None = None
    max_messages: int = 1024  # messages per request
    max_content_parts: int = 1024  # text and image parts in all messages together
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256
    max_stop: int = 4  # stop strings per request, as OpenAI

    def __post_init__(self) -> None:
        _at_least(self, 0, "max_images", "max_videos", "max_stop")
        _at_least(self, 1, "max_body_bytes", "max_messages", "max_content_parts", "max_tokens")
        _at_least(self, 1, "max_prompt_tokens", "max_prompt_bytes", unset_ok=True)
        if not 1 <= self.default_max_tokens <= self.max_tokens:
            raise ValueError(
                f"need 1 <= default_max_tokens ({self.default_max_tokens}) <= "
                f"max_tokens ({self.max_tokens})"
            )


@dataclass(kw_only=True)
class EngineConfig:
    """Batching and admission: at most ``max_batch`` requests share one generate call and at
    most ``max_batch + max_queue`` are admitted at once; beyond that a request gets 429."""

    max_batch: int = 8
    max_queue: int = 16
    # Before starting a batch smaller than max_batch, wait up to this long for admitted
    # requests still being prepared (images decoding) to join it; no wait when there are none.
    batch_wait_ms: float = 20.0

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_batch")
        _at_least(self, 0, "max_queue", "batch_wait_ms")


@dataclass(kw_only=True)
class HTTPConfig:
    """Who may talk to the server, and how long a connection may take to send a request head."""

    # Host header values (names or IP literals, without port) the server answers; others get
    # 421 (DNS rebinding).  ("*",): any.  The CLI defaults to the loopback names when bound to
    # loopback, and to any otherwise.
    allowed_hosts: tuple[str, ...] = ("*",)
    # A connection whose request line and headers are not complete this long after it opened
    # (or after its previous response) is closed (nginx's client_header_timeout).
    header_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _need(
            bool(self.allowed_hosts) and all(self.allowed_hosts),
            "at least one non-empty allowed host",
            self.allowed_hosts,
        )
        _positive(self, "header_timeout_s")


@dataclass(kw_only=True)
class ServeConfig:
    """``mm15 serve``'s config: which checkpoint, where to listen and with which image settings
    (read by the verb), then what the app enforces (read by :func:`mm15.serve.app.create_app`)."""

    model: str | None = None  # the mm15 checkpoint directory (the verb needs one)
    host: str = "127.0.0.1"  # bind address: loopback only unless changed
    port: int = 8000
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # None: as saved
    # Inference-time ImageConfig fields over the checkpoint's (Table 2), e.g. {"n_max": 16}:
    # mm15.services.image_settings.with_image_settings.
    image: dict[str, Any] = field(default_factory=dict)
    model_name: str = "mm15"  # the id /v1/models lists and requests must name
    api_key: str | None = None  # when set, every route but /health and the web page needs it
    web_ui: bool = True  # serve the upload page at /
    default_temperature: float = 0.0  # greedy if a request says nothing (MM1.5 §4.1), not 1.0
    media: MediaConfig = field(default_factory=MediaConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)

    def __post_init__(self) -> None:
        check_image_settings(self.image)
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key is empty; give a key or leave it unset")
        _need(
            _finite(self.default_temperature) and 0 <= self.default_temperature <= 2,
            "0 <= default_temperature <= 2",
            self.default_temperature,
        )
