"""Conversation JSON / JSONL reader (on-disk layouts: mm15/data/registry.toml).

One record per sample, from a JSON list file (parsed once, kept in memory: LLaVA's 665k mix is a
single list) or a JSONL file (indexed by byte offsets, read on access).  Dialects, detected per
record from its keys:

* **LLaVA / ShareGPT4V**: ``conversations[{from, value}]``, ``image`` (a path under ``root``) or
  none (text-only rows).  ``human → user``, ``gpt → assistant``; each ``<image>`` becomes a media
  part; with no placeholder the images are prepended to the first user turn.
* **DocStruct4M**: ``messages[{role, content}]`` with ``<|image|>`` placeholders, ``image`` list.
* **Mantis local JSON**: ``images`` list (strings or ``{path}``) with ``<image>`` in order.
* **Ferret GRIT / Ferret-UI**: ``<bbox_locationN>`` in turn ``t`` refers to
  ``box_x1y1x2y2[t][N]`` (pixel xyxy on the original image, converted once by
  :func:`mm15.data.coord_conventions.to_box`); ``Media.size`` comes from the image header and must equal
  ``image_w`` / ``image_h`` when given.  Each such box is one :class:`Region` and a region part.
* **Boxes in the text** (DocOwl ``<bbox>`` 0..999, LLaVA-665k ``[0.12, …]`` on the padded
  square): the ``text_boxes`` option converts them to regions
  (:mod:`mm15.data.sources.text_boxes`); unset, a ``<bbox>`` tag makes the sample malformed.
* **Video** (ShareGPTVideo, LLaVA-Video): ``video`` = a file or a folder of frames under
  ``video_root``; ``<video>`` becomes a media part of ``Media(kind="video")``.

Pixels are never decoded; ``Media.size`` is filled only when the sample has regions.  Text next
to a media part loses its adjacent whitespace (``"<image>\\nWhat"`` → media, ``"What"``): the
prompt builder decides separators.  A media placeholder stays where the data put it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm15.data.coord_conventions import BoxConvention, to_box
from mm15.data.coords import CoordinateError
from mm15.data.schema import (
    Category,
    Media,
    Message,
    Part,
    Region,
    Role,
    Sample,
    SampleError,
    Stage,
)
from mm15.data.sources.canonical import (
    PathLike,
    as_paths,
    coord_error,
    finish,
    header_size,
    line_offsets,
    media_under_root,
    parse_json,
    read_line,
)
from mm15.data.sources.text_boxes import TextBoxes, check_mode, convert_text_boxes

DEFAULT_ROLES: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
TURN_KEYS = ("conversations", "messages", "conversation")
# A region part's callback: (turn index, N of <bbox_locationN>) → index into Sample.regions.
RegionLookup = Callable[[int, int], int]


@dataclass(kw_only=True)
class ConversationFormat:
    """Placeholders, roles and box sidecar of a conversation dialect (defaults cover §6 R1)."""

    image_tokens: tuple[str, ...] = ("<image>", "<|image|>")
    video_token: str = "<video>"
    region_pattern: str = r"<bbox_location(\d+)>"  # group 1: the box's index within its turn
    box_field: str = "box_x1y1x2y2"  # per turn: a list of boxes (Ferret GRIT / Ferret-UI)
    box_convention: BoxConvention = "px_xyxy"
    roles: Mapping[str, Role] = field(default_factory=lambda: dict(DEFAULT_ROLES))


def _turn_role_text(turn: Any, t: int, fmt: ConversationFormat, where: str) -> tuple[Role, str]:
    if not isinstance(turn, dict):
        raise SampleError("malformed", f"{where}: turn {t} is {type(turn).__name__}, not an object")
    raw_role = turn.get("from", turn.get("role"))
    role = fmt.roles.get(str(raw_role).lower()) if raw_role is not None else None
    if role is None:
        raise SampleError("malformed", f"{where}: turn {t} has unknown role {raw_role!r}")
    text = turn.get("value", turn.get("content"))
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise SampleError(
            "malformed",
            f"{where}: turn {t} content is {type(text).__name__}, "
            "expected a string with placeholders",
        )
    return role, text


def _tidy(parts: list[Part]) -> list[Part]:
    """Strip whitespace next to media parts and drop empty text parts."""
    out: list[Part] = []
    for i, p in enumerate(parts):
        if p.type == "text":
            text = p.text or ""
            if i > 0 and parts[i - 1].type == "media":
                text = text.lstrip()
            if i + 1 < len(parts) and parts[i + 1].type == "media":
                text = text.rstrip()
            if not text:
                continue
            p = Part.t(text)
        out.append(p)
    return out


def build_messages(
    turns: Any,
    *,
    num_images: int,
    num_videos: int = 0,
    fmt: ConversationFormat,
    where: str,
    regions: RegionLookup | None = None,
) -> list[Message]:
    """Turns (``{from, value}`` or ``{role, content}``) → messages with media/region parts.

    Media indices: images are ``0 .. num_images-1`` in placeholder order, videos follow.  A kind
    with no placeholder at all is prepended (images, then videos) to the first user turn (the
    first turn if none is a user's); otherwise the placeholder count must equal the media count.
    """
    if not isinstance(turns, list) or not turns:
        raise SampleError("empty", f"{where}: no conversation turns")
    tokens = [re.escape(tok) for tok in (*fmt.image_tokens, fmt.video_token)]
    pattern = re.compile(f"({'|'.join(tokens)})|{fmt.region_pattern}")
    seen = {"image": 0, "video": 0}
    messages = []
    for t, turn in enumerate(turns):
        role, text = _turn_role_text(turn, t, fmt, where)
        parts, pos = [], 0
        for m in pattern.finditer(text):
            parts.append(Part.t(text[pos : m.start()]))
            pos = m.end()
            if m.group(1) == fmt.video_token:
                parts.append(Part.m(num_images + seen["video"]))
                seen["video"] += 1
            elif m.group(1) is not None:
                parts.append(Part.m(seen["image"]))
                seen["image"] += 1
            elif regions is None:
                raise SampleError(
                    "malformed",
                    f"{where}: turn {t} has {m.group(0)} but the record has no {fmt.box_field!r}",
                )
            else:
                parts.append(Part.r(regions(t, int(m.group(2)))))
        parts.append(Part.t(text[pos:]))
        messages.append(Message(role, parts))
    prepend: list[Part] = []
    for kind, count, first in (("image", num_images, 0), ("video", num_videos, num_images)):
        if seen[kind] == 0:
            prepend += [Part.m(first + k) for k in range(count)]
        elif seen[kind] != count:
            raise SampleError(
                "malformed", f"{where}: {seen[kind]} {kind} placeholders but {count} {kind}s"
            )
    target = next((msg for msg in messages if msg.role == "user"), messages[0])
    target.content = prepend + target.content
    for msg in messages:
        msg.content = _tidy(msg.content)
    return [
        msg
        for msg in messages
        if any(p.type != "text" or (p.text or "").strip() for p in msg.content)
    ]


def _as_list(value: Any, key: str, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | dict):
        return [value]
    if isinstance(value, list):
        return value
    raise SampleError("malformed", f"{where}: {key!r} is {type(value).__name__}")


def _media_path(entry: Any, root: Path, key: str, where: str, allow_absolute: bool) -> Path:
    rel = entry.get("path") if isinstance(entry, dict) else entry
    if not isinstance(rel, str) or not rel:
        raise SampleError("missing", f"{where}: {key!r} entry {entry!r} names no file")
    return media_under_root(root, rel, where, allow_absolute=allow_absolute)


class _FerretRegions:
    """``<bbox_locationN>`` of turn ``t`` → one Region per distinct (t, N), boxes converted once."""

    def __init__(self, boxes: Any, size: tuple[int, int], fmt: ConversationFormat, where: str):
        self.boxes, self.size, self.fmt, self.where = boxes, size, fmt, where
        self.regions: list[Region] = []
        self._index: dict[tuple[int, int], int] = {}

    def __call__(self, t: int, n: int) -> int:
        if (t, n) in self._index:
            return self._index[(t, n)]
        try:
            vals = self.boxes[t][n]
        except (IndexError, KeyError, TypeError):
            raise SampleError(
                "malformed",
                f"{self.where}: turn {t} refers to box {n} but "
                f"{self.fmt.box_field}[{t}] has no such box",
            ) from None
        try:
            box = to_box(vals, self.fmt.box_convention, self.size, 0)
        except CoordinateError as e:
            raise coord_error(e, f"{self.where} turn {t} box {n}") from None
        self.regions.append(Region(media=0, box=(box.x1, box.y1, box.x2, box.y2)))
        self._index[(t, n)] = len(self.regions) - 1
        return self._index[(t, n)]


class ConversationReader:
    """Map-style reader of conversation JSON lists / JSONL files (see the module docstring).

    ``root``: the image folder relative paths are joined to (LLaVA's ``image_folder``);
    ``video_root`` defaults to ``root``.  ``category`` / ``stage`` are given to every sample.
    A media path must stay under its root; ``allow_absolute_paths`` admits absolute ones
    (:mod:`mm15.data.sources.canonical`, "Media paths").  ``text_boxes`` (``"docowl_bbox"`` /
    ``"llava_square"``) converts boxes written in the text, with ``text_box_tolerance_px`` of
    slack at the image edges (None: the dialect's default; :mod:`~.text_boxes`).
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        source: str,
        category: Category,
        stage: Stage,
        root: PathLike = ".",
        video_root: PathLike | None = None,
        fmt: ConversationFormat | None = None,
        allow_absolute_paths: bool = False,
        text_boxes: TextBoxes | None = None,
        text_box_tolerance_px: float | None = None,
    ):
        check_mode(text_boxes)
        self.text_boxes, self.text_box_tolerance_px = text_boxes, text_box_tolerance_px
        self.paths = as_paths(paths)
        self.name = self.source = source
        self.category, self.stage = category, stage
        self.allow_absolute_paths = allow_absolute_paths
        self.root = Path(root)
        self.video_root = Path(video_root) if video_root is not None else self.root
        self.fmt = fmt or ConversationFormat()
        self._lists: dict[int, list[Any]] = {}  # file index → records of a JSON list file
        self._index: list[tuple[int, int, int]] = []  # (file, row, byte offset or -1)
        for fi, path in enumerate(self.paths):
            if path.suffix == ".jsonl":
                self._index += [(fi, row, off) for row, off in enumerate(line_offsets(path))]
                continue
            records = parse_json(path.read_bytes(), str(path))
            if not isinstance(records, list):
                raise ValueError(
                    f"{path}: a conversation .json file must hold a list of "
                    f"records, got {type(records).__name__}"
                )
            self._lists[fi] = records
            self._index += [(fi, row, -1) for row in range(len(records))]

    def __len__(self) -> int:
        return len(self._index)

    def _record(self, i: int) -> tuple[Any, str, int]:
        fi, row, off = self._index[i]
        where = f"{self.paths[fi]} row {row}"
        rec = self._lists[fi][row] if off < 0 else parse_json(read_line(self.paths[fi], off), where)
        if not isinstance(rec, dict):
            raise SampleError(
                "malformed", f"{where}: record is {type(rec).__name__}, not an object"
            )
        return rec, where, row

    def __getitem__(self, i: int) -> Sample:
        rec, where, row = self._record(i)
        absolute = self.allow_absolute_paths
        images = [
            _media_path(e, self.root, "image", where, absolute)
            for key in ("image", "images")
            for e in _as_list(rec.get(key), key, where)
        ]
        videos = [
            _media_path(e, self.video_root, "video", where, absolute)
            for key in ("video", "videos")
            for e in _as_list(rec.get(key), key, where)
        ]
        media = [Media(path=str(p)) for p in images]
        media += [Media(kind="video", path=str(p)) for p in videos]
        lookup = None
        if self.fmt.box_field in rec:
            if len(images) != 1:
                raise SampleError(
                    "malformed",
                    f"{where}: {self.fmt.box_field!r} needs exactly one "
                    f"image, the record has {len(images)}",
                )
            media[0].size = self._size(rec, images[0], where)
            lookup = _FerretRegions(rec[self.fmt.box_field], media[0].size, self.fmt, where)
        turns = next((rec[k] for k in TURN_KEYS if k in rec), None)
        messages = build_messages(
            turns,
            num_images=len(images),
            num_videos=len(videos),
            fmt=self.fmt,
            where=where,
            regions=lookup,
        )
        regions = lookup.regions if lookup else []
        convert_text_boxes(
            messages,
            media,
            regions,
            self.text_boxes,
            where,
            tolerance_px=self.text_box_tolerance_px,
        )
        sample = Sample(
            id=self._sample_id(rec, i, row),
            source=self.source,
            category=self.category,
            stage=self.stage,
            media=media,
            messages=messages,
            regions=regions,
        )
        return finish(sample, where)

    def _sample_id(self, rec: dict, i: int, row: int) -> str:
        """The record's ``id``, else ``file:row``."""
        rid = rec.get("id")
        return str(rid) if rid is not None else f"{self.paths[self._index[i][0]].name}:{row}"

    def _size(self, rec: dict, image: Path, where: str) -> tuple[int, int]:
        """The image header's (W, H), checked against Ferret's ``image_w`` / ``image_h`` when the
        record has them: boxes in the frame of a different size would land wrongly (§8.8)."""
        size = header_size(image, where=where)
        given = rec.get("image_w"), rec.get("image_h")
        if given != (None, None) and tuple(given) != size:
            raise SampleError(
                "malformed",
                f"{where}: image_w/image_h = {given[0]!r}/{given[1]!r} "
                f"but {image} is {size[0]}x{size[1]}",
            )
        return size
