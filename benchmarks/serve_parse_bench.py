"""What a request body costs the server's event loop before any limit can refuse it.

    .venv/bin/python benchmarks/serve_parse_bench.py            # 400k empty messages, 48 MiB
    .venv/bin/python benchmarks/serve_parse_bench.py --messages 100000

Times, in one process and one run, the three ways to read a body of ``--messages`` empty user
messages: parsing the JSON alone (``pydantic_core.from_json``, what ``parse_request`` does
before it counts messages), building the request model from the parsed JSON, and both at once
(``ChatRequest.model_validate_json``, what the server did before it counted first).  Then the
largest body the default ``--max-body-bytes`` admits, made of tiny messages, through
``parse_request`` (parsed, then refused by ``max_messages``): the worst the event loop still
pays.  Each figure is the best of ``--repeat`` runs; ratios are against parsing alone.
"""

from __future__ import annotations

import argparse
import json
import time

import pydantic_core

from mm15.serve.config import LimitsConfig
from mm15.serve.schemas import APIError, ChatRequest, parse_request


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def body_of(n_messages: int) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": ""}] * n_messages},
        separators=(",", ":"),
    ).encode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=400_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    body = body_of(args.messages)
    data = pydantic_core.from_json(body)
    parse = best_of(lambda: pydantic_core.from_json(body), args.repeat)
    build = best_of(lambda: ChatRequest.model_validate(data), args.repeat)
    both = best_of(lambda: ChatRequest.model_validate_json(body), args.repeat)
    print(f"{args.messages:,} empty messages, {len(body) / 2**20:.1f} MiB")
    print(f"  parse JSON only          {parse:7.3f} s  (1.0x)")
    print(
        f"  build the request model  {build:7.3f} s  ({build / parse:.1f}x), "
        f"{build / args.messages * 1e6:.1f} us per message"
    )
    print(f"  model_validate_json      {both:7.3f} s  ({both / parse:.1f}x)")

    lim = LimitsConfig()
    per = len(body_of(2)) - len(body_of(1))
    largest = body_of((lim.max_body_bytes - len(body_of(0))) // per)

    def refused() -> None:
        try:
            parse_request(
                largest, max_messages=lim.max_messages, max_content_parts=lim.max_content_parts
            )
        except APIError:
            return
        raise AssertionError("the largest body was not refused")

    worst = best_of(refused, args.repeat)
    print(
        f"largest body under max_body_bytes ({len(largest) / 2**20:.1f} MiB of tiny messages), "
        f"parsed then refused: {worst:.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
