"""How the command line refuses bad input: one ``error: …`` line, exit status 2, no traceback.

* :data:`USER_ERRORS` are the exception types that mean "the input is wrong" (a bad file, flag
  or config value); :func:`one_line` turns one into the text after ``error:``.  Anything else is
  a bug and keeps its traceback.
* :func:`number` builds argparse ``type=`` converters that refuse NaN, infinities and values out
  of range while the arguments are parsed.
* :class:`UsageError` is a flag combination refused after parsing (argparse's exit status 2).
* :func:`read_json_object` reads a JSON object file, refusing anything else in one line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from typing import Any

EXIT_BAD_INPUT = 2

# ValueError covers json.JSONDecodeError, UnicodeDecodeError and pydantic's ValidationError;
# OSError covers missing files, directories given for files, permissions.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError)


class UsageError(SystemExit):
    """Flags that parse but do not fit together; exits with status 2 like argparse's errors."""

    def __init__(self, message: str):
        super().__init__(EXIT_BAD_INPUT)
        self.message = message

    def __str__(self) -> str:
        return self.message


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; a ValueError naming the file when it is not valid JSON
    (or UTF-8) or holds something other than an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def one_line(err: BaseException) -> str:
    """The message of a user error on one line, naming the file of an OSError."""
    if isinstance(err, OSError) and err.filename is not None:
        what = err.strerror or str(err)
        also = f" -> {err.filename2}" if err.filename2 is not None else ""
        text = f"{err.filename}{also}: {what}"
    elif isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        key = err.args[0]  # a message (str(KeyError) would quote it), or a bare missing key
        text = key if " " in key.strip() else f"missing key {key!r}"
    elif _is_pydantic(err):
        text = validation_summary(err)
    else:
        text = str(err) or type(err).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def _is_pydantic(err: BaseException) -> bool:
    return type(err).__name__ == "ValidationError" and hasattr(err, "errors")


def validation_summary(err: Any) -> str:
    """pydantic's ValidationError as ``a.b: problem; c: problem`` (its own text spans lines); a
    problem of the whole object (its own check, which names the field) has no location."""
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(x) for x in e.get("loc", ()))
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def number(
    kind: type[int] | type[float],
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> Callable[[str], Any]:
    """An argparse ``type=`` for a finite ``kind`` (int or float) in a range.

    ``minimum`` and ``maximum`` are inclusive bounds, ``above`` an exclusive lower bound.
    """
    parts = []
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if above is not None:
        parts.append(f"> {above:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    want = f"{'an integer' if kind is int else 'a finite number'}" + (
        f" {' and '.join(parts)}" if parts else ""
    )

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want {want}, got {text!r}") from None
        bad = (
            (isinstance(value, float) and not math.isfinite(value))
            or (minimum is not None and value < minimum)
            or (above is not None and value <= above)
            or (maximum is not None and value > maximum)
        )
        if bad:
            raise argparse.ArgumentTypeError(f"want {want}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid <name> value"
    return parse
