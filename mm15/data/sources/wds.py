"""WebDataset tar shards with random access (on-disk layouts: mm15/data/registry.toml).

:class:`TarIndex` walks each (uncompressed) shard's headers once with :mod:`tarfile`, groups the
members by WebDataset's ``__key__`` rule (the member name up to the first dot of its base name;
the rest, lower-cased, is the extension) and remembers each member's data offset and size, so a
sample is read with one ``seek`` + ``read``.  A shard cut short (an interrupted download) keeps
the members indexed before the cut; the failure is recorded in ``TarIndex.errors`` and warned
about, and a member whose data runs past the end reads as ``corrupt``.

Readers on top:

* :class:`CaptionShards`: img2dataset / pixparse ``cc3m-wds`` shards, ``jpg|jpeg|png|webp`` +
  ``txt`` (+ ``json``) → ``document: [image, caption]`` (caption from ``json["caption"]`` when
  there is no ``txt``).
* :class:`PdfOcrShards`: PDFA (``pages[].lines.{text, bbox}``) and IDL (``pages[].{text, bbox}``)
  ``pdf`` + ``json``: **one sample per page** (the page count is ``len(json pages)``, §8.5); the
  page is rasterised with pypdfium2 at ``dpi`` into PNG bytes; text lines joined by newlines;
  each line's normalised ``[x, y, w, h]`` box becomes a pixel Region labelled with the line.
* :class:`RenderedTextShards`: RenderedText ``png`` + ``json``; lines from
  ``ocr_annotation.text``; optional line quads (normalised TL, TR, BR, BL; key ``box_key``) become
  their axis-aligned pixel envelopes.

Image members stay encoded (``Media.bytes``); their header is read only when regions need the
size.  PDF pages are the exception: rasterising is how a PDF becomes an image.
"""

from __future__ import annotations

import io
import math
import re
import tarfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium

from mm15.data.coord_conventions import to_box
from mm15.data.coords import PIXEL_TOL, CoordinateError
from mm15.data.schema import Category, Media, Message, Part, Region, Sample, SampleError, Stage
from mm15.data.sources.canonical import (
    PathLike,
    as_paths,
    coord_error,
    finish,
    header_size,
    parse_json,
)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext


class TarIndex:
    """Member offsets of tar shards grouped by key: ``keys[i] = (shard, key)``."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        self.keys: list[tuple[int, str]] = []
        self.members: list[dict[str, tuple[int, int]]] = []  # ext → (data offset, size)
        self.errors: list[str] = []
        for si, path in enumerate(self.paths):
            self._scan(si, path)

    def _scan(self, si: int, path: Path) -> None:
        groups: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with tarfile.open(path, "r:") as tf:  # "r:" refuses compressed tars: no random access
                for info in tf:
                    m = _KEY_EXT.match(info.name)
                    base = info.name.rsplit("/", 1)[-1]
                    if not info.isfile() or m is None or base.startswith(("_", ".")):
                        continue
                    groups.setdefault(m.group(1), {})[m.group(2).lower()] = (
                        info.offset_data,
                        info.size,
                    )
        except tarfile.ReadError as e:
            if not groups:
                raise ValueError(f"{path}: not a readable uncompressed tar shard: {e}") from None
            self.errors.append(f"{path}: index stops after {len(groups)} keys: {e}")
            warnings.warn(self.errors[-1], stacklevel=3)
        for key, members in groups.items():
            self.keys.append((si, key))
            self.members.append(members)

    def __len__(self) -> int:
        return len(self.keys)

    def where(self, i: int) -> str:
        si, key = self.keys[i]
        return f"{self.paths[si]} key {key}"

    def read(self, i: int, ext: str) -> bytes:
        """The bytes of member ``key.ext``; ``missing`` if absent, ``corrupt`` if cut short."""
        if ext not in self.members[i]:
            raise SampleError(
                "missing", f"{self.where(i)}: no .{ext} member (has {sorted(self.members[i])})"
            )
        offset, size = self.members[i][ext]
        with open(self.paths[self.keys[i][0]], "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise SampleError(
                "corrupt", f"{self.where(i)}.{ext}: member cut short, {len(data)} of {size} bytes"
            )
        return data

    def first_ext(self, i: int, exts: Sequence[str]) -> str | None:
        return next((e for e in exts if e in self.members[i]), None)


def _text_member(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SampleError("corrupt", f"{where}: text is not UTF-8: {e}") from None


class CaptionShards:
    """img2dataset-style caption shards → ``Message("document", [image, caption])``."""

    def __init__(
        self, paths: PathLike | Sequence[PathLike], *, source: str, category: Category, stage: Stage
    ):
        self.index = TarIndex(as_paths(paths))
        self.name = self.source = source
        self.category, self.stage = category, stage

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        idx, where = self.index, self.index.where(i)
        ext = idx.first_ext(i, IMAGE_EXTS)
        if ext is None:
            raise SampleError(
                "missing",
                f"{where}: no image member ({'/'.join(IMAGE_EXTS)}); has {sorted(idx.members[i])}",
            )
        info = parse_json(idx.read(i, "json"), f"{where}.json") if "json" in idx.members[i] else {}
        if not isinstance(info, dict):
            raise SampleError("malformed", f"{where}.json: not an object")
        if "txt" in idx.members[i]:
            caption = _text_member(idx.read(i, "txt"), f"{where}.txt")
        else:
            caption = info.get("caption") or ""
        if not isinstance(caption, str) or not caption.strip():
            raise SampleError("empty", f"{where}: empty caption")
        sample = Sample(
            id=idx.keys[i][1],
            source=self.source,
            category=self.category,
            stage=self.stage,
            media=[Media(bytes=idx.read(i, ext))],
            messages=[Message("document", [Part.m(0), Part.t(caption.strip())])],
            meta={k: info[k] for k in ("url", "key") if k in info},
        )
        return finish(sample, where)


def _page_lines(page: Any, where: str) -> tuple[list[Any], list[Any]]:
    """(texts, boxes) of one page: PDFA ``lines.{text, bbox}`` or IDL ``{text, bbox}``."""
    if not isinstance(page, dict):
        raise SampleError("malformed", f"{where}: page is {type(page).__name__}, not an object")
    lines = page["lines"] if isinstance(page.get("lines"), dict) else page
    texts, boxes = lines.get("text") or [], lines.get("bbox") or []
    if not isinstance(texts, list) or not isinstance(boxes, list) or len(texts) != len(boxes):
        raise SampleError(
            "malformed",
            f"{where}: lines need equal-length text and bbox lists, "
            f"got {len(texts)} texts and {len(boxes)} boxes",
        )
    return texts, boxes


class PdfOcrShards:
    """PDFA / IDL shards → one sample per page: ``document: [page raster, page text]``.

    ``dpi``: rasterisation resolution (pixels per inch; PDF units are 1/72 in); a page that
    would exceed ``max_pixels`` is rendered at the largest scale that fits.  Line boxes are
    normalised ``[x, y, w, h]`` (``norm01_xywh``), converted once to pixels of the raster, with
    ``box_tolerance_px`` of slack at the page edges.
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        source: str,
        category: Category,
        stage: Stage,
        dpi: float = 100.0,
        max_pixels: int = 16_000_000,
        box_tolerance_px: float = PIXEL_TOL,
    ):
        if dpi <= 0 or max_pixels < 1:
            raise ValueError(f"dpi and max_pixels must be positive, got {dpi}, {max_pixels}")
        self.index = TarIndex(as_paths(paths))
        self.name = self.source = source
        self.category, self.stage = category, stage
        self.dpi, self.max_pixels, self.tol = dpi, max_pixels, box_tolerance_px
        self._pages: list[tuple[int, int]] = []  # (key index, page)
        for k in range(len(self.index)):
            # A document whose json cannot be read still gets one entry, which raises on access.
            self._pages += [(k, p) for p in range(max(1, self._num_pages(k)))]

    def _num_pages(self, k: int) -> int:
        try:
            pages = self._json(k)["pages"]
        except (SampleError, KeyError, TypeError):
            return 0
        return len(pages) if isinstance(pages, list) else 0

    def _json(self, k: int) -> Any:
        return parse_json(self.index.read(k, "json"), f"{self.index.where(k)}.json")

    def __len__(self) -> int:
        return len(self._pages)

    def __getitem__(self, i: int) -> Sample:
        k, p = self._pages[i]
        where = f"{self.index.where(k)} page {p}"
        info = self._json(k)
        pages = info.get("pages") if isinstance(info, dict) else None
        if not isinstance(pages, list) or p >= len(pages):
            raise SampleError("malformed", f"{where}: json has no 'pages' list with this page")
        texts, boxes = _page_lines(pages[p], where)
        png, size = self._render(k, p, where)
        kept: list[str] = []
        regions: list[Region] = []
        for n, (text, bbox) in enumerate(zip(texts, boxes, strict=True)):
            if not isinstance(text, str) or not text.strip():
                continue
            try:
                box = to_box(bbox, "norm01_xywh", size, 0, tolerance_px=self.tol)
            except CoordinateError as e:
                raise coord_error(e, f"{where} line {n}") from None
            kept.append(text)
            regions.append(Region(media=0, box=(box.x1, box.y1, box.x2, box.y2), label=text))
        if not kept:
            raise SampleError("empty", f"{where}: no text lines")
        sample = Sample(
            id=f"{self.index.keys[k][1]}/p{p}",
            source=self.source,
            category=self.category,
            stage=self.stage,
            media=[Media(bytes=png, size=size)],
            regions=regions,
            messages=[Message("document", [Part.m(0), Part.t("\n".join(kept))])],
            meta={"page": p, "num_pages": len(pages), "dpi": self.dpi},
        )
        return finish(sample, where)

    def _render(self, k: int, p: int, where: str) -> tuple[bytes, tuple[int, int]]:
        """PNG bytes and (W, H) of page ``p`` of document ``k`` (the PDF is opened per call:
        mixture sampling rarely asks for two pages of one document in a row)."""
        doc = None
        try:
            doc = pdfium.PdfDocument(self.index.read(k, "pdf"))
            if p >= len(doc):
                raise SampleError(
                    "malformed",
                    f"{where}: the json lists this page but the PDF has {len(doc)} pages",
                )
            page = doc[p]
            w_pt, h_pt = page.get_size()
            scale = min(self.dpi / 72.0, math.sqrt(self.max_pixels / max(w_pt * h_pt, 1e-9)))
            image = page.render(scale=scale).to_pil().convert("RGB")
            page.close()
        except pdfium.PdfiumError as e:
            raise SampleError("corrupt", f"{where}: PDF cannot be rendered: {e}") from None
        finally:
            if doc is not None:
                doc.close()
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue(), image.size


class RenderedTextShards:
    """RenderedText shards (``png`` + ``json``) → ``document: [image, "\\n".join(lines)]``.

    ``box_key``: the key under ``ocr_annotation`` with one normalised quad per line
    (``quad01``); absent → no regions (the HF shards' box keys are unverified, §8.6).
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        source: str,
        category: Category,
        stage: Stage,
        box_key: str = "line_bboxes",
        box_tolerance_px: float = PIXEL_TOL,
    ):
        self.index = TarIndex(as_paths(paths))
        self.name = self.source = source
        self.category, self.stage = category, stage
        self.box_key, self.tol = box_key, box_tolerance_px

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        idx, where = self.index, self.index.where(i)
        ext = idx.first_ext(i, IMAGE_EXTS)
        if ext is None:
            raise SampleError("missing", f"{where}: no image member; has {sorted(idx.members[i])}")
        info = parse_json(idx.read(i, "json"), f"{where}.json")
        ocr = info.get("ocr_annotation") if isinstance(info, dict) else None
        lines = ocr.get("text") if isinstance(ocr, dict) else None
        lines = [lines] if isinstance(lines, str) else lines
        if not isinstance(lines, list) or not all(isinstance(t, str) for t in lines):
            raise SampleError(
                "malformed", f"{where}.json: ocr_annotation.text must be a list of strings"
            )
        if not "".join(lines).strip():
            raise SampleError("empty", f"{where}: no text lines")
        media = Media(bytes=idx.read(i, ext))
        quads = ocr.get(self.box_key)
        regions = []
        if quads is not None:
            if not isinstance(quads, list) or len(quads) != len(lines):
                raise SampleError(
                    "malformed",
                    f"{where}.json: {self.box_key} must hold one quad per line ({len(lines)})",
                )
            media.size = header_size(media.bytes, where=f"{where}.{ext}")
            for n, (quad, text) in enumerate(zip(quads, lines, strict=True)):
                try:
                    box = to_box(quad, "quad01", media.size, 0, tolerance_px=self.tol)
                except CoordinateError as e:
                    raise coord_error(e, f"{where} line {n}") from None
                regions.append(Region(media=0, box=(box.x1, box.y1, box.x2, box.y2), label=text))
        sample = Sample(
            id=idx.keys[i][1],
            source=self.source,
            category=self.category,
            stage=self.stage,
            media=[media],
            regions=regions,
            messages=[Message("document", [Part.m(0), Part.t("\n".join(lines))])],
        )
        return finish(sample, where)
