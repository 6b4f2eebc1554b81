"""``mm15 serve --model DIR``: the OpenAI-compatible server (docs/serving.md).

Its settings are one :class:`mm15.serve.config.ServeConfig`: every flag is a shorthand for one
of its fields and ``--set`` reaches them all (``--set limits.max_images=8``, ``--set
image.n_max=16``; :mod:`mm15.cli.config`).  :func:`register` adds the verb to ``mm15``'s subparsers; :func:`main` runs it alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import socket
import sys
from pathlib import Path

from mm15.cli.config import (
    IMAGE_SHORTHANDS,
    add_config_args,
    add_image_flags,
    config_overrides,
    print_config,
    set_by_overrides,
    shorthand_epilog,
)
from mm15.serve.config import EngineConfig, HTTPConfig, LimitsConfig, MediaConfig, ServeConfig

_D, _D_LIM, _D_MEDIA = ServeConfig(), LimitsConfig(), MediaConfig()
_D_ENG, _D_HTTP = EngineConfig(), HTTPConfig()
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


# Every flag is a shorthand for a ServeConfig field (mm15.cli.config); --set reaches all of them.
SHORTHANDS = {
    "--model": "model",
    "--host": "host",
    "--port": "port",
    "--served-model-name": "model_name",
    "--api-key": "api_key",
    "--device": "device",
    "--dtype": "dtype",
    "--no-web-ui": ("web_ui", lambda off: False if off else None),
    "--allowed-hosts": "http.allowed_hosts",
    "--header-timeout": "http.header_timeout_s",
    "--allow-fetch": "media.allow_fetch_hosts",
    "--media-root": "media.media_root",
    "--max-image-bytes": "media.max_image_bytes",
    "--max-image-pixels": "media.max_image_pixels",
    "--max-video-bytes": "media.max_video_bytes",
    "--max-video-frames": "media.max_video_frames",
    "--fetch-timeout": "media.fetch_timeout_s",
    "--max-pixels-in-flight": "media.max_pixels_in_flight",
    "--max-images": "limits.max_images",
    "--max-videos": "limits.max_videos",
    "--max-body-bytes": "limits.max_body_bytes",
    "--max-prompt-tokens": "limits.max_prompt_tokens",
    "--max-prompt-bytes": "limits.max_prompt_bytes",
    "--max-messages": "limits.max_messages",
    "--max-content-parts": "limits.max_content_parts",
    "--max-tokens-limit": "limits.max_tokens",
    "--default-max-tokens": "limits.default_max_tokens",
    "--max-batch": "engine.max_batch",
    "--max-queue": "engine.max_queue",
    "--batch-wait-ms": "engine.batch_wait_ms",
    **IMAGE_SHORTHANDS,
}


def register(sub) -> None:
    """Add ``serve`` to the subparsers ``sub`` (from ``mm15.cli.main.build_parser``)."""
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server with a web page",
        description=__doc__.split("\n\n")[0],
        epilog=shorthand_epilog(
            SHORTHANDS,
            defaults=ServeConfig(),
            note="Unset: --served-model-name is "
            "the checkpoint directory's name, --api-key $MM15_API_KEY, "
            "--allowed-hosts follows --host, --default-max-tokens is at most "
            "--max-tokens-limit.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="mm15 checkpoint directory (required)")
    p.add_argument("--host", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int)
    p.add_argument("--served-model-name", help="model id of the API (default: the dir's name)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $MM15_API_KEY)")
    p.add_argument("--device", help="torch device, e.g. cuda")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--no-web-ui", action="store_true", help="do not serve the page at /")
    p.add_argument(
        "--allowed-hosts",
        nargs="+",
        metavar="HOST",
        help="Host header names the server answers, '*' for any (default: the "
        "loopback names when bound to loopback, else any)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        metavar="S",
        help="close connections whose request head takes longer",
    )
    add_config_args(p, example="limits.max_images=8")
    _add_media_flags(p)
    _add_limit_flags(p)
    add_image_flags(p)
    p.set_defaults(func=cmd_serve)


def _add_media_flags(p: argparse.ArgumentParser) -> None:
    """Which image and video URLs a request may use, and the bounds on fetching and decoding
    them."""
    g = p.add_argument_group("media (image_url, video_url)")
    g.add_argument(
        "--allow-fetch",
        nargs="+",
        metavar="HOST",
        help="allow http(s) image and video URLs from these hosts (public addresses only)",
    )
    g.add_argument("--media-root", metavar="DIR", help="allow file:// URLs inside DIR")
    g.add_argument("--max-image-bytes", type=int)
    g.add_argument("--max-image-pixels", type=int)
    g.add_argument("--max-video-bytes", type=int)
    g.add_argument(
        "--max-video-frames", type=int, help="frames a video may have (decoding is bounded by it)"
    )
    g.add_argument("--fetch-timeout", type=float, metavar="S")
    g.add_argument(
        "--max-pixels-in-flight",
        type=int,
        help="decoded pixels all requests being prepared may hold together",
    )


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    """Per-request limits (4xx past them) and the batching engine's sizes (429 past them)."""
    g = p.add_argument_group("limits and batching")
    g.add_argument("--max-images", type=int)
    g.add_argument("--max-videos", type=int)
    g.add_argument("--max-body-bytes", type=int)
    g.add_argument("--max-prompt-tokens", type=int, help="default: the model's max_seq_len")
    g.add_argument(
        "--max-prompt-bytes",
        type=int,
        help="UTF-8 bytes of text per request (default: derived from the token limit)",
    )
    g.add_argument("--max-messages", type=int)
    g.add_argument("--max-content-parts", type=int)
    g.add_argument(
        "--max-tokens-limit",
        type=int,
        help="largest max_tokens a request may ask for",
    )
    g.add_argument(
        "--default-max-tokens",
        type=int,
        help=f"max_tokens of a request that names none (default: "
        f"{_D_LIM.default_max_tokens}, at most --max-tokens-limit)",
    )
    g.add_argument(
        "--max-batch",
        type=int,
        help="requests batched into one generate call",
    )
    g.add_argument(
        "--max-queue",
        type=int,
        help="requests waiting beyond the running batch; more get 429",
    )
    g.add_argument(
        "--batch-wait-ms",
        type=float,
        help="how long an idle worker waits for requests still being prepared",
    )


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig of ``args``: flags, then ``--set``, then what was left unset derived
    (the model's name from its directory, the API key from $MM15_API_KEY, the allowed Host
    names from the bind address, the default max_tokens within the limit)."""
    from mm15.overrides import apply_overrides, read_config

    if args.config:  # a saved config is whole: nothing left unset to derive
        base = read_config(Path(args.config), ServeConfig)
    else:  # default_max_tokens 1 fits any max_tokens until the unset one is derived below
        base = ServeConfig(limits=LimitsConfig(default_max_tokens=1))
    if args.default_max_tokens is not None:  # as before: never above --max-tokens-limit
        limit = args.max_tokens_limit or base.limits.max_tokens
        args = argparse.Namespace(
            **{**vars(args), "default_max_tokens": min(args.default_max_tokens, limit)}
        )
    cfg = apply_overrides(
        base, config_overrides(base, args, SHORTHANDS), context="invalid ServeConfig"
    )
    if cfg.model is None:
        raise ValueError("no checkpoint: give --model DIR")
    unset = {
        path: not args.config and getattr(args, dest) is None and not set_by_overrides(args, path)
        for dest, path in (
            ("served_model_name", "model_name"),
            ("api_key", "api_key"),
            ("allowed_hosts", "http.allowed_hosts"),
            ("default_max_tokens", "limits.default_max_tokens"),
        )
    }
    limits, http = cfg.limits, cfg.http
    if unset["limits.default_max_tokens"]:
        default = min(_D_LIM.default_max_tokens, limits.max_tokens)
        limits = dataclasses.replace(limits, default_max_tokens=default)
    if unset["http.allowed_hosts"]:
        http = dataclasses.replace(http, allowed_hosts=_default_hosts(cfg.host))
    cfg = dataclasses.replace(
        cfg,
        model_name=Path(cfg.model).resolve().name if unset["model_name"] else cfg.model_name,
        api_key=os.environ.get("MM15_API_KEY") or None if unset["api_key"] else cfg.api_key,
        limits=limits,
        http=http,
    )
    if cfg.media.media_root is not None and not Path(cfg.media.media_root).is_dir():
        raise ValueError(f"--media-root {cfg.media.media_root} is not a directory")
    return cfg


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
        raise ValueError(
            f"--host {host!r} is neither an IP address nor a name that resolves: {e}"
        ) from e
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

    from mm15.serve.app import create_app
    from mm15.serve.server import uvicorn_config
    from mm15.services.checkpoint import load_checkpoint
    from mm15.services.image_settings import apply_image_settings, checkpoint_image_settings

    cfg = config_from_args(args)
    if args.print_config:
        return print_config(cfg)
    check_address(cfg.host, cfg.port)
    if cfg.image:  # bad image settings fail before the weights load
        checkpoint_image_settings(cfg.model, cfg.image)
    dtype = getattr(torch, cfg.dtype) if cfg.dtype else None
    model, tokenizer = load_checkpoint(cfg.model, device=cfg.device, dtype=dtype)
    apply_image_settings(model, cfg.image)
    if cfg.api_key is None and not _is_loopback(cfg.host):
        print(
            f"warning: serving on {cfg.host} without an API key (--api-key or MM15_API_KEY)",
            file=sys.stderr,
        )
    app = create_app(model, tokenizer, cfg)
    print(
        f"mm15 serve: model {cfg.model_name!r} on http://{cfg.host}:{cfg.port}/ "
        f"(batch {cfg.engine.max_batch}, queue {cfg.engine.max_queue})",
        file=sys.stderr,
    )
    config = uvicorn_config(app, cfg, host=cfg.host, port=cfg.port, log_level="info")
    uvicorn.Server(config).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``mm15 serve`` with ``argv`` (the arguments after ``serve``): tests, ``python -m``."""
    from mm15.cli import main as cli_main

    return cli_main(["serve", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
