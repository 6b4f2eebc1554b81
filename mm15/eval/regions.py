"""Regions shown in a benchmark prompt (MM1.5 §3.1, Fig. 1: referring): a box or point read from
a row becomes a :class:`~mm15.data.schema.Region` of the eval sample, and the prompt's
:data:`~mm15.eval.task_spec.REGION_MARK` becomes its region part, so the chat template writes
the coordinates exactly as training does (:func:`mm15.data.coords.format_box` /
``format_point``, normalised by the original image; LVIS-Ref in
:mod:`mm15.eval.grounding_tasks`)."""

from __future__ import annotations

from typing import Any

from mm15.data.coord_conventions import to_box, to_point
from mm15.data.coords import CoordinateError
from mm15.data.schema import Part, Region, SampleError
from mm15.eval.task_spec import REGION_MARK, TaskSpec


def prompt_region(spec: TaskSpec, value: Any, sizes: list[tuple[int, int]], where: str) -> Region:
    """``{"box": [4 numbers]}`` in ``spec.box_convention`` or ``{"point": [2]}`` in
    ``spec.point_convention`` → a region on image 0, in its pixels (``malformed`` if the value
    is neither, or off the image)."""
    if not sizes:
        raise SampleError("missing", f"{where}: a region needs an image")
    if not isinstance(value, dict) or len(value) != 1 or not {"box", "point"} & set(value):
        raise SampleError(
            "malformed", f"{where}: region {value!r:.80} is not {{box: …}} or {{point: …}}"
        )
    try:
        if "box" in value:
            b = to_box(value["box"], spec.box_convention, sizes[0])
            return Region(0, box=(b.x1, b.y1, b.x2, b.y2))
        p = to_point(value["point"], spec.point_convention, sizes[0])
        return Region(0, point=(p.x, p.y))
    except CoordinateError as e:
        raise SampleError("malformed", f"{where}: bad region {value!r:.80}: {e}") from None


def place_region(parts: list[Part], where: str) -> list[Part]:
    """The prompt's one :data:`REGION_MARK` becomes region part 0 (``malformed`` otherwise)."""
    out: list[Part] = []
    for part in parts:
        text = part.text or ""
        if part.type == "text" and REGION_MARK in text:
            before, _, after = text.partition(REGION_MARK)
            out += [Part.t(before), Part.r(0), Part.t(after)]
        else:
            out.append(part)
    if sum(p.type == "region" for p in out) != 1 or any(REGION_MARK in (p.text or "") for p in out):
        raise SampleError("malformed", f"{where}: the prompt must show the region exactly once")
    return [p for p in out if p.type != "text" or p.text]
