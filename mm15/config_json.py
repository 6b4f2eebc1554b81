"""Config dataclasses to and from plain JSON: the one codec of every saved or printed config.

A config is saved beside every checkpoint and printed by ``--print-config``; :func:`to_dict` writes
it and :func:`from_dict` reads it back strictly: an unknown key or a value of the wrong type is an
error naming the field (``LMConfig.dim``) and its JSON path (``lm.dim``), and nothing is coerced
except an integer where a number is declared.

Two rules beyond plain fields:

* A union of dataclasses is *tagged*: every member declares the same field as a one-value Literal
  (``MixtureConfig.weights``: ``rule: Literal["cpt"]`` on :class:`~mm15.data.config.CPTWeights`),
  and the object's value of that field picks the member.
* A config whose saved layout changed defines a static ``upgrade_saved(data) -> data`` that turns
  the older layout into its own; :func:`from_dict` calls it before reading the keys, so configs
  saved by earlier versions still load (:meth:`mm15.data.config.MixtureConfig.upgrade_saved`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_json(cfg: Any, path: str) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(cfg), f, indent=2, sort_keys=True)
        f.write("\n")


def from_dict(cls: type, data: dict[str, Any], *, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and values of the wrong type are
    errors naming the field (``LMConfig.dim``) and its JSON path (``path`` is ``data``'s)."""
    upgrade = getattr(cls, "upgrade_saved", None)
    if upgrade is not None:
        data = upgrade(data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        at = f" at {path}" if path else ""
        raise ValueError(f"unknown {cls.__name__} keys{at}: {unknown} (known: {sorted(names)})")
    return cls(
        **{
            k: _coerce(hints[k], v, _Where(f"{cls.__name__}.{k}", _join(path, k)))
            for k, v in data.items()
        }
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass(frozen=True)
class _Where:
    """A field being read: its dataclass name (``LMConfig.dim``) and JSON path (``lm.dim``)."""

    field: str
    path: str

    def error(self, problem: str) -> ValueError:
        return ValueError(f"{self.field} {problem} (at {self.path})")

    def item(self, i: int) -> _Where:
        return _Where(f"{self.field}[{i}]", f"{self.path}[{i}]")

    def key(self, name: str) -> _Where:
        return _Where(f"{self.field}.{name}", _join(self.path, name))


def _coerce(tp: Any, value: Any, where: _Where) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) not in args:
                raise where.error("may not be null")
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) > 1 and all(dataclasses.is_dataclass(a) for a in non_none):
            return from_dict(_tagged_member(non_none, value, where), value, path=where.path)
        return _coerce(non_none[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise where.error(f"must be an object, got {value!r}")
        return from_dict(tp, value, path=where.path)
    if origin is tuple:
        items = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise where.error(f"must be a list, got {value!r}")
        if len(items) == 2 and items[1] is Ellipsis:
            items = (items[0],) * len(value)
        elif len(items) != len(value):
            raise where.error(f"must be a list of {len(items)}, got {value!r}")
        pairs = enumerate(zip(items, value, strict=True))
        return tuple(_coerce(t, v, where.item(i)) for i, (t, v) in pairs)
    if origin is list and value is not None:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise where.error(f"must be a list, got {value!r}")
        return [_coerce(item, v, where.item(i)) for i, v in enumerate(value)]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise where.error(f"must be one of {allowed}, got {value!r}")
        return value
    return _scalar(tp, value, where)


def _tagged_member(members: list[type], value: Any, where: _Where) -> type:
    """The member of a tagged union of dataclasses (module docstring) that ``value`` names."""
    tag = _tag_field(members)
    by_tag = {typing.get_args(typing.get_type_hints(m)[tag])[0]: m for m in members}
    if not isinstance(value, dict):
        raise where.error(f"must be an object, got {value!r}")
    if tag not in value:
        raise where.error(f"needs {tag!r}, one of {tuple(by_tag)}")
    if value[tag] not in by_tag:
        raise where.key(tag).error(f"must be one of {tuple(by_tag)}, got {value[tag]!r}")
    return by_tag[value[tag]]


def _tag_field(members: list[type]) -> str:
    """The one field every member declares as a one-value Literal."""
    common: set[str] | None = None
    for m in members:
        one = {
            name
            for name, tp in typing.get_type_hints(m).items()
            if typing.get_origin(tp) is Literal and len(typing.get_args(tp)) == 1
        }
        common = one if common is None else common & one
    if not common or len(common) != 1:
        names = [m.__name__ for m in members]
        raise TypeError(f"union of {names} needs one tag field (a one-value Literal in each)")
    return common.pop()


def _scalar(tp: Any, value: Any, where: _Where) -> Any:
    """JSON scalars as the annotated type: an int is a float, nothing else is converted."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in kinds and type(value) is not tp:
        raise where.error(f"must be {kinds[tp]}, got {value!r}")
    return value
