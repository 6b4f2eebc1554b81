"""``--set key=value`` overrides by dotted path, validated by pydantic against the dataclass.

``stages.1.lr=2e-5`` walks dicts by key and lists by index; values are JSON when they parse as
JSON (numbers, true/false, null, lists, objects) and plain strings otherwise; ``key=@FILE`` takes
the JSON in FILE (``registry=@my_datasets.json``).  The whole config is
then re-validated by pydantic against its dataclass type, so a wrong type or an unknown Literal
is an error that names the field, and nothing is coerced silently; a key the dataclass does not
declare (which pydantic would drop) is an error too.  A tagged union (``mixture.weights``, one
dataclass per ``rule``) is validated as the member its tag names.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from mm15.config_json import from_dict, to_dict
from mm15.errors import validation_summary

T = TypeVar("T")


def parse_value(raw: str) -> Any:
    """JSON when ``raw`` parses as JSON, else the string; ``@FILE`` is the JSON in FILE."""
    if raw.startswith("@"):
        path = Path(raw[1:])
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ValueError(f"{raw}: cannot read {path} ({e.strerror or e})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{raw}: {path} is not valid JSON ({e})") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def declared_type(cls: Any, keys: Sequence[str]) -> Any:
    """The type ``keys`` leads to through dataclass ``cls``'s fields, list items and dict
    values, or None where it leaves the declared fields."""
    tp: Any = cls
    for key in keys:
        tp = _strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if key not in hints:
                return None
            tp = hints[key]
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1] if typing.get_args(tp) else Any
        else:
            return None
    return _strip_optional(tp)


def _may_add(cls: Any, keys: Sequence[str]) -> bool:
    """Whether the last of ``keys`` may be added to its container: a free-form ``dict`` field
    (a reader's ``options``) takes any key; a dataclass given in part (``stages.0.datasets=
    [{"name": "x"}]``) takes its declared fields."""
    parent = declared_type(cls, keys[:-1])
    if typing.get_origin(parent) is dict:
        return True
    return dataclasses.is_dataclass(parent) and keys[-1] in typing.get_type_hints(parent)


def _strip_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def set_path(data: Any, path: str, value: Any, *, cls: Any = None) -> None:
    """Set ``data[a][b]...`` for ``path = "a.b..."``; every step must already exist, except
    what dataclass ``cls`` declares (:func:`_may_add`): ``stages.0.datasets.1.options.root``."""
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
            if key not in node and cls is not None and _may_add(cls, keys[: depth + 1]):
                node[key] = value if last else {}
            elif key not in node:
                raise KeyError(f"{where}: no such setting (choose from {sorted(node)})")
            if last:
                node[key] = value
            else:
                node = node[key]
        else:
            parent = ".".join(keys[:depth])
            raise KeyError(
                f"{where}: {parent} is {node!r}, which has no settings; set it whole "
                f"with {parent}='{{...}}'"
            )


def read_config(path: Path, cls: type[T], *, flag: str = "--config") -> T:
    """The ``cls`` config in JSON file ``path`` (as ``--print-config`` writes it), validated
    like overrides; a directory, a missing file, bad JSON or a bad field is one ValueError (or
    FileNotFoundError) naming ``flag`` and the file."""
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give the JSON file --print-config writes")
    if not path.exists():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{flag} {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{flag} {path} holds {type(data).__name__}, not a {cls.__name__} object")
    try:  # the one JSON codec of configs: unknown keys and wrong types name the field
        return from_dict(cls, data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{flag} {path} is not a valid {cls.__name__}: {e}") from None


def apply_overrides(cfg: T, overrides: Sequence[str], *, context: str | None = None) -> T:
    """A copy of dataclass config ``cfg`` with ``key=value`` overrides applied and validated.

    A config that fails validation is a ValueError starting ``context`` (default: ``invalid
    overrides [...]`` listing them) and naming each bad field."""
    data = to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        try:
            set_path(data, key.strip(), parse_value(raw), cls=type(cfg))
        except KeyError as e:
            raise ValueError(f"override {item!r}: {e.args[0]}") from None
    what = context or f"invalid overrides {list(overrides)}"
    try:
        out = TypeAdapter(type(cfg)).validate_python(data)
    except ValidationError as e:
        raise ValueError(f"{what}: {validation_summary(e)}") from None
    dropped = _dropped_key(out, data)
    if dropped:
        raise ValueError(f"{what}: {dropped}")
    return out


def _dropped_key(obj: Any, data: Any, path: str = "") -> str | None:
    """Where ``data`` has a key that dataclass ``obj`` (validated from it) does not declare:
    pydantic ignores such keys, so ``mixture.weights={"rule": "cpt", "alpha_math": 0.3}`` would
    lose ``alpha_math`` without a word.  None when every key was read."""
    if dataclasses.is_dataclass(obj) and isinstance(data, dict):
        names = {f.name for f in dataclasses.fields(obj)}
        extra = sorted(set(data) - names, key=str)
        if extra:
            where, cls = path or "the config", type(obj).__name__
            return f"{where}: {cls} has no {extra} (its settings: {sorted(names)})"
        pairs = [(getattr(obj, k), v, f"{path}.{k}" if path else k) for k, v in data.items()]
    elif isinstance(obj, list | tuple) and isinstance(data, list):
        pairs = [(o, d, f"{path}.{i}") for i, (o, d) in enumerate(zip(obj, data, strict=False))]
    else:
        return None
    for o, d, at in pairs:
        problem = _dropped_key(o, d, at)
        if problem:
            return problem
    return None
