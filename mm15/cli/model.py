"""``mm15 info`` (a preset's parameter counts, without allocating weights) and ``mm15 init``
(an mm15 checkpoint assembled from a pretrained encoder, decoder and optionally connector)."""

from __future__ import annotations

import argparse
import json


def cmd_info(args: argparse.Namespace) -> int:
    from mm15.config_json import to_dict
    from mm15.model.params import count_params, recipe_peak_lr
    from mm15.presets import get_preset

    cfg = get_preset(args.preset, encoder=args.encoder)
    counts = count_params(cfg)
    lr = recipe_peak_lr(cfg)
    if args.json:
        print(
            json.dumps(
                {
                    "preset": args.preset,
                    "params": counts.as_dict(),
                    "mm1_peak_lr": lr,
                    "config": to_dict(cfg),
                },
                indent=2,
            )
        )
        return 0
    moe = cfg.lm.moe
    print(
        f"preset {args.preset}: {_fmt(counts.total)} parameters, "
        f"{_fmt(counts.active_per_token)} active per token"
    )
    for name in (
        "vision",
        "connector",
        "lm",
        "lm_embedding",
        "lm_non_embedding",
        "lm_experts",
        "lm_active_per_token",
    ):
        print(f"  {name:<20} {_fmt(getattr(counts, name)):>9}  ({getattr(counts, name):,})")
    v, lm = cfg.vision, cfg.lm
    print(f"  encoder   ViT {v.width}w×{v.depth}L patch {v.patch_size} @ {v.image_size}px")
    print(f"  connector C-Abstractor, {cfg.connector.num_tokens} tokens per tile")
    print(
        f"  decoder   {lm.n_layers}L d={lm.dim} heads {lm.n_heads}/{lm.n_kv_heads} "
        f"ffn {lm.ffn_hidden} vocab {lm.vocab_size}"
        + (f", MoE {moe.num_experts} experts top-{moe.top_k} every {moe.every}" if moe else "")
    )
    im = cfg.image
    print(
        f"  images    {im.split} ({im.n_min}, {im.n_max}) at r={im.resolution}, "
        f"overview {im.overview}, indicator {im.indicator}"
    )
    print(f"  MM1 Eq. 1 peak LR (dense backbone's non-embedding N): {lr:.3g}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from mm15.presets import get_preset
    from mm15.services.checkpoint import init_from_parts

    out = init_from_parts(
        vision=args.vision,
        llm=args.llm,
        preset=get_preset(args.preset),
        out=args.out,
        seed=args.seed,
        upcycle_moe=args.upcycle_moe,
        connector=args.connector,
    )
    print(f"wrote mm15 checkpoint to {out}")
    return 0


def _fmt(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``info`` and ``init`` verbs to the subparsers of :func:`mm15.cli.main.build_parser`."""
    i = sub.add_parser("info", help="parameter counts of a preset (no weights allocated)")
    i.add_argument("--preset", required=True)
    i.add_argument(
        "--encoder",
        choices=["vit-h14-378", "vit-l14-336"],
        help="vision tower of a paper preset (default vit-h14-378)",
    )
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    n = sub.add_parser("init", help="assemble an mm15 checkpoint from pretrained parts")
    n.add_argument("--vision", required=True, help="CLIP encoder dir (HF or open_clip layout)")
    n.add_argument("--llm", required=True, help="decoder dir (HF Llama/Qwen2 layout)")
    n.add_argument("--preset", required=True, help="connector/image/MoE settings")
    n.add_argument("--out", required=True)
    n.add_argument("--seed", type=int, default=0, help="connector initialisation seed")
    n.add_argument(
        "--connector",
        metavar="PATH",
        help="take the connector from a Honeybee C-Abstractor checkpoint (abstractor.* weights)",
    )
    n.add_argument(
        "--upcycle-moe",
        action="store_true",
        help="turn the dense decoder into the preset's MoE (experts copied)",
    )
    n.set_defaults(func=cmd_init)
