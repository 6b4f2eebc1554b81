"""``mm15 serve --model DIR``: the OpenAI-compatible server (docs/serving.md).

:func:`register` adds the verb to ``mm15``'s subparsers; :func:`main` runs it alone.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from mm15.serve.config import EngineConfig, HTTPConfig, LimitsConfig, MediaConfig, ServeConfig

_D_LIM, _D_MEDIA, _D_ENG, _D_HTTP = LimitsConfig(), MediaConfig(), EngineConfig(), HTTPConfig()
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def register(sub) -> None:
    """Add ``serve`` to the subparsers ``sub`` (from ``mm15.cli.build_parser``)."""
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a web page",
                       description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--model", required=True, help="mm15 checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", help="model id of the API (default: the dir's name)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $MM15_API_KEY)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--no-web-ui", action="store_true", help="do not serve the page at /")
    p.add_argument("--allowed-hosts", nargs="+", metavar="HOST",
                   help="Host header names the server answers, '*' for any (default: the "
                   "loopback names when bound to loopback, else any)")  # fmt: skip
    p.add_argument("--header-timeout", type=float, default=_D_HTTP.header_timeout_s,
                   metavar="S", help="close connections whose request head takes longer")  # fmt: skip
    g = p.add_argument_group("media (image_url)")
    g.add_argument("--allow-fetch", nargs="+", default=[], metavar="HOST",
                   help="allow http(s) image URLs from these hosts (public addresses only)")  # fmt: skip
    g.add_argument("--media-root", metavar="DIR", help="allow file:// URLs inside DIR")
    g.add_argument("--max-image-bytes", type=int, default=_D_MEDIA.max_image_bytes)
    g.add_argument("--max-image-pixels", type=int, default=_D_MEDIA.max_image_pixels)
    g.add_argument("--fetch-timeout", type=float, default=_D_MEDIA.fetch_timeout_s, metavar="S")
    g.add_argument("--max-pixels-in-flight", type=int, default=_D_MEDIA.max_pixels_in_flight,
                   help="decoded pixels all requests being prepared may hold together")  # fmt: skip
    g = p.add_argument_group("limits and batching")
    g.add_argument("--max-images", type=int, default=_D_LIM.max_images)
    g.add_argument("--max-body-bytes", type=int, default=_D_LIM.max_body_bytes)
    g.add_argument("--max-prompt-tokens", type=int, help="default: the model's max_seq_len")
    g.add_argument("--max-prompt-bytes", type=int,
                   help="UTF-8 bytes of text per request (default: derived from the token limit)")  # fmt: skip
    g.add_argument("--max-messages", type=int, default=_D_LIM.max_messages)
    g.add_argument("--max-content-parts", type=int, default=_D_LIM.max_content_parts)
    g.add_argument("--max-tokens-limit", type=int, default=_D_LIM.max_tokens,
                   help="largest max_tokens a request may ask for")  # fmt: skip
    g.add_argument("--default-max-tokens", type=int, default=_D_LIM.default_max_tokens)
    g.add_argument("--max-batch", type=int, default=_D_ENG.max_batch,
                   help="requests batched into one generate call")  # fmt: skip
    g.add_argument("--max-queue", type=int, default=_D_ENG.max_queue,
                   help="requests waiting beyond the running batch; more get 429")  # fmt: skip
    g.add_argument("--batch-wait-ms", type=float, default=_D_ENG.batch_wait_ms,
                   help="how long an idle worker waits for requests still being prepared")  # fmt: skip
    p.set_defaults(func=cmd_serve)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    key = args.api_key if args.api_key is not None else os.environ.get("MM15_API_KEY") or None
    if args.media_root is not None and not Path(args.media_root).is_dir():
        raise ValueError(f"--media-root {args.media_root} is not a directory")
    return ServeConfig(
        model_name=args.served_model_name or Path(args.model).resolve().name,
        api_key=key,
        web_ui=not args.no_web_ui,
        media=MediaConfig(
            max_image_bytes=args.max_image_bytes,
            max_image_pixels=args.max_image_pixels,
            allow_fetch_hosts=tuple(args.allow_fetch),
            fetch_timeout_s=args.fetch_timeout,
            media_root=args.media_root,
            max_pixels_in_flight=args.max_pixels_in_flight,
        ),
        limits=LimitsConfig(
            max_images=args.max_images,
            max_body_bytes=args.max_body_bytes,
            max_prompt_tokens=args.max_prompt_tokens,
            max_prompt_bytes=args.max_prompt_bytes,
            max_messages=args.max_messages,
            max_content_parts=args.max_content_parts,
            max_tokens=args.max_tokens_limit,
            default_max_tokens=min(args.default_max_tokens, args.max_tokens_limit),
        ),
        engine=EngineConfig(
            max_batch=args.max_batch, max_queue=args.max_queue, batch_wait_ms=args.batch_wait_ms
        ),
        http=HTTPConfig(
            allowed_hosts=tuple(args.allowed_hosts or _default_hosts(args.host)),
            header_timeout_s=args.header_timeout,
        ),
    )


def _default_hosts(host: str) -> tuple[str, ...]:
    """Bound to loopback, only loopback names (a page on a rebound DNS name is refused);
    otherwise any (clients use whatever name reaches the machine; use --api-key)."""
    return (*LOOPBACK_NAMES, host) if _is_loopback(host) else ("*",)


def check_address(host: str, port: int) -> None:
    """A clear ValueError for a port out of range or a host this machine cannot listen on,
    before the model is loaded."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port} is not a TCP port (1-65535)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"--host {host!r} is neither an IP address nor a name that "
                         f"resolves: {e}") from e  # fmt: skip
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as e:
            raise ValueError(f"cannot listen on {host} port {port}: {e.strerror}") from e


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from mm15.checkpoint import load_checkpoint
    from mm15.serve.app import create_app
    from mm15.serve.server import uvicorn_config

    cfg = config_from_args(args)
    check_address(args.host, args.port)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tokenizer = load_checkpoint(args.model, device=args.device, dtype=dtype)
    if cfg.api_key is None and not _is_loopback(args.host):
        print(f"warning: serving on {args.host} without an API key (--api-key or "
              "MM15_API_KEY)", file=sys.stderr)  # fmt: skip
    app = create_app(model, tokenizer, cfg)
    print(f"mm15 serve: model {cfg.model_name!r} on http://{args.host}:{args.port}/ "
          f"(batch {cfg.engine.max_batch}, queue {cfg.engine.max_queue})", file=sys.stderr)  # fmt: skip
    config = uvicorn_config(app, cfg, host=args.host, port=args.port, log_level="info")
    uvicorn.Server(config).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``mm15 serve`` with ``argv`` (the arguments after ``serve``): tests, ``python -m``."""
    from mm15.cli import main as cli_main

    return cli_main(["serve", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
