"""Inference benchmark (docs/performance-inference.md records the figures).

    nice -n 19 .venv/bin/python benchmarks/infer_bench.py --part hf --lm tiny     # CPU, seconds
    nice -n 19 .venv/bin/python benchmarks/infer_bench.py --part hf --lm mid      # CPU, ~1 min
    nice -n 19 .venv/bin/python benchmarks/infer_bench.py --part mm --preset tiny # CPU smoke
    python benchmarks/infer_bench.py --part mm --preset 3b --device cuda --dtype bf16 \\
        --decode-modes eager,compile                                              # one GPU

``--part hf``: our decoder against transformers' ``LlamaForCausalLM`` (pinned 5.23.0) with the
same weights — a random HF model is saved and loaded by :mod:`mm15.model.hf_lm`, and the logits
must agree before anything is timed.  Times a prefill forward, a decode step ((prompt + K
steps) − prompt alone, ÷ K; each side with its own KV cache: ours preallocated, HF's
``DynamicCache``) and greedy generation (our ``generate`` in each ``--decode-modes`` vs HF
``generate``, no eos, batch 1 and 32); each as a speed ratio.  Times are the fastest of
``--repeats`` runs.

``--part mm``: the multimodal model of ``--preset`` (random weights, built on the meta device)
with a 10-tile image prompt (a 3r×3r image at dynamic (4, 9): 3×3 + overview): time to first
token (encoder + connector + prefill + first token, from tiles already on the host), decode
ms/token at batch 1 and tokens/s at batch 32 (from the moments tokens reach the host, so the
prefill does not enter) for each ``--decode-modes`` entry, printed beside
the memory-bandwidth floor: the bytes one decode step must read (decoder weights; with the KV
cache too) ÷ HBM bandwidth (H100 SXM 3.35 TB/s, H200 4.8 TB/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable

import torch

LMS = {  # HF LlamaConfig kwargs
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "mid": dict(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
    ),
}
BANDWIDTH_TBS = {"H100 SXM": 3.35, "H200": 4.8}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` calls after one warm-up call, in seconds (the minimum, not the
    median: on a shared machine other processes only ever add time)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


# ---------------------------------------------------------------------------------------------
# Part hf: our decoder vs transformers' LlamaForCausalLM, same weights


def load_pair(lm: str):
    """(HF model, our Decoder), fp32 on the CPU, with identical weights: a random HF model saved
    with save_pretrained and loaded by mm15.model.hf_lm.load_hf_decoder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mm15.model.hf_lm import load_hf_decoder
    from mm15.model.lm import Decoder

    torch.manual_seed(0)
    hf = LlamaForCausalLM(
        LlamaConfig(**LMS[lm], max_position_embeddings=4096, initializer_range=0.05)
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        cfg, sd = load_hf_decoder(tmp)
    ours = Decoder(cfg).eval()
    ours.load_state_dict(sd)
    return hf, ours


@torch.inference_mode()
def check_parity(hf, ours) -> float:
    """Max |Δ| of the logits, fp32 on the CPU (before any timing, on any device)."""
    ids = torch.randint(
        0, hf.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0)
    )
    diff = (ours(ids).logits - hf(input_ids=ids, use_cache=False).logits).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"logits differ from transformers by {diff:.3g} > 1e-4")
    return diff


@torch.inference_mode()
def decode_steps_ours(ours, ids, steps: int) -> None:
    from mm15.model.attention import KVCache

    B, T = ids.shape
    w = ours.embed.weight
    cache = KVCache.allocate(ours.cfg, B, T + steps, w.dtype, w.device)
    hidden = ours(ids, cache=cache, compute_logits=False).hidden
    tok = ours.logits(hidden[:, -1:]).argmax(-1)
    for _ in range(steps):
        tok = ours(tok, cache=cache).logits[:, -1:].argmax(-1)


@torch.inference_mode()
def decode_steps_hf(hf, ids, steps: int) -> None:
    from transformers import DynamicCache

    cache = DynamicCache(config=hf.config)
    out = hf(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1:].argmax(-1)
    for _ in range(steps):
        tok = hf(input_ids=tok, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)


def generate_ours(ours, ids, new: int, mode: str) -> list[list[int]]:
    from mm15.model.generate import generate

    with torch.inference_mode():
        out = generate(ours, ids.tolist(), max_new_tokens=new, decode_mode=mode)
    return [r.tokens for r in out]


def generate_hf(hf, ids, new: int) -> list[list[int]]:
    with torch.inference_mode():
        out = hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[:, ids.shape[1] :].tolist()


def part_hf(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    hf, ours = load_pair(args.lm)
    diff = check_parity(hf, ours)
    hf, ours = hf.to(device, dtype), ours.to(device, dtype)
    hf.generation_config.eos_token_id = None
    n = sum(p.numel() for p in ours.parameters())
    print(
        f"LM {args.lm}: {n / 1e6:.1f} M params, {LMS[args.lm]}; {device} {dtype}, "
        f"{torch.get_num_threads()} threads; logits max |Δ| vs transformers (fp32, CPU) = {diff:.2g}"
    )
    g = torch.Generator().manual_seed(1)
    V, T, Tg, K = hf.config.vocab_size, args.prompt_len, args.gen_prompt_len, args.steps
    print("| measurement | ours ms | transformers ms | ours ÷ transformers speed |")
    print("|---|---|---|---|")
    ids = torch.randint(0, V, (1, T), generator=g).to(device)
    with torch.inference_mode():
        t_ours = timed(lambda: ours(ids), device, args.repeats)
        t_hf = timed(lambda: hf(input_ids=ids, use_cache=False), device, args.repeats)
    print(
        f"| forward (all logits) B=1 T={T} | {t_ours * 1e3:.1f} | {t_hf * 1e3:.1f} | {t_hf / t_ours:.2f} |"
    )
    for B in (1, args.batch):
        ids = torch.randint(0, V, (B, Tg), generator=g).to(device)
        per_step = []
        for model, steps_fn in ((ours, decode_steps_ours), (hf, decode_steps_hf)):
            t0, tk = (
                timed(lambda ids=ids, m=model, f=steps_fn, k=k: f(m, ids, k), device, args.repeats)
                for k in (0, K)
            )
            per_step.append((tk - t0) / K)
        print(
            f"| decode step B={B}, cache {Tg}..{Tg + K} | {per_step[0] * 1e3:.2f} | "
            f"{per_step[1] * 1e3:.2f} | {per_step[1] / per_step[0]:.2f} |"
        )
    print(
        f"\n| greedy generation ({Tg}-token prompts) | tokens equal | ours tok/s | transformers tok/s | ours ÷ transformers |"
    )
    print("|---|---|---|---|---|")
    for B in (1, args.batch):
        ids = torch.randint(0, V, (B, Tg), generator=g).to(device)
        ref = generate_hf(hf, ids, args.new_tokens)
        t_hf = timed(lambda ids=ids: generate_hf(hf, ids, args.new_tokens), device, args.repeats)
        for mode in args.decode_modes.split(","):
            got = generate_ours(ours, ids, args.new_tokens, mode)
            same = sum(a == b for a, b in zip(got, ref, strict=True))
            t = timed(
                lambda ids=ids, m=mode: generate_ours(ours, ids, args.new_tokens, m),
                device,
                args.repeats,
            )
            tok = B * args.new_tokens
            print(
                f"| B={B}, {args.new_tokens} new, ours {mode} | {same}/{B} rows | "
                f"{tok / t:.0f} | {tok / t_hf:.0f} | {t_hf / t:.2f} |"
            )


# ---------------------------------------------------------------------------------------------
# Part mm: the multimodal model, time to first token and decode speed


def build_mm(preset: str, device: torch.device, dtype: torch.dtype):
    from mm15.model.mm15 import MM15
    from mm15.presets import get_preset
    from mm15.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    cfg = get_preset(preset)
    cfg.image = dataclasses.replace(cfg.image, n_min=4, n_max=9)  # the final recipe's range
    cfg.image_token_id = tok.image_token_id
    torch.manual_seed(0)
    with torch.device("meta"):
        model = MM15(cfg)
    model.to_empty(device=device)
    model.init_weights()
    return model.to(dtype).eval(), tok


def floors(model, batch: int, context: int) -> dict[str, tuple[float, float]]:
    """Per HBM: ms per decode step to read the decoder weights (the embedding table is read
    ``batch`` rows only; the output head in full), and to read them plus the KV cache."""
    cfg, esize = model.lm.cfg, model.lm.embed.weight.element_size()
    weight_bytes = weight_gb(model) * 1e9
    kv_bytes = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.resolved_head_dim * context * esize * batch
    return {
        name: (weight_bytes / (tbs * 1e12) * 1e3, (weight_bytes + kv_bytes) / (tbs * 1e12) * 1e3)
        for name, tbs in BANDWIDTH_TBS.items()
    }


def run_mm(model, encoded, new: int, mode: str, device: torch.device) -> tuple[float, float]:
    """(seconds to the first token, seconds per later token) of one generation, from the
    moments row 0's tokens reach the host (``on_token`` runs after each step's sync)."""
    from mm15.model.generate import generate
    from mm15.services.inference import prompt_embeddings

    stamps: list[float] = []
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        embeds = prompt_embeddings(model, encoded)
        generate(
            model.lm,
            [e.input_ids for e in encoded],
            prompt_embeds=embeds,
            max_new_tokens=new,
            decode_mode=mode,
            on_token=lambda row, tok: stamps.append(time.perf_counter()) if row == 0 else None,
        )
    return stamps[0] - t0, (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)


def part_mm(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    from PIL import Image

    from mm15.data.prompt_encoding import encode_prompt

    model, tok = build_mm(args.preset, device, dtype)
    r = model.cfg.image.resolution
    image = Image.new("RGB", (3 * r, 3 * r), (120, 160, 200))
    t0 = time.perf_counter()
    enc = encode_prompt(
        "<image>Describe the image in detail.", [image], tokenizer=tok, cfg=model.cfg
    )
    t_pre = time.perf_counter() - t0
    n_tiles, T = enc.pixels.shape[0], len(enc.input_ids)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lm_params = sum(p.numel() for p in model.lm.parameters())
    print(
        f"preset {args.preset} ({lm_params / 1e9:.2f} B decoder params) on {name}, {dtype}; "
        f"prompt: {n_tiles} tiles of {r} px, {T} tokens; tiling on the host took "
        f"{t_pre * 1e3:.0f} ms (not in TTFT)"
    )
    ctx = T + args.new_tokens
    f1, fb = floors(model, 1, ctx), floors(model, args.batch, ctx)
    print(
        f"\nBandwidth floor per decode step (decoder weights {weight_gb(model):.2f} GB; KV cache "
        f"at {ctx} tokens):"
    )
    print(
        f"| HBM | B=1 weights ms/token | B=1 weights+KV ms/token | B={args.batch} weights+KV tok/s |"
    )
    print("|---|---|---|---|")
    for dev, tbs in BANDWIDTH_TBS.items():
        print(
            f"| {dev} {tbs} TB/s | {f1[dev][0]:.3f} | {f1[dev][1]:.3f} | "
            f"{args.batch / fb[dev][1] * 1e3:.0f} |"
        )
    ref = "H200" if "H200" in name else "H100 SXM"
    print(
        f"\n| decode_mode | TTFT ms | B=1 ms/token | B=1 ÷ {ref} weights floor | "
        f"B={args.batch} tok/s | B={args.batch} ÷ {ref} floor | B={args.batch} TTFT ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode in args.decode_modes.split(","):
        ttft, step_ms, tok_s, tb1 = measure_mm(model, enc, mode, args, device)
        floor_tok_s = args.batch / fb[ref][1] * 1e3
        print(
            f"| {mode} | {ttft * 1e3:.1f} | {step_ms:.2f} | {step_ms / f1[ref][0]:.1f} | "
            f"{tok_s:.0f} | {tok_s / floor_tok_s:.2f} | {tb1 * 1e3:.0f} |"
        )


def weight_gb(model) -> float:
    lm = model.lm
    head = lm.embed.weight if lm.output is None else lm.output.weight
    n = sum(p.numel() for name, p in lm.named_parameters() if not name.startswith("embed."))
    return (n + head.numel()) * lm.embed.weight.element_size() / 1e9


def measure_mm(model, enc, mode: str, args: argparse.Namespace, device: torch.device):
    """(TTFT s, batch-1 decode ms/token, batch-B decode tok/s, batch-B TTFT s), each the best
    of ``--repeats`` runs after a warm-up run."""
    runs = {}
    for B in (1, args.batch):
        run_mm(model, [enc] * B, args.new_tokens, mode, device)  # warm-up (and compilation)
        got = [run_mm(model, [enc] * B, args.new_tokens, mode, device) for _ in range(args.repeats)]
        runs[B] = (min(g[0] for g in got), min(g[1] for g in got))
    return runs[1][0], runs[1][1] * 1e3, args.batch / runs[args.batch][1], runs[args.batch][0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["hf", "mm", "all"], default="all")
    p.add_argument("--lm", choices=sorted(LMS), default="tiny", help="--part hf decoder size")
    p.add_argument("--preset", default="tiny", help="--part mm model preset (e.g. 3b)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=128, help="--part hf forward tokens")
    p.add_argument("--gen-prompt-len", type=int, default=16, help="--part hf decode prompts")
    p.add_argument("--steps", type=int, default=16, help="--part hf decode steps timed")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-modes", default="eager,static", help="eager, static, compile")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: a shared CPU "
        "hurts multi-threaded kernels most, each waits for its slowest thread)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.part in ("hf", "all"):
        part_hf(args, device, dtype)
    if args.part in ("mm", "all"):
        print()
        part_mm(args, device, dtype)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
