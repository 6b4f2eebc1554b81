"""Loading public CLIP vision encoders from local directories into :class:`VisionTransformer`.

Two layouts of the public DFN5B-CLIP-ViT-H-14-378 checkpoint (MM1 §3.1; MM1.5 §3.1), open_clip and HF:

* **HF** — ``config.json`` with ``model_type`` ``clip`` (``CLIPModel``: the vision tower sits under
  ``vision_model.`` beside a text tower and projections, which are dropped) or
  ``clip_vision_model`` (``CLIPVisionModel``; transformers ≥ 5 saves it without the
  ``vision_model.`` prefix, 4.x with it — both load).
* **open_clip** — the hub layout open_clip 3.x writes (``push_to_hf_hub.save_for_hf``) and reads
  (``create_model("local-dir:...")``): ``open_clip_config.json`` holding ``{"model_cfg":
  {"vision_cfg": ..., "quick_gelu": ...}, "preprocess_cfg": ...}`` (a bare model config also
  loads) and weights found in open_clip's order of preference (:data:`OPEN_CLIP_WEIGHTS`; a
  ``.bin``/``.pth`` is read with ``torch.load(weights_only=True)``).  Vision keys live under
  ``visual.`` (a DDP ``module.`` prefix is dropped, as open_clip does); attention is
  ``nn.MultiheadAttention`` with a fused ``in_proj_weight`` (3D, D) stacking q, k, v.

The position-embedding kernel follows the layout (``VisionConfig.pos_interp``): each library
defines how its own checkpoints meet other resolutions — transformers resizes bicubically on every
forward (``interpolate_pos_encoding``), open_clip once at load time with ``antialias=True``
(``resize_pos_embed``, when the model was created at another image size).

The returned state dict uses :class:`VisionTransformer`'s names and is checked against a
meta-device instance: missing, unexpected or mis-shaped tensors raise one error listing them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from mm15.config import VisionConfig
from mm15.model.vision import VisionTransformer
from mm15.model.weights_io import load_tensors

OPEN_CLIP_CONFIG = "open_clip_config.json"
# open_clip's own preference among them (factory._find_checkpoint_in_dir; the hub holds the first
# and/or the third: constants HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME).
OPEN_CLIP_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)

# HF names (after stripping "vision_model.") → ours.  Anything unmatched is "unexpected".
_HF_RULES = [
    (r"embeddings\.class_embedding", "class_embedding"),
    (r"embeddings\.patch_embedding\.weight", "patch_embed.weight"),
    (r"embeddings\.position_embedding\.weight", "pos_embed"),
    (r"pre_layrnorm\.(weight|bias)", r"ln_pre.\1"),
    (r"post_layernorm\.(weight|bias)", r"ln_post.\1"),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (
        r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)",
        r"blocks.\1.attn.\2_proj.\3",
    ),
    (r"encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
]
# Tensors of a full CLIPModel / CLIPVisionModelWithProjection that are not the vision trunk.
_HF_IGNORED = re.compile(r"(text_model\.|text_projection|visual_projection|logit_scale|logit_bias)")
_HF_BUFFERS = re.compile(r"embeddings\.position_ids$")

# open_clip names (after stripping "visual.") → ours; in_proj is split separately.
_OC_RULES = [
    (r"conv1\.weight", "patch_embed.weight"),
    (r"class_embedding", "class_embedding"),
    (r"positional_embedding", "pos_embed"),
    (r"ln_pre\.(weight|bias)", r"ln_pre.\1"),
    (r"ln_post\.(weight|bias)", r"ln_post.\1"),
    (r"transformer\.resblocks\.(\d+)\.ln_1\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"transformer\.resblocks\.(\d+)\.ln_2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (
        r"transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)",
        r"blocks.\1.attn.out_proj.\2",
    ),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
]
_OC_IN_PROJ = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")
_OC_IGNORED = {"proj"}  # the CLIP image projection head; MM1.5 uses the token features

# open_clip vision_cfg options that change the token features away from a plain CLIP ViT, with
# the values that leave them unchanged (open_clip model.py CLIPVisionCfg).  Options that act only
# on the pooled/projected output (pool_type, final_ln_after_pool, output_tokens, proj) or in
# training (patch_dropout) do not matter here: MM1.5 takes the token features before ln_post.
_OC_UNSUPPORTED = {
    "timm_model_name": (None,),
    "ls_init_value": (None,),
    "attentional_pool": (False,),
    "no_ln_pre": (False,),
    "pos_embed_type": ("learnable",),
    "act_kwargs": (None, {}),
    "block_type": (None, "default"),
    "qk_norm": (False,),
    "scaled_cosine_attn": (False,),
    "scale_heads": (False,),
    "scale_attn_inner": (False,),
    "scale_attn": (False,),
    "scale_fc": (False,),
}


def _square(value: object, name: str, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{where}: only square {name} is supported, got {value}")
        value = value[0]
    if not isinstance(value, int):
        raise ValueError(f"{where}: {name} must be an int, got {value!r}")
    return value


def vision_config_from_hf(cfg: dict) -> VisionConfig:
    """VisionConfig from an HF ``config.json`` dict (``clip`` or ``clip_vision_model``).

    Missing keys take ``CLIPVisionConfig``'s defaults, as transformers does.
    """
    model_type = cfg.get("model_type")
    if model_type == "clip":
        cfg = cfg.get("vision_config") or {}
    elif model_type != "clip_vision_model":
        raise ValueError(
            f"HF config model_type must be 'clip' or 'clip_vision_model', got {model_type!r}"
        )
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in ("gelu", "quick_gelu"):
        raise ValueError(f"HF vision hidden_act {act!r} is not supported (gelu, quick_gelu)")
    if cfg.get("num_channels", 3) != 3:
        raise ValueError(f"HF vision num_channels must be 3, got {cfg['num_channels']}")
    return VisionConfig(
        image_size=_square(cfg.get("image_size", 224), "image_size", "HF config"),
        patch_size=_square(cfg.get("patch_size", 32), "patch_size", "HF config"),
        width=cfg.get("hidden_size", 768),
        depth=cfg.get("num_hidden_layers", 12),
        heads=cfg.get("num_attention_heads", 12),
        mlp_dim=cfg.get("intermediate_size", 3072),
        act=act,
        norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
        pos_interp="bicubic",  # transformers CLIPVisionEmbeddings.interpolate_pos_encoding
    )


def vision_config_from_open_clip(cfg: dict) -> VisionConfig:
    """VisionConfig from an ``open_clip_config.json`` dict (with or without ``model_cfg``)."""
    model_cfg = cfg.get("model_cfg", cfg)
    vision = model_cfg.get("vision_cfg")
    if not isinstance(vision, dict):
        raise ValueError("open_clip config has no model_cfg.vision_cfg object")
    bad = {k: vision[k] for k, ok in _OC_UNSUPPORTED.items() if k in vision and vision[k] not in ok}
    if bad:
        raise ValueError(f"open_clip vision_cfg options not supported by the CLIP ViT: {bad}")
    if isinstance(vision.get("layers"), (list, tuple)):
        raise ValueError("open_clip vision_cfg.layers is a list (a ModifiedResNet), not a ViT")
    width = vision.get("width", 768)
    head_width = vision.get("head_width", 64)
    if width % head_width:
        raise ValueError(
            f"open_clip vision width {width} is not divisible by head_width {head_width}"
        )
    norm_kwargs = vision.get("norm_kwargs") or {}
    if set(norm_kwargs) - {"eps"}:
        raise ValueError(f"open_clip vision_cfg.norm_kwargs {norm_kwargs} not supported (only eps)")
    eps = norm_kwargs.get("eps", 1e-5)
    return VisionConfig(
        image_size=_square(vision.get("image_size", 224), "image_size", "open_clip vision_cfg"),
        patch_size=_square(vision.get("patch_size", 16), "patch_size", "open_clip vision_cfg"),
        width=width,
        depth=vision.get("layers", 12),
        heads=width // head_width,
        mlp_dim=int(width * vision.get("mlp_ratio", 4.0)),
        act="quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu",
        norm_eps=float(eps),
        pos_interp="bicubic_antialias",  # open_clip resize_pos_embed
    )


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, repl in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def hf_to_ours(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename HF CLIP vision tensors; returns (converted, unrecognised source keys)."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, t in tensors.items():
        if _HF_IGNORED.match(key) or _HF_BUFFERS.search(key):
            continue
        bare = key.removeprefix("vision_model.")
        new = _rename(bare, _HF_RULES)
        if new is None:
            unknown.append(key)
        else:
            out[new] = t
    return out, unknown


def open_clip_to_ours(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename open_clip ``visual.*`` tensors (text tower ignored); split in_proj into q/k/v."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, t in tensors.items():
        bare = key.removeprefix("module.")  # saved from a DDP-wrapped model
        if not bare.startswith("visual."):
            continue  # text tower, logit_scale, ...
        bare = bare.removeprefix("visual.")
        if bare in _OC_IGNORED:
            continue
        m = _OC_IN_PROJ.fullmatch(bare)
        if m is not None:
            if t.shape[0] % 3:
                raise ValueError(
                    f"open_clip {key} has shape {tuple(t.shape)}; dim 0 is not 3·width"
                )
            for name, part in zip(("q", "k", "v"), t.chunk(3, dim=0), strict=True):
                out[f"blocks.{m[1]}.attn.{name}_proj.{m[2]}"] = part.clone()
            continue
        new = _rename(bare, _OC_RULES)
        if new is None:
            unknown.append(key)
        else:
            out[new] = t
    return out, unknown


def check_state_dict(
    cfg: VisionConfig, state: dict[str, Tensor], unknown: list[str], source: str
) -> None:
    """Raise one ValueError naming every missing, unexpected and mis-shaped tensor."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VisionTransformer(cfg).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(unknown) + sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or shapes:
        parts = [f"{source}: checkpoint does not match the vision config {cfg}"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", shapes),
        ):
            if items:
                more = f" ... (+{len(items) - 20} more)" if len(items) > 20 else ""
                parts.append(f"{title} ({len(items)}): {items[:20]}{more}")
        raise ValueError("\n  ".join(parts))


def load_vision_encoder(path: str | Path) -> tuple[VisionConfig, dict[str, Tensor]]:
    """Config and VisionTransformer state dict of the CLIP vision tower stored in directory ``path``.

    open_clip layout when ``open_clip_config.json`` and an open_clip weights file are present,
    else the HF layout (``config.json``).  Text tower and projection heads are dropped.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"vision checkpoint directory not found: {path}")
    oc_weights = [path / name for name in OPEN_CLIP_WEIGHTS if (path / name).exists()]
    if (path / OPEN_CLIP_CONFIG).exists() and oc_weights:
        cfg = vision_config_from_open_clip(json.loads((path / OPEN_CLIP_CONFIG).read_text()))
        state, unknown = open_clip_to_ours(load_tensors(oc_weights[0]))
        if not state and not unknown:
            raise ValueError(
                f"{oc_weights[0]}: no visual.* tensors (is this a text-only checkpoint?)"
            )
        check_state_dict(cfg, state, unknown, str(oc_weights[0]))
        return cfg, state
    if (path / "config.json").exists():
        cfg = vision_config_from_hf(json.loads((path / "config.json").read_text()))
        state, unknown = hf_to_ours(load_tensors(path))
        check_state_dict(cfg, state, unknown, str(path))
        return cfg, state
    raise FileNotFoundError(
        f"{path}: neither an open_clip checkpoint ({OPEN_CLIP_CONFIG} + one of {OPEN_CLIP_WEIGHTS}) "
        f"nor an HF one (config.json); found {sorted(p.name for p in path.iterdir())}"
    )
