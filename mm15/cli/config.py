"""One way to configure every verb: a typed dataclass config, ``--set`` and shorthand flags.

Each verb (``train``, ``demo``, ``eval``, ``serve``, ``chat``, ``split``) runs from one plain
dataclass config (``EvalConfig``, ``ServeConfig``, ``ChatConfig``, ``SplitConfig``, …) that
round-trips through JSON (:func:`mm15.config_json.to_dict` / ``from_dict``):

* ``--set KEY=VALUE`` (repeatable) sets a field by dotted path with
  :func:`mm15.overrides.apply_overrides`: JSON values, ``KEY=@FILE`` for JSON in a file, and the
  whole config validated against its dataclass, so a bad key or value is one ``error:`` line;
* the everyday flags (``--port``, ``--batch-size``, ``--n-max``, …) are shorthands for fields:
  a verb lists them as ``{flag: dotted path}`` (:data:`Shorthands`) and :func:`config_overrides`
  turns the ones given into overrides placed before the ``--set`` ones, so ``--set`` wins;
  ``--help`` lists them (:func:`shorthand_epilog`);
* ``--config FILE`` starts from a saved config instead of the defaults;
* ``--print-config`` prints the resolved config as JSON and exits before any work.

Light imports only: the verbs' parsers import this module when ``mm15 --help`` runs.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mm15.config_json import to_dict
from mm15.errors import number

T = TypeVar("T")

# A shorthand flag ("--port", or a positional's dest) → the dotted path it sets, or
# (path, convert) where convert maps the parsed value to the field's (None: leave it unset).
Shorthands = Mapping[str, "str | tuple[str, Callable[[Any], Any]]"]

# The image settings every inference verb takes as shorthands (split takes them all).
IMAGE_SHORTHANDS: dict[str, str] = {"--n-min": "image.n_min", "--n-max": "image.n_max"}
SPLIT_IMAGE_SHORTHANDS: dict[str, str] = {
    "--split": "image.split",
    **IMAGE_SHORTHANDS,
    "--resolution": "image.resolution",
    "--overview": "image.overview",
    "--indicator": "image.indicator",
}


def add_config_args(
    p: argparse.ArgumentParser, *, example: str, print_config: bool = True, config_file: bool = True
) -> None:
    """``--config FILE`` (unless the verb adds its own), ``--set KEY=VALUE`` (repeatable) and
    ``--print-config`` on verb parser ``p``."""
    if config_file:
        p.add_argument(
            "--config",
            metavar="FILE",
            help="start from this config (JSON, as --print-config writes) instead of the "
            "defaults; flags and --set apply on top",
        )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"set a config field by dotted path (repeatable; JSON values, KEY=@FILE "
        f"reads JSON), e.g. --set {example}",
    )
    if print_config:
        p.add_argument(
            "--print-config", action="store_true", help="print the resolved config (JSON) and exit"
        )


def add_image_flags(p: argparse.ArgumentParser, *, everything: bool = False) -> None:
    """The image-setting shorthands (``--n-min``/``--n-max``; with ``everything`` also
    ``--split``, ``--resolution``, ``--overview``, ``--indicator``) in their own group."""
    g = p.add_argument_group(
        "image settings (Table 2; default: the model's own)",
        "any ImageConfig field with --set image.FIELD=VALUE, e.g. --set image.n_max=16",
    )
    size = number(int, minimum=1)
    if everything:
        g.add_argument("--split", choices=["dynamic", "static", "none"])
    g.add_argument("--n-min", type=size, help="fewest sub-images of a dynamic grid")
    g.add_argument(
        "--n-max", type=size, help="most sub-images of a dynamic grid (may be raised at inference)"
    )
    if everything:
        g.add_argument("--resolution", type=size, help="tile side r in pixels")
        g.add_argument("--overview", choices=["after", "before", "none"])
        g.add_argument("--indicator", choices=["none", "index", "seps"])


def shorthand_epilog(shorthands: Shorthands, *, defaults: Any = None, note: str = "") -> str:
    """``--help`` text listing which field each shorthand flag sets, with the field's value in
    config ``defaults`` (flags themselves default to "not given", so that only the flags given
    override ``--config FILE``)."""
    data = to_dict(defaults) if defaults is not None else {}

    def shown(spec: str | tuple[str, Callable[[Any], Any]]) -> str:
        value = _get(data, _path(spec))
        keep = value is not _MISSING and value not in (None, [], {})
        return _path(spec) + (f" [{json.dumps(value)}]" if keep else "")

    pairs = ", ".join(f"{flag} = {shown(spec)}" for flag, spec in shorthands.items())
    text = f"Flags are shorthands for config fields (FLAG V = --set FIELD=V; --set comes last): {pairs}. {note}"
    return "\n".join(textwrap.wrap(text.strip(), 90, break_on_hyphens=False))


def config_overrides(base: Any, args: argparse.Namespace, shorthands: Shorthands) -> list[str]:
    """The ``path=JSON`` overrides of the shorthand flags in ``args`` that change ``base``
    (a flag left at its default changes nothing), then ``args.set``."""
    data = to_dict(base)
    out = []
    for flag, spec in shorthands.items():
        path, convert = (spec, None) if isinstance(spec, str) else spec
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if convert is not None:
            value = convert(value)
        if value is None:
            continue
        value = json.loads(json.dumps(value))  # tuples as lists, as in to_dict
        if _get(data, path) != value:
            out.append(f"{path}={json.dumps(value)}")
    return [*out, *getattr(args, "set", [])]


def resolve_config(base: T, args: argparse.Namespace, shorthands: Shorthands) -> T:
    """``base`` (or the config in ``--config FILE``) with the shorthand flags of ``args`` and
    then its ``--set`` overrides applied, validated against ``base``'s dataclass (a ValueError
    naming the field when wrong)."""
    from mm15.overrides import apply_overrides, read_config  # pydantic: when a verb runs

    if getattr(args, "config", None):
        base = read_config(Path(args.config), type(base))

    overrides = config_overrides(base, args, shorthands)
    return apply_overrides(base, overrides, context=f"invalid {type(base).__name__}")


def set_by_overrides(args: argparse.Namespace, path: str) -> bool:
    """Whether a ``--set`` of ``args`` sets ``path`` or a section holding it."""
    keys = [item.partition("=")[0].strip() for item in getattr(args, "set", [])]
    return any(path == k or path.startswith(k + ".") for k in keys)


def print_config(cfg: Any) -> int:
    """``--print-config``: the resolved config as JSON on stdout; exit status 0."""
    print(json.dumps(to_dict(cfg), indent=2))
    return 0


def _path(spec: str | tuple[str, Callable[[Any], Any]]) -> str:
    return spec if isinstance(spec, str) else spec[0]


_MISSING = object()


def _get(data: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data
