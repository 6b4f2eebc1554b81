"""Settings of ``mm15 serve``: limits, media access and batching (docs/serving.md).

Every limit is enforced before the work it protects: the body size before parsing, counts and
``max_tokens`` before admission, admission (the bounded queue) before any image is fetched or
decoded, image bytes before decoding, pixels from the header before pixels are decoded
(reliability notes §7.6, T13/T14).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True)
class MediaConfig:
    """Where ``image_url`` may point, and how big an image may be."""

    max_image_bytes: int = 10 * 2**20  # encoded size, after base64 decoding
    max_image_pixels: int = 16_000_000  # W × H from the header, checked before decoding
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")  # PIL plugins allowed to parse
    # http(s) fetching: off unless some hosts are allowed (exact host names or IP literals).
    allow_fetch_hosts: tuple[str, ...] = ()
    fetch_timeout_s: float = 10.0  # connect + every read, and the whole download
    max_redirects: int = 3
    # Private, loopback, link-local and reserved addresses are refused even for allowed hosts;
    # True lifts that (tests, or a trusted intranet) -- never the default.
    allow_private_addresses: bool = False
    # file:// URLs: refused unless set; then only regular files inside this directory.
    media_root: str | None = None


@dataclass(kw_only=True)
class LimitsConfig:
    """Per-request limits (each breach is a 4xx naming the limit)."""

    max_images: int = 4
    max_body_bytes: int = 48 * 2**20
    max_prompt_tokens: int | None = None  # None: the model's lm.max_seq_len
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256
    max_stop: int = 4  # stop strings per request, as OpenAI


@dataclass(kw_only=True)
class EngineConfig:
    """Batching and admission: at most ``max_batch`` requests share one generate call and at
    most ``max_batch + max_queue`` are admitted at once; beyond that a request gets 429."""

    max_batch: int = 8
    max_queue: int = 16
    # Before starting a batch smaller than max_batch, wait up to this long for admitted
    # requests still being prepared (images decoding) to join it; no wait when there are none.
    batch_wait_ms: float = 20.0


@dataclass(kw_only=True)
class ServeConfig:
    model_name: str = "mm15"  # the id /v1/models lists and requests must name
    api_key: str | None = None  # when set, every route but /health and the web page needs it
    web_ui: bool = True  # serve the upload page at /
    default_temperature: float = 0.0  # greedy when a request says nothing (SPEC §5), not 1.0
    media: MediaConfig = field(default_factory=MediaConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        e, lim = self.engine, self.limits
        if e.max_batch < 1 or e.max_queue < 0:
            raise ValueError(
                f"need max_batch >= 1, max_queue >= 0; got {e.max_batch}, {e.max_queue}"
            )
        if not 1 <= lim.default_max_tokens <= lim.max_tokens:
            raise ValueError(f"need 1 <= default_max_tokens ({lim.default_max_tokens}) <= "
                             f"max_tokens ({lim.max_tokens})")  # fmt: skip
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key is empty; give a key or leave it unset")
