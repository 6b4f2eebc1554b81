"""Readers from real on-disk dataset formats to :class:`mm15.data.schema.Sample` (SPEC §4;
notes/dataset-formats.md §6-§8).

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
``canonical``             canonical JSONL (``sample_to_json`` lines), and shared helpers
========================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KINDS = ("conversation", "table", "captions", "pdf_ocr", "rendered_text", "obelics", "canonical")


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
    if isinstance(kwargs.get("fmt"), Mapping):
        from mm15.data.sources.conversation import ConversationFormat

        kwargs["fmt"] = ConversationFormat(**kwargs["fmt"])
    if kind == "conversation":
        from mm15.data.sources.conversation import ConversationReader

        return ConversationReader(paths, **kwargs)
    if kind == "table":
        from mm15.data.sources.table import COLUMN_MAPS, ColumnMap, TableReader

        cols = kwargs.pop("columns", None)
        if isinstance(cols, str):
            if cols not in COLUMN_MAPS:
                raise ValueError(f"unknown column map {cols!r}; presets: {sorted(COLUMN_MAPS)}")
            cols = COLUMN_MAPS[cols]
        elif isinstance(cols, Mapping):
            cols = ColumnMap(**{k: tuple(v) if isinstance(v, list) else v for k, v in cols.items()})
        return TableReader(paths, columns=cols, **kwargs)
    if kind in ("captions", "pdf_ocr", "rendered_text"):
        from mm15.data.sources import wds

        cls = {"captions": wds.CaptionShards, "pdf_ocr": wds.PdfOcrShards,
               "rendered_text": wds.RenderedTextShards}[kind]  # fmt: skip
        return cls(paths, **kwargs)
    if kind == "obelics":
        from mm15.data.sources.obelics import ObelicsReader

        return ObelicsReader(paths, **kwargs)
    if kind == "canonical":
        from mm15.data.sources.canonical import CanonicalReader

        return CanonicalReader(paths, **kwargs)
    raise ValueError(f"source spec has kind {kind!r}; expected one of {KINDS}")
