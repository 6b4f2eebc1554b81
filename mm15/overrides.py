"""``--set key=value`` overrides by dotted path, validated by pydantic against the dataclass.

``stages.1.lr=2e-5`` walks dicts by key and lists by index; values are JSON when they parse as
JSON (numbers, true/false, null, lists, objects) and plain strings otherwise.  The whole config is
then re-validated by pydantic against its dataclass type, so a wrong type or an unknown Literal
is an error that names the field, and nothing is coerced silently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from mm15.config import to_dict
from mm15.errors import validation_summary

T = TypeVar("T")


def parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def set_path(data: Any, path: str, value: Any) -> None:
    """Set ``data[a][b]...`` for ``path = "a.b..."``; every step must already exist."""
    keys = path.split(".")
    node = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
                raise KeyError(f"{where}: list index out of range (length {len(node)})")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if key not in node:
                raise KeyError(f"{where}: no such setting (choose from {sorted(node)})")
            if last:
                node[key] = value
            else:
                node = node[key]
        else:
            parent = ".".join(keys[:depth])
            raise KeyError(f"{where}: {parent} is {node!r}, which has no settings; set it whole "
                           f"with {parent}='{{...}}'")  # fmt: skip


def apply_overrides(cfg: T, overrides: Sequence[str]) -> T:
    """A copy of dataclass config ``cfg`` with ``key=value`` overrides applied and validated."""
    data = to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        try:
            set_path(data, key.strip(), parse_value(raw))
        except KeyError as e:
            raise ValueError(f"override {item!r}: {e.args[0]}") from None
    try:
        return TypeAdapter(type(cfg)).validate_python(data)
    except ValidationError as e:
        raise ValueError(f"invalid overrides {list(overrides)}: {validation_summary(e)}") from None
