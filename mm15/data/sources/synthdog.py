"""Synthdog (``naver-clova-ix/synthdog-en`` and its language siblings; on-disk layouts: mm15/data/registry.toml): Parquet shards with an ``image`` column (HF ``Image`` struct ``{bytes, path}``) and a
``ground_truth`` column holding a JSON string in Donut's convention,
``{"gt_parse": {"text_sequence": "..."}}`` (``gt_parses``, a list, is accepted too: the first
entry is used).

A row becomes an OCR sample shaped as the WebDataset OCR readers shape theirs
(:mod:`mm15.data.sources.wds`): ``document: [image, text]``, loss on the text.  With ``prompt``
set it is a chat instead, ``user: [image, prompt]`` → ``assistant: text`` (for an SFT mixture).
Pixels are never decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mm15.data.schema import Category, Message, Part, Sample, SampleError, Stage
from mm15.data.sources.canonical import PathLike, as_paths, finish, parse_json
from mm15.data.sources.rows import RowStore, image_media


def ocr_messages(text: str, prompt: str | None) -> list[Message]:
    """``document: [image 0, text]``, or with ``prompt`` a user → assistant pair."""
    if prompt is None:
        return [Message("document", [Part.m(0), Part.t(text)])]
    return [Message("user", [Part.m(0), Part.t(prompt)]), Message("assistant", [Part.t(text)])]


class SynthdogReader:
    """Map-style reader of Synthdog Parquet (module docstring).

    ``image_column`` / ``ground_truth_column``: the column names; ``root``: where an image
    struct's ``path`` points when its bytes are null (``allow_absolute_paths`` as elsewhere).
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        source: str,
        category: Category = "ocr",
        stage: Stage = "cpt",
        image_column: str = "image",
        ground_truth_column: str = "ground_truth",
        prompt: str | None = None,
        root: PathLike = ".",
        allow_absolute_paths: bool = False,
    ):
        self.paths = as_paths(paths)
        self.name = self.source = source
        self.category, self.stage = category, stage
        self.image_column, self.gt_column = image_column, ground_truth_column
        self.prompt, self.root = prompt, Path(root)
        self.allow_absolute_paths = allow_absolute_paths
        self.rows = RowStore(self.paths, [image_column, ground_truth_column])
        self.rows.check_columns()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:
        row, where, key = self.rows.row(i)
        text = ground_truth_text(row.get(self.gt_column), f"{where} column {self.gt_column!r}")
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
        sample = Sample(
            id=key,
            source=self.source,
            category=self.category,
            stage=self.stage,
            media=media,
            messages=ocr_messages(text, self.prompt),
        )
        return finish(sample, where)


def ground_truth_text(value: Any, where: str) -> str:
    """``gt_parse.text_sequence`` of a Donut ground-truth JSON string (or already-parsed dict)."""
    if value is None:
        raise SampleError("missing", f"{where}: no ground truth")
    gt = parse_json(value, where) if isinstance(value, str | bytes) else value
    if not isinstance(gt, dict):
        raise SampleError(
            "malformed", f"{where}: ground truth is {type(gt).__name__}, not an object"
        )
    parse = gt.get("gt_parse")
    if parse is None and isinstance(gt.get("gt_parses"), list) and gt["gt_parses"]:
        parse = gt["gt_parses"][0]
    text = parse.get("text_sequence") if isinstance(parse, dict) else None
    if text is None:
        raise SampleError("malformed", f"{where}: no gt_parse.text_sequence in {sorted(gt)}")
    if not isinstance(text, str):
        raise SampleError("malformed", f"{where}: text_sequence is {type(text).__name__}")
    if not text.strip():
        raise SampleError("empty", f"{where}: text_sequence is empty")
    return text
