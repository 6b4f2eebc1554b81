"""Typed configuration for every part of mm15.

The dataclasses mirror the module tree (``ModelConfig.vision`` configures ``model.vision`` and so
on); a sub-module's settings live in its own config, never flattened into the parent.  Presets in
:mod:`mm15.presets` are functions that return complete configs.  Section numbers refer to the
MM1.5 paper (Zhang et al. 2024, arXiv:2409.20566) unless marked MM1 (McKinzie et al. 2024,
arXiv:2403.09611).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

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
    # lookups far faster from a wider init, docs/demo.md).
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
    assistant_prefix: str = "Assistant: "
    turn_end: str = "\n"  # after system/user turns, and after an assistant's EOS when more follow
    add_bos: bool = True  # when the tokenizer has a BOS token (Qwen2 has none)
    region_image_index: RegionImageIndex = "multi_image"


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
    # config.json saved before this field loads the default, the format those models used.
    format: FormatConfig = field(default_factory=FormatConfig)


# ---------------------------------------------------------------------------------------------
# Serialisation: configs round-trip through plain JSON (saved beside every checkpoint).


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, data: dict[str, Any], *, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and values of the wrong type are
    errors naming the field (``LMConfig.dim``) and its JSON path (``path`` is ``data``'s)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        at = f" at {path}" if path else ""
        raise ValueError(f"unknown {cls.__name__} keys{at}: {unknown} (known: {sorted(names)})")
    return cls(
        **{
            k: _coerce(hints[k], v, _Where(f"{cls.__name__}.{k}", _join(path, k)))
            for k, v in data.items()
        }
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass(frozen=True)
class _Where:
    """A field being read: its dataclass name (``LMConfig.dim``) and JSON path (``lm.dim``)."""

    field: str
    path: str

    def error(self, problem: str) -> ValueError:
        return ValueError(f"{self.field} {problem} (at {self.path})")

    def item(self, i: int) -> _Where:
        return _Where(f"{self.field}[{i}]", f"{self.path}[{i}]")


def _coerce(tp: Any, value: Any, where: _Where) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) not in args:
                raise where.error("may not be null")
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise where.error(f"must be an object, got {value!r}")
        return from_dict(tp, value, path=where.path)
    if origin is tuple:
        items = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise where.error(f"must be a list, got {value!r}")
        if len(items) == 2 and items[1] is Ellipsis:
            items = (items[0],) * len(value)
        elif len(items) != len(value):
            raise where.error(f"must be a list of {len(items)}, got {value!r}")
        pairs = enumerate(zip(items, value, strict=True))
        return tuple(_coerce(t, v, where.item(i)) for i, (t, v) in pairs)
    if origin is list and value is not None:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise where.error(f"must be a list, got {value!r}")
        return [_coerce(item, v, where.item(i)) for i, v in enumerate(value)]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise where.error(f"must be one of {allowed}, got {value!r}")
        return value
    return _scalar(tp, value, where)


def _scalar(tp: Any, value: Any, where: _Where) -> Any:
    """JSON scalars as the annotated type: an int is a float, nothing else is converted."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in kinds and type(value) is not tp:
        raise where.error(f"must be {kinds[tp]}, got {value!r}")
    return value


def save_json(cfg: Any, path: str) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(cfg), f, indent=2, sort_keys=True)
        f.write("\n")


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


# ---------------------------------------------------------------------------------------------
# Data pipeline: formatting (mm15.data.pipeline), packing (mm15.data.packing) and mixtures
# (mm15.data.mixture).  The paper's numbers are the defaults (MM1.5 §3.2.2, §4).

# The categories a mixture source may have; equal to mm15.data.schema.Category (a test checks).
MixCategory = Literal[
    "caption",
    "interleaved",
    "text",
    "ocr",
    "synthetic_caption",
    "general",
    "text_rich",
    "refer_ground",
    "science",
    "math",
    "code",
    "multi_image",
    "text_only",
    "video",
    "ui",
    "eval",
]
# How sources of one group share the group's weight: "equal" (stage 2: the four OCR sets are
# "sampled equally", §3.3) or in proportion to their sizes ("by_size").
Within = Literal["equal", "by_size"]


@dataclass(kw_only=True)
class PackingConfig:
    """Fixed-length packed rows (mm15.data.packing; MM1.5 §3–4: sequence length 4096)."""

    seq_len: int = 4096
    # Stage 1 packs at most 16 images per sequence (MM1.5 §3–4); None = no cap (video SFT shows 24
    # frames per sample, so its recipe must raise or drop the cap).
    max_images_per_sequence: int | None = 16


@dataclass(kw_only=True)
class PretrainWeights:
    """Stage 1 (§4): image–caption : interleaved : text-only = 50 : 10 : 40 (MM1 used 45:45:10)."""

    caption: float = 50.0
    interleaved: float = 10.0
    text: float = 40.0
    within: Within = "by_size"


@dataclass(kw_only=True)
class CPTWeights:
    """Stage 2 (§3.3): the OCR sets sampled equally; synthetic captions optional (weight 0)."""

    ocr: float = 1.0
    synthetic_caption: float = 0.0
    within: Within = "equal"


@dataclass(kw_only=True)
class SFTWeights:
    """Stage 3 (§3.2.2, Fig. 6–8).  Single-image: general and text-rich mixed by size, each other
    category at ratio α to general; then the groups single : multi : text = w_single : w_multi :
    w_text.  With sizes in the paper's ratio this gives text-rich 37.2, refer&ground 22.5,
    general 11.3, math 5.6, code 2.3, science 1.1, multi-image 10, text-only 10 (%)."""

    alpha_science: float = 0.1
    alpha_math: float = 0.5
    alpha_code: float = 0.2
    alpha_refer_ground: float = 2.0
    w_single: float = 0.8
    w_multi: float = 0.1
    w_text: float = 0.1
    within: Within = "by_size"  # sources of one category


@dataclass(kw_only=True)
class SourceConfig:
    """One data source of a mixture."""

    name: str  # e.g. "cauldron/chartqa"; the key of its dataset
    category: MixCategory
    size: int | None = None  # samples counted for "by_size" weights; None: len(dataset)


@dataclass(kw_only=True)
class MixtureConfig:
    """Which weights apply (``rule``) and to which sources.  "flat" mixes all sources by
    ``flat_within`` regardless of category (video SFT §5, UI SFT §6)."""

    rule: Literal["pretrain", "cpt", "sft", "flat"] = "sft"
    pretrain: PretrainWeights = field(default_factory=PretrainWeights)
    cpt: CPTWeights = field(default_factory=CPTWeights)
    sft: SFTWeights = field(default_factory=SFTWeights)
    flat_within: Within = "by_size"
    sources: list[SourceConfig] = field(default_factory=list)
    seed: int = 0
