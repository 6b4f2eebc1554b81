"""``mm15 demo``: the main job on built-in data.

Until the training recipe lands, the demo walks the foundation end to end on the bundled
order-sheet image: how the final recipe splits it (§3.5), what the paper's models weigh, and a
tiny randomly initialised MM1.5 that encodes the image, generates with its KV cache, is saved
as a checkpoint and loads back with identical outputs.  Everything lands in ``--out``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mm15.cli import ASSETS
from mm15.config import to_dict


def run_demo(*, out: Path) -> int:
    from mm15.checkpoint import load_checkpoint, save_checkpoint
    from mm15.data.image_io import open_image
    from mm15.data.split_report import describe_images, format_table, save_tiles_picture
    from mm15.data.splitting import tile_image
    from mm15.inference import GenerationSettings, Prompt, generate_text
    from mm15.model.mm15 import MM15
    from mm15.model.params import count_params
    from mm15.presets import get_preset, tiny
    from mm15.tokenizer import byte_tokenizer

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    image_path = ASSETS / "order_sheet.png"
    final = get_preset("3b")
    print(f"[1/4] dynamic image splitting (final recipe, §3.5) of {image_path.name}")
    rows = describe_images([image_path], final.image, tokens_per_tile=final.connector.num_tokens)
    print(format_table(rows))
    tiled = tile_image(open_image(image_path, cfg=final.image), final.image)
    save_tiles_picture(tiled, out / "order_sheet.tiles.png", cfg=final.image)

    print("[2/4] the paper's model family (parameters counted on the meta device)")
    sizes = {}
    for name in ("1b", "3b", "7b", "30b", "1b-moe", "3b-moe", "7b-moe"):
        c = count_params(get_preset(name))
        sizes[name] = {"total": c.total, "active_per_token": c.active_per_token}
        print(
            f"  {name:<7} total {c.total / 1e9:6.2f}B   active/token {c.active_per_token / 1e9:5.2f}B"
        )

    print("[3/4] a tiny random MM1.5: image → tiles → encoder → C-Abstractor → decoder")
    tokenizer = byte_tokenizer()
    cfg = tiny(vocab_size=len(tokenizer))
    cfg.image_token_id = tokenizer.image_token_id
    torch.manual_seed(0)
    model = MM15(cfg)
    model.init_weights()
    model.eval()
    image = open_image(image_path, cfg=cfg.image)
    prompt = Prompt(text="<image>\nWhat is the total?", images=[image])
    settings = GenerationSettings(max_new_tokens=16)
    cached = generate_text(model, tokenizer, [prompt], settings)[0]
    uncached = generate_text(
        model, tokenizer, [prompt], GenerationSettings(max_new_tokens=16, use_cache=False)
    )[0]
    print(
        f"  generated {len(cached.tokens)} tokens (untrained, so the text is noise); "
        f"cached == uncached: {cached.tokens == uncached.tokens}"
    )

    print("[4/4] checkpoint round trip")
    ckpt = save_checkpoint(model, tokenizer, out / "tiny-random")
    loaded, loaded_tok = load_checkpoint(ckpt)
    again = generate_text(loaded, loaded_tok, [prompt], settings)[0]
    print(
        f"  saved {ckpt}; reloaded model generates the same tokens: {again.tokens == cached.tokens}"
    )

    ok = cached.tokens == uncached.tokens == again.tokens
    summary = {
        "split": rows,
        "paper_models": sizes,
        "tiny_model": {"config": to_dict(cfg), "params": count_params(cfg).as_dict()},
        "generation": {
            "tokens": cached.tokens,
            "cache_matches_no_cache": cached.tokens == uncached.tokens,
            "reload_matches": again.tokens == cached.tokens,
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"done in {summary['seconds']} s; wrote {out / 'summary.json'}")
    return 0 if ok else 1
