"""``mm15 chat``: talk to a checkpoint about images or a video (MM1.5 §3.1, §3.5, Fig. 1, Fig. 3).

One-shot::

    mm15 chat --model DIR --image a.png --image b.jpg "Which picture shows a cat?"
    mm15 chat --model DIR --video clip.mp4 "What happens in this video?"
    mm15 chat --model DIR --image a.png --box 10,20,200,180 "What is in <region>?" --json
    mm15 chat --model DIR --image a.png "Where is the dog?" --draw dog.png

Without a prompt the session is interactive: one user turn per stdin line, the conversation
(history) kept across turns; ``/reset`` forgets it, ``/quit`` or end of input ends the session.
Prompt building, visual prompts and region parsing: :mod:`mm15.services.chat_session`.
Bad inputs (a missing image, an unreadable video, more ``<image>`` placeholders than images, a
point outside its image, a NaN temperature, a ``--device`` this machine lacks) print ``error: …``
and exit with status 2, without a traceback; in the interactive session such a turn (or a line of
input that is not UTF-8) is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from mm15.cli.config import (
    IMAGE_SHORTHANDS,
    add_config_args,
    add_image_flags,
    print_config,
    resolve_config,
    shorthand_epilog,
)
from mm15.errors import EXIT_BAD_INPUT, number, one_line
from mm15.services.image_settings import check_image_settings


@dataclass(kw_only=True)
class ChatConfig:
    """``mm15 chat``'s settings (the prompt, media, visual prompts and outputs are arguments)."""

    model: str | None = None  # the mm15 checkpoint directory
    device: str = "auto"  # cpu, cuda, cuda:1 … (auto: cuda if any)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on cuda
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None  # sampling seed (with temperature > 0)
    # Inference-time ImageConfig fields over the checkpoint's (Table 2), e.g. {"n_max": 16}.
    image: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.top_k < 0:
            raise ValueError(
                f"need max_new_tokens >= 1 and top_k >= 0, got "
                f"{self.max_new_tokens} and {self.top_k}"
            )
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        check_image_settings(self.image)


SHORTHANDS = {
    "--model": "model",
    "--device": "device",
    "--dtype": "dtype",
    "--max-new-tokens": "max_new_tokens",
    "--temperature": "temperature",
    "--seed": "seed",
    **IMAGE_SHORTHANDS,
}
_D = ChatConfig()
_EPILOG = shorthand_epilog(
    SHORTHANDS,
    defaults=_D,
    note="The settings are one ChatConfig (--print-config "
    "shows it); any ImageConfig field is --set image.FIELD=VALUE.",
)

HELP = "commands: /reset (forget the conversation), /quit (or end of input), /help"


def _visual(kind: str) -> Callable[[str], object]:
    def parse(spec: str):
        from mm15.services.chat_session import ChatError, parse_visual_prompt

        try:
            return parse_visual_prompt(spec, kind)  # type: ignore[arg-type]
        except ChatError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = kind
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``chat`` verb to ``sub`` (the subparsers of :func:`mm15.cli.main.build_parser`)."""
    p = sub.add_parser(
        "chat",
        help="chat with a checkpoint about images or a video (one-shot or interactive)",
        description=__doc__.split("\n\n")[0],
        epilog="Coordinates: --point/--box are pixels of the image (0-based index k:), rendered "
        "into the prompt as <x,y> / <x1,y1,x2,y2> in [0,1000) (<k:...> with several images). "
        "--draw with one image writes OUT; with several images or a video, OUT-k.png for every "
        "image k that has a region. " + _EPILOG,
    )
    p.add_argument("prompt", nargs="?", help="one-shot prompt; omit for an interactive session")
    p.add_argument("--model", help="mm15 checkpoint directory (required)")
    media = p.add_mutually_exclusive_group()
    media.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="an image (repeatable; image k = the k-th, 0-based)",
    )
    media.add_argument("--video", metavar="PATH", help="a video file or folder of frames (§5)")
    size = number(int, minimum=1)
    p.add_argument("--max-new-tokens", type=size)
    p.add_argument(
        "--temperature",
        type=number(float, minimum=0.0),
        help="0 = greedy (default)",
    )
    p.add_argument("--seed", type=int, help="sampling seed (with --temperature > 0)")
    p.add_argument(
        "--point",
        dest="visual",
        action="append",
        default=[],
        type=_visual("point"),
        metavar="[k:]X,Y",
        help="a point on image k, in pixels (repeatable)",
    )
    p.add_argument(
        "--box",
        dest="visual",
        action="append",
        type=_visual("box"),
        metavar="[k:]X1,Y1,X2,Y2",
        help="a box on image k, in pixels (repeatable)",
    )
    p.add_argument("--draw", metavar="OUT.png", help="draw the answer's regions with labels")
    p.add_argument("--json", action="store_true", help='print {"text", "regions", "issues"}')
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (auto: cuda if any)")
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (auto: bfloat16 on cuda, float32 on cpu)",
    )
    add_config_args(p, example="top_p=0.9")
    add_image_flags(p)
    p.set_defaults(func=cmd_chat)


def _load(args: argparse.Namespace, cfg: ChatConfig):
    """Device, image settings and media first (cheap, so a bad flag or path fails before the
    weights load)."""
    import torch

    from mm15.services.chat_session import ChatSession, load_media
    from mm15.services.checkpoint import CONFIG_FILE, load_checkpoint
    from mm15.services.devices import resolve_device
    from mm15.services.image_settings import apply_image_settings, checkpoint_image_settings
    from mm15.services.inference import GenerationSettings

    if cfg.model is None:
        raise ValueError("give --model DIR (see mm15 chat --help)")
    if not (Path(cfg.model) / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{cfg.model} is not an mm15 checkpoint (no {CONFIG_FILE})")
    device = resolve_device(cfg.device)
    model_cfg = checkpoint_image_settings(cfg.model, cfg.image)
    media = load_media(args.image, args.video, cfg=model_cfg)
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    model, tok = load_checkpoint(cfg.model, device=device, dtype=getattr(torch, dtype))
    apply_image_settings(model, cfg.image)
    settings = GenerationSettings(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        seed=cfg.seed,
    )
    return ChatSession(model, tok, media, visual_prompts=args.visual, settings=settings)


def _show(session, reply, args: argparse.Namespace, out: TextIO) -> None:
    """Print a reply (text + region legend, or JSON) and draw it when asked."""
    from mm15.services.chat_session import region_json

    if args.json:
        print(json.dumps(reply.to_json(), ensure_ascii=False), file=out, flush=True)
    else:
        print(reply.text, file=out)
        for i, r in enumerate(reply.regions):
            j = region_json(reply.text, r)
            kind = "box" if "box" in j else "point"
            coords = ", ".join(f"{v:g}" for v in j[kind])
            print(f"  [{i}] {r.label or '-'}: {kind} ({coords}) px on image {r.image}", file=out)
        out.flush()
    for issue in reply.issues:
        print(f"warning: malformed coordinate tag {issue.text!r}: {issue.reason}", file=sys.stderr)
    if args.draw:
        paths = session.draw(reply, args.draw)
        note = ", ".join(map(str, paths)) if paths else "nothing (the answer has no region)"
        print(f"drew {len(reply.regions)} region(s): {note}", file=sys.stderr)


def _read_line(stdin: TextIO, lineno: int) -> str | None:
    """The next line of ``stdin`` ("" at the end).  Lines are decoded one at a time from the
    bytes underneath, so a line that is not UTF-8 is reported (``None``) and the next one read."""
    raw = getattr(stdin, "buffer", None)
    if raw is None:  # a text stream with no bytes under it (StringIO): already decoded
        return stdin.readline()
    data = raw.readline()
    try:
        return data.decode(stdin.encoding or "utf-8")
    except UnicodeDecodeError as e:
        byte = f"byte 0x{data[e.start]:02x} at offset {e.start}"
        print(
            f"error: input line {lineno} is not valid {e.encoding} ({byte}); line skipped",
            file=sys.stderr,
        )
        return None


def _repl(session, args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    """One user turn per line; errors in a turn are reported and the turn is skipped."""
    tty = stdin.isatty()
    if tty:
        print(f"mm15 chat: {len(session.media.visuals)} image(s) shown. {HELP}", file=sys.stderr)
    lineno = 0
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        lineno += 1
        line = _read_line(stdin, lineno)
        if line is None:
            continue
        if not line:
            return 0
        text = line.rstrip("\n")
        command = text.strip()
        if command in ("/quit", "/exit"):
            return 0
        if command == "/reset":
            session.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        if command in ("/help", "/?") or (command.startswith("/") and " " not in command):
            print(HELP, file=sys.stderr)
            continue
        if not command:
            continue
        try:
            _show(session, session.answer(text), args, out)
        except (ValueError, OSError) as e:
            print(f"error: {one_line(e)}", file=sys.stderr)


def _check_utf8(prompt: str) -> None:
    """Python hands undecodable argv bytes over as lone surrogates, which no tokenizer takes."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"the prompt is not valid UTF-8 (an undecodable byte at character {e.start})"
        ) from None


def cmd_chat(args: argparse.Namespace) -> int:
    """The ``chat`` verb; exit status 0, or 2 for bad inputs (message on stderr)."""
    try:
        cfg = resolve_config(ChatConfig(), args, SHORTHANDS)
        if args.print_config:
            return print_config(cfg)
        if args.prompt is not None:
            _check_utf8(args.prompt)
        session = _load(args, cfg)
        if args.prompt is None:
            return _repl(session, args, sys.stdin, sys.stdout)
        _show(session, session.answer(args.prompt), args, sys.stdout)
        return 0
    except (ValueError, OSError) as e:  # ChatError, image/video/sample/coordinate errors, files
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    """``mm15 chat`` with ``argv`` (the arguments after ``chat``): tests, ``python -m``."""
    from mm15.cli import main as cli_main

    return cli_main(["chat", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
