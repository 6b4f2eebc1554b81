"""Readers from real on-disk dataset formats to :class:`mm15.data.schema.Sample` (MM1.5 §3–4;
on-disk layouts: mm15/data/registry.toml).

Every reader is a map-style dataset (``len(reader)``, ``reader[i] -> Sample``, random access for
deterministic, resumable mixture sampling) with ``name`` / ``source`` and the ``category`` /
``stage`` its caller gave it.  Indexes are built in ``__init__`` (JSONL byte offsets, Parquet
row-group counts, tar member offsets); ``reader[i]`` raises
:class:`~mm15.data.schema.SampleError` (``missing`` / ``corrupt`` / ``empty`` / ``malformed``,
the detail naming the file and row or key) for a sample that cannot be used.  Regions are
converted once, by :mod:`mm15.data.coords`, to pixel xyxy on the original image.  Pixels are not
decoded: media are paths or encoded bytes, and ``Media.size`` comes from the image header only
when the sample has regions (PDF pages are rasterised, as they must be).

========================  =====================================================================
module                    formats
========================  =====================================================================
``conversation``          LLaVA / ShareGPT4V / DocStruct4M / Mantis / Ferret GRIT / video JSON(L)
``table``                 Parquet / Arrow / JSON(L) through a ``ColumnMap`` (Cauldron,
                          Mantis-Instruct, LLaVA-ReCap, benchmarks, text-only instruction sets)
``wds``                   WebDataset tars: caption shards, PDFA / IDL pages, RenderedText
``obelics``               OBELICS interleaved Parquet with a URL → local file lookup
``text``                  plain-text corpora (FineWeb / DCLM ``text`` column) as documents
``synthdog``              Synthdog Parquet (``image`` + Donut ``ground_truth`` JSON) → OCR
``coco``                  COCO captions JSON; RefCOCO-family Parquet → grounding samples
``video_qa``              VideoChat2-IT ``QA`` JSON; ActivityNet-QA q/a join or lmms-eval table
``text_boxes``            boxes inside conversation text (DocOwl ``<bbox>``, LLaVA floats)
``canonical``             canonical JSONL (``sample_to_json`` lines), and shared helpers
``rows``                  random access to Parquet / Arrow / JSON(L) rows, image cells (shared)
========================  =====================================================================
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

# kind → (module of mm15.data.sources, reader class); every other key of a spec is the reader's
# keyword argument (a table's ``columns`` and a conversation ``fmt`` are built from plain data).
_READERS = {
    "conversation": ("conversation", "ConversationReader"),
    "table": ("table", "TableReader"),
    "captions": ("wds", "CaptionShards"),
    "pdf_ocr": ("wds", "PdfOcrShards"),
    "rendered_text": ("wds", "RenderedTextShards"),
    "obelics": ("obelics", "ObelicsReader"),
    "canonical": ("canonical", "CanonicalReader"),
    "text": ("text", "TextReader"),
    "synthdog": ("synthdog", "SynthdogReader"),
    "coco_captions": ("coco", "CocoCaptionsReader"),
    "refcoco": ("coco", "RefCocoReader"),
    "videochat2": ("video_qa", "VideoChat2Reader"),
    "activitynet_qa": ("video_qa", "ActivityNetQAReader"),
}
KINDS = tuple(_READERS)


def open_source(spec: Mapping[str, Any]) -> Any:
    """Build a reader from a plain spec, e.g. one entry of a mixture config::

        {"kind": "table", "paths": ["chartqa/train-00000.parquet"], "columns": "cauldron",
         "source": "cauldron/chartqa", "category": "text_rich", "stage": "sft"}

    ``kind`` is one of :data:`KINDS`; the other keys are the reader's keyword arguments.  For
    ``table``, ``columns`` may name a preset of ``table.COLUMN_MAPS`` or be a dict of
    ``ColumnMap`` fields; ``fmt`` may be a dict of ``ConversationFormat`` fields.
    """
    kwargs = dict(spec)
    kind = kwargs.pop("kind", None)
    paths = kwargs.pop("paths", None)
    if paths is None:
        raise ValueError(f"source spec {dict(spec)} has no 'paths'")
    if kind not in _READERS:
        raise ValueError(f"source spec has kind {kind!r}; expected one of {KINDS}")
    if isinstance(kwargs.get("fmt"), Mapping):
        from mm15.data.sources.conversation import ConversationFormat

        kwargs["fmt"] = ConversationFormat(**kwargs["fmt"])
    if kind == "table":
        kwargs["columns"] = _column_map(kwargs.pop("columns", None))
    module, cls = _READERS[kind]
    return getattr(importlib.import_module(f"mm15.data.sources.{module}"), cls)(paths, **kwargs)


def _column_map(cols: Any) -> Any:
    """A table's ``columns`` option: a preset name of ``COLUMN_MAPS`` or a dict of fields."""
    from mm15.data.sources.table import COLUMN_MAPS, ColumnMap

    if isinstance(cols, str):
        if cols not in COLUMN_MAPS:
            raise ValueError(f"unknown column map {cols!r}; presets: {sorted(COLUMN_MAPS)}")
        return COLUMN_MAPS[cols]
    if not isinstance(cols, Mapping):
        raise ValueError(
            f"a table needs the option 'columns': one of {sorted(COLUMN_MAPS)} "
            'or a dict of ColumnMap fields, e.g. {"question": ["prompt"], '
            '"answer": "response"}'
        )
    try:
        return ColumnMap(**{k: tuple(v) if isinstance(v, list) else v for k, v in cols.items()})
    except TypeError as e:  # an unknown field name
        raise ValueError(
            f"columns: {e}; ColumnMap fields are images, texts, messages, "
            "question, system, answer, answers, options, box, "
            "box_convention, id, row_source"
        ) from None
