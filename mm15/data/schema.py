"""The one internal sample schema every reader emits.

A :class:`Sample` is a list of :class:`Message` s whose content interleaves text, media and
region references.  Regions are structured (pixel xyxy on the ORIGINAL media, converted once from
the source's convention by :mod:`mm15.data.coords`) and rendered into the model's coordinate
language only at tokenisation time (:mod:`mm15.data.pipeline`), so no reader bakes a convention
into text.  Samples round-trip through JSON lines (:func:`sample_to_json` / :func:`sample_from_json`);
media bytes travel base64-encoded.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

SkipReason = Literal["missing", "corrupt", "empty", "too_long", "malformed"]


class SampleError(ValueError):
    """A sample that cannot be used; the pipeline skips it and counts it by ``reason``."""

    def __init__(self, reason: SkipReason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


Category = Literal[
    # stage 1 pre-training (MM1.5 §4)
    "caption",
    "interleaved",
    "text",
    # stage 2 continual pre-training
    "ocr",
    "synthetic_caption",
    # stage 3 SFT (Fig. 4): single-image sub-categories, then groups
    "general",
    "text_rich",
    "refer_ground",
    "science",
    "math",
    "code",
    "multi_image",
    "text_only",
    # variants (§5, §6) and evaluation
    "video",
    "ui",
    "eval",
]
Stage = Literal["pretrain", "cpt", "sft", "eval"]
Role = Literal["system", "user", "assistant", "document"]
MediaKind = Literal["image", "video"]  # PDF pages are rasterised to image bytes by readers


@dataclass
class Media:
    """One visual input: an image (path or encoded bytes) or a video (file or frame folder)."""

    kind: MediaKind = "image"
    path: str | None = None  # local file (video: file or folder of frames)
    bytes: bytes | None = None  # encoded image bytes (Parquet struct, tar member, PDF raster)
    size: tuple[int, int] | None = None  # (W, H) of the original; required when regions exist
    frames: list[str] | None = None  # explicit frame files of a video
    # Pixels already decoded (a PIL RGB image; for a video its sampled frames, used as they
    # are): they win over path/bytes/size, so a server or chat session that decoded an image
    # hands it over instead of re-decoding it.  In memory only: never serialised.
    decoded: Any = field(default=None, repr=False, compare=False)


@dataclass
class Region:
    """A box or point on ``Sample.media[media]``, in pixels of the original media."""

    media: int
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2
    point: tuple[float, float] | None = None  # x, y
    label: str | None = None  # the phrase, OCR line or element name


@dataclass
class Part:
    """One piece of message content: text, a media item, or a region rendered as coordinates."""

    type: Literal["text", "media", "region"]
    text: str | None = None
    media: int | None = None  # index into Sample.media
    region: int | None = None  # index into Sample.regions

    @staticmethod
    def t(text: str) -> Part:
        return Part(type="text", text=text)

    @staticmethod
    def m(index: int) -> Part:
        return Part(type="media", media=index)

    @staticmethod
    def r(index: int) -> Part:
        return Part(type="region", region=index)


@dataclass
class Message:
    role: Role
    content: list[Part]
    # Loss on this message's tokens; None = the role's default (assistant/document yes, else no).
    train: bool | None = None


@dataclass
class Sample:
    id: str
    source: str  # e.g. "cauldron/chartqa", "pdfa", "synthetic/grounding"
    category: Category
    stage: Stage
    media: list[Media] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    answers: list[str] | None = None  # evaluation references
    options: list[str] | None = None  # multiple-choice options
    meta: dict[str, Any] = field(default_factory=dict)

    def num_images(self) -> int:
        """Images the sample shows the model (video counts as frames later, not here)."""
        return sum(1 for m in self.media if m.kind != "video")

    def validate(self) -> None:
        """Raise ValueError naming the sample when references or sizes are inconsistent."""
        for mi, msg in enumerate(self.messages):
            for part in msg.content:
                if part.type == "text" and part.text is None:
                    raise ValueError(f"sample {self.id}: message {mi} has a text part with no text")
                if part.type == "media" and not (
                    part.media is not None and 0 <= part.media < len(self.media)
                ):
                    raise ValueError(
                        f"sample {self.id}: message {mi} refers to media {part.media} "
                        f"but the sample has {len(self.media)}"
                    )
                if part.type == "region" and not (
                    part.region is not None and 0 <= part.region < len(self.regions)
                ):
                    raise ValueError(
                        f"sample {self.id}: message {mi} refers to region "
                        f"{part.region} but the sample has {len(self.regions)}"
                    )
        for ri, reg in enumerate(self.regions):
            if not 0 <= reg.media < len(self.media):
                raise ValueError(f"sample {self.id}: region {ri} is on missing media {reg.media}")
            if (reg.box is None) == (reg.point is None):
                raise ValueError(f"sample {self.id}: region {ri} needs exactly one of box, point")
            if self.media[reg.media].size is None:
                raise ValueError(
                    f"sample {self.id}: region {ri} is on media {reg.media} whose size is unknown"
                )


def check_references(sample: Sample) -> None:
    """Every part's media/region index and every region's media exist, and regions have 4 (box)
    or 2 (point) numbers (``malformed``).  Unlike ``Sample.validate`` a region's media needs no
    declared size: the formatter reads it from the header (:func:`~mm15.data.media.media_size`)."""

    def bad(msg: str) -> SampleError:
        return SampleError("malformed", f"sample {sample.id}: {msg}")

    for mi, msg in enumerate(sample.messages):
        for part in msg.content:
            if part.type not in ("text", "media", "region"):
                raise bad(f"message {mi} has a part of unknown type {part.type!r}")
            if part.type == "text" and not isinstance(part.text, str):
                raise bad(f"message {mi} has a text part with no text")
            ref, n = {
                "media": (part.media, len(sample.media)),
                "region": (part.region, len(sample.regions)),
            }.get(part.type, (0, 1))
            if not isinstance(ref, int) or not 0 <= ref < n:
                raise bad(f"message {mi} refers to {part.type} {ref} but the sample has {n}")
    for ri, reg in enumerate(sample.regions):
        if not isinstance(reg.media, int) or not 0 <= reg.media < len(sample.media):
            raise bad(f"region {ri} is on media {reg.media} but the sample has {len(sample.media)}")
        if (reg.box is None) == (reg.point is None):
            raise bad(f"region {ri} needs exactly one of box, point")
        shape = reg.box if reg.box is not None else reg.point
        if len(shape) != (4 if reg.box is not None else 2):
            raise bad(f"region {ri} has {len(shape)} coordinates: {shape}")


def media_order(sample: Sample) -> list[int]:
    """Media indices in order of appearance; each medium must appear exactly once."""
    order = [p.media for m in sample.messages for p in m.content if p.type == "media"]
    if len(set(order)) != len(order):
        twice = sorted({i for i in order if order.count(i) > 1})
        raise SampleError("malformed", f"sample {sample.id}: media {twice} shown more than once")
    unused = sorted(set(range(len(sample.media))) - set(order))
    if unused:
        raise SampleError(
            "malformed",
            f"sample {sample.id}: media {unused} never shown (no media part refers to them)",
        )
    return order


# ---------------------------------------------------------------------------------------------
# JSON lines


def sample_to_json(sample: Sample) -> str:
    if any(m.decoded is not None for m in sample.media):
        raise ValueError(f"sample {sample.id}: decoded pixels (Media.decoded) do not serialise")

    def enc(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return {"__b64__": base64.b64encode(obj).decode("ascii")}
        if isinstance(obj, dict):
            return {k: enc(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [enc(v) for v in obj]
        return obj

    return json.dumps(enc(dataclasses.asdict(sample)), ensure_ascii=False)


def sample_from_json(line: str) -> Sample:
    def dec(obj: Any) -> Any:
        if isinstance(obj, dict):
            if set(obj) == {"__b64__"}:
                return base64.b64decode(obj["__b64__"])
            return {k: dec(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [dec(v) for v in obj]
        return obj

    d = dec(json.loads(line))
    media = [
        Media(**{**m, "size": tuple(m["size"]) if m.get("size") else None}) for m in d.pop("media")
    ]
    regions = [
        Region(
            media=r["media"],
            label=r.get("label"),
            box=tuple(r["box"]) if r.get("box") is not None else None,
            point=tuple(r["point"]) if r.get("point") is not None else None,
        )
        for r in d.pop("regions")
    ]
    messages = [
        Message(role=m["role"], train=m.get("train"), content=[Part(**p) for p in m["content"]])
        for m in d.pop("messages")
    ]
    return Sample(media=media, regions=regions, messages=messages, **d)
