"""COCO captions JSON and RefCOCO-family Parquet copies (on-disk layouts: mm15/data/registry.toml).

* :class:`CocoCaptionsReader`: ``annotations/captions_{train,val}2017.json`` (``images[{id,
  file_name}]``, ``annotations[{id, image_id, caption}]``) + the image folder ``root``.  **One
  sample per annotation** (each of an image's ~5 captions is its own sample: every caption is
  used, and the order is the file's, so nothing random happens in the reader), shaped as
  :class:`~mm15.data.sources.wds.CaptionShards` shapes caption pairs: ``document: [image,
  caption]``; with ``prompt`` a ``user: [image, prompt]`` → ``assistant: caption`` chat.
* :class:`RefCocoReader`: RefCOCO / RefCOCO+ / RefCOCOg rows from Parquet, Arrow or JSON(L)
  copies, never the original pickles: lmms-lab ``RefCOCO*`` (``image`` struct, ``answer:
  list[str]``, ``bbox`` COCO pixel ``[x, y, w, h]``) or jxu124 ``refcoco*`` (``image_path``
  such as ``coco/train2014/COCO_train2014_….jpg`` under ``root``, ``captions: list[str]``,
  ``bbox`` pixel ``[x1, y1, x2, y2]`` per its users' code [3p]).  **One sample per referring
  expression**: ``user: [image, prompt with the phrase]`` → ``assistant: [the box]``, the box
  converted once from the layout's convention to a :class:`Region` on the original image
  (size from its header).  The expression index is built in ``__init__`` from the
  phrase column alone; a row with no expression keeps one entry that raises ``empty``.

Keep evaluation splits out of training mixtures (lmms-lab's copies hold only val/test splits).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mm15.data.coord_conventions import BoxConvention, to_box
from mm15.data.coords import CoordinateError
from mm15.data.schema import Category, Media, Message, Part, Region, Sample, SampleError, Stage
from mm15.data.sources.canonical import (
    PathLike,
    as_paths,
    coord_error,
    finish,
    header_size,
    media_under_root,
    parse_json,
)
from mm15.data.sources.rows import RowStore, image_media
from mm15.data.sources.synthdog import ocr_messages

REFER_PROMPT = "Where is {phrase}? Answer with a bounding box."  # as mm15.eval.tasks asks


class CocoCaptionsReader:
    """Map-style reader of COCO captions JSON (module docstring).

    ``root``: the image folder ``file_name`` is relative to (``coco/train2017``), or one folder
    per file of ``paths``.  A file that is not a COCO captions object is a ``ValueError`` naming
    the file and key at construction.
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        source: str,
        root: PathLike | Sequence[PathLike],
        category: Category = "caption",
        stage: Stage = "pretrain",
        prompt: str | None = None,
        allow_absolute_paths: bool = False,
    ):
        self.paths = as_paths(paths)
        roots = [root] if isinstance(root, str | Path) else list(root)
        if len(roots) not in (1, len(self.paths)):
            raise ValueError(
                f"root: give one folder or one per file ({len(self.paths)}), got {len(roots)}"
            )
        self.roots = [Path(r) for r in roots] * (len(self.paths) if len(roots) == 1 else 1)
        self.name = self.source = source
        self.category, self.stage, self.prompt = category, stage, prompt
        self.allow_absolute_paths = allow_absolute_paths
        self._files: list[dict[Any, Any]] = []  # per file: image id → file_name
        self._anns: list[list[Any]] = []
        self._index: list[tuple[int, int]] = []
        for fi, path in enumerate(self.paths):
            try:
                data = parse_json(path.read_bytes(), str(path))
            except SampleError as e:
                raise ValueError(str(e)) from None
            for key in ("images", "annotations"):
                if not isinstance(data, dict) or not isinstance(data.get(key), list):
                    raise ValueError(
                        f"{path}: a COCO captions file needs a list {key!r}; "
                        f"it has keys {sorted(data) if isinstance(data, dict) else type(data).__name__}"
                    )
            self._files.append(
                {im.get("id"): im.get("file_name") for im in data["images"] if isinstance(im, dict)}
            )
            self._anns.append(data["annotations"])
            self._index += [(fi, j) for j in range(len(data["annotations"]))]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Sample:
        fi, j = self._index[i]
        where = f"{self.paths[fi]} annotation {j}"
        ann = self._anns[fi][j]
        if not isinstance(ann, dict):
            raise SampleError("malformed", f"{where}: annotation is {type(ann).__name__}")
        caption = ann.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise SampleError("malformed", f"{where}: caption is {type(caption).__name__}")
        if not caption or not caption.strip():
            raise SampleError("empty", f"{where}: empty caption")
        file_name = self._files[fi].get(ann.get("image_id"))
        if not isinstance(file_name, str) or not file_name:
            raise SampleError(
                "missing", f"{where}: image_id {ann.get('image_id')!r} is not in 'images'"
            )
        path = media_under_root(
            self.roots[fi], file_name, where, allow_absolute=self.allow_absolute_paths
        )
        sample = Sample(
            id=str(ann["id"]) if ann.get("id") is not None else f"{self.paths[fi].name}:{j}",
            source=self.source,
            category=self.category,
            stage=self.stage,
            media=[Media(path=str(path))],
            messages=ocr_messages(caption.strip(), self.prompt),
            meta={"image_id": ann.get("image_id")},
        )
        return finish(sample, where)


def column_names(path: Path) -> list[str]:
    """Column names of a Parquet / Arrow file (its schema) or of a JSON(L) file's first row."""
    try:
        if path.suffix in (".json", ".jsonl"):
            with open(path, "rb") as f:
                first = json.loads(f.read()) if path.suffix == ".json" else None
                if first is None:
                    f.seek(0)
                    first = next((json.loads(ln) for ln in f if ln.strip()), {})
            first = first[0] if isinstance(first, list) and first else first
            return sorted(first) if isinstance(first, dict) else []
        if path.suffix == ".arrow":
            try:
                return pa.ipc.open_file(pa.memory_map(str(path))).schema.names
            except pa.ArrowInvalid:
                return pa.ipc.open_stream(pa.memory_map(str(path))).schema.names
        return pq.read_schema(path).names
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ValueError(f"{path}: cannot read its columns: {e}") from None


def phrases(value: Any) -> list[Any]:
    """Referring expressions of one cell: a string, a list of strings, or a list of RefCOCO
    sentence objects (``sent`` or ``raw``); entries are returned as found (checked on use)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [it.get("sent", it.get("raw")) if isinstance(it, dict) else it for it in items]


# Column layouts of the Parquet copies (the jxu124 one: image_path under the folder holding
# coco/train2014, bbox pixel xyxy, captions = the expressions; lmms-lab: COCO xywh).
REFCOCO_LAYOUTS: dict[str, dict[str, str]] = {
    "lmms_lab": {
        "image_column": "image",
        "phrase_column": "answer",
        "box_column": "bbox",
        "box_convention": "px_xywh",
        "id_column": "question_id",
    },
    "jxu124": {
        "image_column": "image_path",
        "phrase_column": "captions",
        "box_column": "bbox",
        "box_convention": "px_xyxy",
        "id_column": "ref_id",
    },
}


class RefCocoReader:
    """Map-style reader of RefCOCO-family rows as grounding training samples (module docstring).

    ``layout``: ``"lmms_lab"`` or ``"jxu124"`` (:data:`REFCOCO_LAYOUTS`), or ``"auto"`` to pick
    it from the first file's columns (``image_path`` → jxu124, else lmms_lab).  Each of
    ``image_column`` (an image struct / bytes / path under ``root``), ``box_column``,
    ``box_convention``, ``phrase_column`` (strings or RefCOCO ``sentences`` objects) and
    ``id_column`` overrides the layout's.  ``prompt`` holds ``{phrase}``.  A column missing from
    a file is a ``ValueError`` at construction naming file and column.
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        source: str,
        category: Category = "refer_ground",
        stage: Stage = "sft",
        layout: str = "auto",
        image_column: str | None = None,
        box_column: str | None = None,
        box_convention: BoxConvention | None = None,
        phrase_column: str | None = None,
        id_column: str | None = None,
        prompt: str = REFER_PROMPT,
        root: PathLike = ".",
        allow_absolute_paths: bool = False,
    ):
        try:
            ok = "{phrase}" in prompt and bool(prompt.format(phrase="x"))
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"prompt {prompt!r} must hold {{phrase}} and no other field")
        self.paths = as_paths(paths)
        if layout == "auto":
            layout = "jxu124" if "image_path" in column_names(self.paths[0]) else "lmms_lab"
        if layout not in REFCOCO_LAYOUTS:
            raise ValueError(
                f"layout {layout!r}; expected 'auto' or one of {sorted(REFCOCO_LAYOUTS)}"
            )
        given = {
            "image_column": image_column,
            "box_column": box_column,
            "id_column": id_column,
            "box_convention": box_convention,
            "phrase_column": phrase_column,
        }
        cfg = {**REFCOCO_LAYOUTS[layout], **{k: v for k, v in given.items() if v is not None}}
        self.layout = layout
        self.name = self.source = source
        self.category, self.stage, self.prompt = category, stage, prompt
        self.image_column, self.box_column = cfg["image_column"], cfg["box_column"]
        self.phrase_column, self.id_column = cfg["phrase_column"], cfg["id_column"]
        self.box_convention: BoxConvention = cfg["box_convention"]  # type: ignore[assignment]
        self.root, self.allow_absolute_paths = Path(root), allow_absolute_paths
        self.rows = RowStore(
            self.paths, [self.image_column, self.box_column, self.phrase_column, self.id_column]
        )
        self.rows.check_columns()
        self._index: list[tuple[int, int]] = []  # (row, expression or -1)
        for row, value in enumerate(self.rows.column(self.phrase_column)):
            n = len(phrases(value))
            self._index += [(row, k) for k in range(n)] if n else [(row, -1)]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Sample:
        r, k = self._index[i]
        row, where, key = self.rows.row(r)
        found = phrases(row.get(self.phrase_column))
        if k < 0 or k >= len(found):
            raise SampleError(
                "empty", f"{where}: column {self.phrase_column!r} has no referring expression"
            )
        phrase = found[k]
        if not isinstance(phrase, str) or not phrase.strip():
            raise SampleError(
                "empty", f"{where}: expression {k} of {self.phrase_column!r} is empty"
            )
        media = image_media(
            row.get(self.image_column),
            self.image_column,
            self.root,
            where,
            allow_absolute=self.allow_absolute_paths,
        )
        if len(media) != 1:
            raise SampleError(
                "missing",
                f"{where}: column {self.image_column!r} holds {len(media)} images, expected one",
            )
        m = media[0]
        m.size = header_size(m.bytes if m.bytes is not None else m.path, where=where)
        value = row.get(self.box_column)
        if value is None:
            raise SampleError("missing", f"{where}: no box in column {self.box_column!r}")
        try:
            box = to_box(value, self.box_convention, m.size, 0)
        except CoordinateError as e:
            raise coord_error(e, f"{where} column {self.box_column!r}") from None
        rid = row.get(self.id_column) if self.id_column else None
        sample = Sample(
            id=f"{rid if rid is not None else key}#{k}",
            source=self.source,
            category=self.category,
            stage=self.stage,
            media=[m],
            regions=[Region(media=0, box=(box.x1, box.y1, box.x2, box.y2), label=phrase.strip())],
            messages=[
                Message("user", [Part.m(0), Part.t(self.prompt.format(phrase=phrase.strip()))]),
                Message("assistant", [Part.r(0)]),
            ],
        )
        return finish(sample, where)
