"""Typed configuration of the model: what a checkpoint's ``config.json`` stores.

The dataclasses mirror the module tree (``ModelConfig.vision`` configures ``model.vision`` and so
on); a sub-module's settings live in its own config, never flattened into the parent.  Presets in
:mod:`mm15.presets` are functions that return complete configs; :func:`load_model_config` reads a
checkpoint's and :func:`check_model_config` checks that its sizes fit together.  The data
pipeline's configs (packing, mixtures) live in :mod:`mm15.data.config`, training's in
:mod:`mm15.train.config`, and the JSON codec of them all in :mod:`mm15.config_json`.  Section
numbers refer to the MM1.5 paper (Zhang et al. 2024, arXiv:2409.20566) unless marked MM1
(McKinzie et al. 2024, arXiv:2403.09611).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mm15.config_json import from_dict
from mm15.errors import read_json_object

# CLIP's pixel statistics (OpenAI CLIP, also used by the DFN5B CLIP checkpoints).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(kw_only=True)
class VisionConfig:
    """A CLIP-style pre-norm ViT (MM1 §3.1; MM1.5 §3.1).

    ``image_size`` is the resolution the position embeddings were trained at (378 for
    DFN5B ViT-H/14-378); other resolutions interpolate them (672 → 48×48 = 2304 patches).
    """

    image_size: int = 378
    patch_size: int = 14
    width: int = 1280
    depth: int = 32
    heads: int = 16
    mlp_dim: int = 5120
    act: Literal["gelu", "quick_gelu"] = "quick_gelu"
    norm_eps: float = 1e-5
    # The hidden state handed to the connector, indexing HF's ``hidden_states`` list: entry 0 is
    # the embedding output after ln_pre, entry i the output of block i, so -1 = the last block
    # before any final LayerNorm (Honeybee's ``feature_layer_index``).
    feature_layer: int = -1
    # How the position table is resized off its native grid (378 → 672 px: 27×27 → 48×48);
    # the paper does not say.  "bicubic": F.interpolate bicubic (a = -0.75), align_corners=False,
    # as transformers' CLIPVisionEmbeddings.interpolate_pos_encoding and Honeybee.
    # "bicubic_antialias": the same with antialias=True, as open_clip's resize_pos_embed (a
    # PIL-style a = -0.5 kernel even when upsampling).  The checkpoint loader sets it from the
    # layout it reads (HF → "bicubic", open_clip → "bicubic_antialias"); configs saved before
    # this field load as "bicubic", the kernel they were built and trained with.
    pos_interp: Literal["bicubic", "bicubic_antialias"] = "bicubic"


@dataclass(kw_only=True)
class ConnectorConfig:
    """C-Abstractor exactly as Honeybee lays it out (MM1 §3.2; Honeybee, Cha et al., CVPR 2024)."""

    num_tokens: int = 144  # must be a perfect square: AdaptiveAvgPool2d(sqrt × sqrt)
    hidden: int = 1024
    depth: int = 3  # RegNet blocks in each of the two stages
    mlp_depth: int = 2  # Linear, then (SiLU, Linear) × (mlp_depth - 1)
    se_ratio: float = 0.25
    pos_emb: bool = True
    # Side of the grid the stored position table has; None: the encoder's native patch grid
    # (27 for 378 px / 14).  A Honeybee connector keeps the grid it was trained at (e.g. 48 at
    # 672 px); any other grid is resized bicubically on the fly.
    pos_grid: int | None = None


@dataclass(kw_only=True)
class MoEConfig:
    """Mixture-of-experts feed-forward (§4; MM1 §3.3, GShard / ST-MoE).

    Layer ``i`` (0-based) is an MoE layer when ``(i + 1) % every == 0``: with ``every=2`` the
    2nd, 4th, ... layers are sparse.
    """

    num_experts: int = 64
    top_k: int = 2
    every: int = 2
    expert_hidden: int | None = None  # None: the dense FFN width (upcycling copies it)
    load_balance_coef: float = 0.01
    # Which routing choices the load-balance loss E · Σ_e f_e · P_e counts in f_e (P_e: mean
    # router probability; padding excluded).  "first_choice": f_e = fraction of tokens whose
    # top-1 expert is e (GShard Alg. 1 / Mesh-TF ``_top_2_gating`` density_1, ST-MoE); 1 when
    # balanced.  "all_choices": f_e = (top-k assignments to e) / tokens, summing to top_k, so
    # the loss is exactly transformers' Mixtral ``load_balancing_loss_func`` (top_k when
    # balanced).  Configs saved before this field used all_choices / top_k: to reproduce them,
    # pick "all_choices" with load_balance_coef divided by top_k.  With top_k = 1 all agree.
    load_balance: Literal["first_choice", "all_choices"] = "first_choice"
    z_loss_coef: float = 0.001
    # "grouped": tokens sorted per expert and computed in one batched pass (the fast path);
    # "loop": a plain per-token loop kept as the reference the fast path is tested against.
    impl: Literal["grouped", "loop"] = "grouped"


@dataclass(kw_only=True)
class RopeScalingConfig:
    """Llama-3 style RoPE frequency scaling (HF ``rope_scaling`` with ``rope_type: llama3``)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(kw_only=True)
class LMConfig:
    """A Llama-style decoder: RMSNorm, RoPE, SwiGLU, GQA (MM1 §3.3; MM1.5 §4)."""

    vocab_size: int = 32000
    dim: int = 2048
    n_layers: int = 24
    n_heads: int = 16
    n_kv_heads: int = 16
    head_dim: int | None = None  # None: dim // n_heads
    ffn_hidden: int = 5632
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingConfig | None = None
    qkv_bias: bool = False  # True for Qwen2
    tie_embeddings: bool = False
    max_seq_len: int = 4096
    dropout: float = 0.0  # residual dropout in training (off in the paper's recipe as far as known)
    # Weight init std (Llama/OLMo use 0.02 at every size; a 64-wide model learns its attention
    # lookups far faster from a wider init, docs/demo-log.md).
    init_std: float = 0.02
    moe: MoEConfig | None = None

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads


@dataclass(kw_only=True)
class ImageConfig:
    """How images become tiles (MM1.5 §3.5, Eq. 1, Fig. 11; Table 3).

    The defaults are the final recipe: dynamic splitting with (n_min, n_max) = (4, 9) at
    r = 672, overview after the sub-images, index position indicators.
    """

    split: Literal["dynamic", "static", "none"] = "dynamic"
    resolution: int = 672  # r: the side of every tile fed to the encoder
    n_min: int = 4
    n_max: int = 9
    static_grid: tuple[int, int] = (2, 2)  # the "5 sub-images" ablation (§3.1)
    overview: Literal["after", "before", "none"] = "after"
    indicator: Literal["none", "index", "seps"] = "index"
    # Splitting is enabled only when a sample has fewer than this many images (§3.1, §4).
    split_below_images: int = 3
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    # Safe decoding: images above this many pixels are refused before their pixels are decoded.
    max_pixels: int = 64_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")


@dataclass(kw_only=True)
class VideoConfig:
    """Video as multi-image input (§5): N frames uniformly over the clip, one tile each."""

    num_frames: int = 24
    max_frame_pixels: int = 16_000_000


# When region coordinates name their image (``<k:x1,y1,x2,y2>``, mm15.data.coords):
# "multi_image": exactly when the sample shows more than one image (MM1.5 §3.1, Fig. 1, Fig. 3); "always"; "auto"
# (only regions on images k > 0, see mm15.data.coords.format_box).
RegionImageIndex = Literal["multi_image", "always", "auto"]
RegionCoords = Literal["image", "grid"]


@dataclass(kw_only=True)
class FormatConfig:
    """The chat template (mm15.data.pipeline): role markers are ordinary text, EOS ends each
    assistant turn.  A conversation renders as
    ``[BOS]System: …\\nUser: …\\nAssistant: …[EOS]\\nUser: …\\nAssistant: …[EOS]``.

    Part of the model (``ModelConfig.format``, saved in the checkpoint's config.json): training
    records the format it trained with, and chat, serve and eval render prompts with it.  The
    checkpoint's ``tokenizer_config.json`` carries the same template as Jinja for Hugging Face
    tools (mm15.data.chat_template)."""

    system_prefix: str = "System: "
    user_prefix: str = "User: "
    assistant_prefix: str = "Assistant:\n"
    turn_end: str = "\n"  # after system/user turns, and after an assistant's EOS when more follow
    add_bos: bool = True  # when the tokenizer has a BOS token (Qwen2 has none)
    region_image_index: RegionImageIndex = "multi_image"
    # What region coordinates are normalised by (mm15.data.layout.ImagePlan.region_frame):
    # "image", the original image (MM1.5, §3.1; independent of the split grid); "grid", the
    # split grid's padded canvas: the grid-dependent control that Table 2 row 7 lost 49.5
    # refer&ground points to (`mm15 demo --ablate inference_grid`).  Only the demo's evaluation
    # decodes "grid" (it needs the tiling); chat, serve, eval and export refuse such a model.
    coords: RegionCoords = "image"

    def __post_init__(self) -> None:
        if self.coords not in ("image", "grid"):
            raise ValueError(f"format.coords must be 'image' or 'grid', got {self.coords!r}")


# The assistant prefix of every model saved before ModelConfig.format existed.
LEGACY_ASSISTANT_PREFIX = "Assistant: "


@dataclass(kw_only=True)
class ModelConfig:
    """The whole MM1.5 model: encoder → connector → decoder, plus its image front end."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    # The placeholder token whose positions receive image features (one per image token).
    image_token: str = "<image>"
    image_token_id: int = -1  # -1: not resolved yet (set from the tokenizer by `mm15 init`)
    # The chat format the model was trained with (training records its last stage's); a
    # config.json saved before this field loads the format those models used (upgrade_saved).
    format: FormatConfig = field(default_factory=FormatConfig)

    @staticmethod
    def upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
        """A config.json saved before ``format`` was recorded trained with the format of that
        time, whose assistant prefix ended in a space: it loads with that format."""
        if isinstance(data, dict) and "format" not in data:
            return {**data, "format": {"assistant_prefix": LEGACY_ASSISTANT_PREFIX}}
        return data


def load_model_config(path: str) -> ModelConfig:
    """The :class:`ModelConfig` of a ``config.json``; a file that is not JSON, a field of the
    wrong type or a size that is not positive is a ValueError naming the file and field."""
    data = read_json_object(path)
    try:
        cfg = from_dict(ModelConfig, data)
        check_model_config(cfg)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
    return cfg


# Sizes that must be at least 1 (a zero or negative one only fails deep inside the model).
_POSITIVE = {
    "vision": ("image_size", "patch_size", "width", "depth", "heads", "mlp_dim"),
    "connector": ("num_tokens", "hidden", "depth", "mlp_depth"),
    "lm": (
        "vocab_size",
        "dim",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "head_dim",
        "ffn_hidden",
        "max_seq_len",
    ),
    "lm.moe": ("num_experts", "top_k", "every", "expert_hidden"),
    "image": ("resolution", "n_min", "n_max", "max_pixels"),
    "video": ("num_frames", "max_frame_pixels"),
}


def check_model_config(cfg: ModelConfig) -> None:
    """Sizes are positive and fit together; a ValueError names the field by its JSON path."""
    for part, names in _POSITIVE.items():
        node: Any = cfg
        for attr in part.split("."):
            node = getattr(node, attr)
        for name in names if node is not None else ():
            value = getattr(node, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{part}.{name} must be a positive integer, got {value!r}")
    lm, image = cfg.lm, cfg.image
    if lm.n_heads % lm.n_kv_heads:
        raise ValueError(
            f"lm.n_heads ({lm.n_heads}) must be a multiple of lm.n_kv_heads ({lm.n_kv_heads})"
        )
    if lm.head_dim is None and lm.dim % lm.n_heads:
        raise ValueError(
            f"lm.dim ({lm.dim}) must be a multiple of lm.n_heads ({lm.n_heads}) "
            "when lm.head_dim is null"
        )
    if cfg.vision.width % cfg.vision.heads:
        raise ValueError(
            f"vision.width ({cfg.vision.width}) must be a multiple of vision.heads "
            f"({cfg.vision.heads})"
        )
    if lm.moe is not None and lm.moe.top_k > lm.moe.num_experts:
        raise ValueError(
            f"lm.moe.top_k ({lm.moe.top_k}) exceeds lm.moe.num_experts ({lm.moe.num_experts})"
        )
    if image.n_max < image.n_min:
        raise ValueError(f"image.n_max ({image.n_max}) is below image.n_min ({image.n_min})")
