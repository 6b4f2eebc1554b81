"""Tiny copies of every registry dataset, each in the on-disk layout its public copy has.

:func:`write_registry_fixtures` writes, under one ``data_root``, a few samples of each entry of
mm15/data/registry.toml at the entry's own ``dir``/``files`` (a glob's ``*`` becomes ``x0``), in
the layout its reader expects: webdataset tars for caption/PDF/RenderedText shards, OBELICS
parquet with its URL index and downloaded images, LLaVA / DocOwl / Ferret / ShareGPTVideo
conversation files with their image and frame folders, Cauldron / Mantis / text-only tables,
and the layouts of the readers added for the registry (plain text, Synthdog, COCO captions,
RefCOCO parquet, VideoChat2, ActivityNet-QA). Every entry gets ``GOOD`` usable samples; the
builders below say which layouts also carry a bad row (counted as a skip, never trained).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mm15.data.registry import RegistryEntry, builtin_entries
from mm15.data.sources.table import COLUMN_MAPS, ColumnMap

GOOD = 4  # usable samples per dataset
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
WORDS = ["red square", "blue circle", "green triangle", "yellow star", "black line"]


def png(size: tuple[int, int] = (64, 48), k: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (40 * k % 255, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: Path, size: tuple[int, int] = (64, 48), k: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(size, k))
    return path.name


def concrete(pattern: str) -> str:
    """A file name matching ``pattern`` (each ``*`` → ``x0``)."""
    return pattern.replace("*", "x0")


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": f, "value": v} for f, v in pairs]


# ---- webdataset shards ------------------------------------------------------------------------


def captions(e: RegistryEntry, folder: Path) -> None:
    """img2dataset shard: ``key.jpg`` + ``key.txt``; one key without an image (a skip)."""
    members = []
    for k in range(GOOD):
        members += [
            (f"{k:09d}.png", png(k=k)),
            (f"{k:09d}.txt", f"a {WORDS[k % len(WORDS)]}".encode()),
        ]
    members.append(("000000099.txt", b"a caption whose image is missing"))
    _tar(folder / concrete(e.files[0]), members)


def pdf_ocr(e: RegistryEntry, folder: Path) -> None:
    """PDFA shard: ``key.pdf`` + ``key.json`` with ``pages[].lines`` (normalised xywh)."""
    import pypdfium2 as pdfium

    members = []
    for k in range(GOOD):
        pdf = pdfium.PdfDocument.new()
        pdf.new_page(144, 72)
        buf = io.BytesIO()
        pdf.save(buf)
        pdf.close()
        lines = {
            "text": [f"Line {WORDS[k % len(WORDS)]}"],
            "bbox": [[0.1, 0.1, 0.5, 0.2]],
            "score": [1.0],
        }
        members += [
            (f"doc{k}.pdf", buf.getvalue()),
            (f"doc{k}.json", json.dumps({"pages": [{"lines": lines}]}).encode()),
        ]
    _tar(folder / concrete(e.files[0]), members)


def rendered_text(e: RegistryEntry, folder: Path) -> None:
    quad = [[0.1, 0.2], [0.5, 0.2], [0.5, 0.6], [0.1, 0.6]]
    members = []
    for k in range(GOOD):
        ann = {"ocr_annotation": {"text": [f"Dear {WORDS[k % len(WORDS)]}"], "line_bboxes": [quad]}}
        members += [(f"r{k}.png", png((100, 50), k)), (f"r{k}.json", json.dumps(ann).encode())]
    _tar(folder / concrete(e.files[0]), members)


# ---- OBELICS ------------------------------------------------------------------------------------


def obelics(e: RegistryEntry, folder: Path) -> None:
    """Parquet documents with image URLs, downloaded images and ``urls.parquet`` (url → path)."""
    url = "https://example.org/{}.jpg".format
    for k in range(GOOD):
        save_png(folder / f"images/{k}.png", k=k)
    table = pa.table(
        {
            "images": pa.array([[url(k), None] for k in range(GOOD)], pa.list_(pa.string())),
            "texts": pa.array(
                [[None, f"A page about a {WORDS[k % len(WORDS)]}."] for k in range(GOOD)],
                pa.list_(pa.string()),
            ),
        }
    )
    path = folder / concrete(e.files[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    pq.write_table(
        pa.table(
            {"url": [url(k) for k in range(GOOD)], "path": [f"images/{k}.png" for k in range(GOOD)]}
        ),
        folder / "urls.parquet",
    )


# ---- conversation JSON ------------------------------------------------------------------------


def conversation(e: RegistryEntry, folder: Path) -> None:
    """By the entry's dialect: DocOwl JSONL with ``<bbox>`` (ints 0–999), LLaVA JSON with
    padded-square float boxes, Ferret JSON with per-turn pixel boxes, ShareGPTVideo JSONL with
    frame folders, or plain LLaVA JSON. One row names an image that is not there (a skip)."""
    opts, path = e.options, folder / concrete(e.files[0])
    rows: list[dict[str, Any]] = []
    if "video_root" in opts:
        for k in range(GOOD):
            for f in range(3):
                save_png(folder / f"train_300k/v{k}/{f:03d}.jpg", (32, 32), f)
            rows.append(
                {
                    "id": f"v{k}",
                    "video": f"v{k}",
                    "conversations": _turns(
                        ("human", "<video>\nWhat happens?"),
                        ("gpt", f"A {WORDS[k % len(WORDS)]} moves."),
                    ),
                }
            )
        rows.append(
            {
                "id": "lost",
                "video": "nowhere",
                "conversations": _turns(("human", "<video>\n?"), ("gpt", "?")),
            }
        )
    elif opts.get("text_boxes") == "docowl_bbox":
        for k in range(GOOD):
            save_png(folder / f"imgs/d{k}.png", (100, 80), k)
            rows.append(
                {
                    "image": [f"./imgs/d{k}.png"],
                    "task_name": "t",
                    "dataset_name": "d",
                    "messages": [
                        {
                            "role": "user",
                            "content": "<|image|>Read the text in <bbox>100,200,500,600</bbox>",
                        },
                        {"role": "assistant", "content": f"<ocr>{WORDS[k % len(WORDS)]}</ocr>"},
                    ],
                }
            )
        rows.append({"image": ["./imgs/gone.png"], "messages": rows[0]["messages"]})
    elif e.coords == "px_xyxy":  # Ferret GRIT / Ferret-UI
        for k in range(GOOD):
            save_png(folder / f"images/f{k}.png", (200, 100), k)
            rows.append(
                {
                    "id": k,
                    "image": f"images/f{k}.png",
                    "image_w": 200,
                    "image_h": 100,
                    "conversations": _turns(
                        ("human", "<image>\nWhat is <bbox_location0>?"),
                        ("gpt", f"A {WORDS[k % len(WORDS)]}."),
                    ),
                    "box_x1y1x2y2": [[[20, 10, 60, 50]], []],
                }
            )
        rows.append(
            {
                "id": 99,
                "image": "images/gone.png",
                "conversations": _turns(("human", "<image>\nWhat?"), ("gpt", "?")),
            }
        )
    else:  # LLaVA JSON list (665k with boxes on the padded square)
        boxes = opts.get("text_boxes") == "llava_square"
        for k in range(GOOD):
            save_png(folder / f"coco/train2017/{k:012d}.jpg", (64, 48), k)
            q = "Where is the object? [0.2, 0.3, 0.6, 0.7]" if boxes and k == 0 else "What is it?"
            rows.append(
                {
                    "id": str(k),
                    "image": f"coco/train2017/{k:012d}.jpg",
                    "conversations": _turns(
                        ("human", f"<image>\n{q}"), ("gpt", f"A {WORDS[k % len(WORDS)]}.")
                    ),
                }
            )
        rows.append({"id": "text", "conversations": _turns(("human", "Hi?"), ("gpt", "Hello."))})
        rows.append(
            {
                "id": "gone",
                "image": "coco/nope.jpg",
                "conversations": _turns(("human", "<image>\n?"), ("gpt", "?")),
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))


# ---- tables -----------------------------------------------------------------------------------


def _column_map(e: RegistryEntry) -> ColumnMap:
    cols = e.options["columns"]
    if isinstance(cols, str):
        return COLUMN_MAPS[cols]
    return ColumnMap(**{k: tuple(v) if isinstance(v, list) else v for k, v in cols.items()})


def _row(cm: ColumnMap, k: int, folder: Path, root_relative: bool, json_file: bool):
    """One row of a table with column map ``cm``: image columns as HF Image structs (bytes, or
    a path under the dataset folder when the entry reads images from ``root``), or, in a JSON
    file, as the path string JSON datasets hold."""
    row: dict[str, Any] = {}
    for col in cm.images:
        if root_relative:
            name = f"images/t{k}.png"
            save_png(folder / name, k=k)
            image: Any = name if json_file else {"bytes": None, "path": name}
        else:
            image = {"bytes": png(k=k), "path": None}
        row[col] = [image] if cm.texts or cm.messages else image
    if cm.texts:
        row[cm.texts] = [
            {"user": "What is shown?", "assistant": f"A {WORDS[k % len(WORDS)]}.", "source": "x"}
        ]
    if cm.messages:
        holder = "<image>\n" if cm.images else ""
        row[cm.messages] = [
            {"role": "user", "content": f"{holder}What is shown?"},
            {"role": "assistant", "content": f"A {WORDS[k % len(WORDS)]}."},
        ]
    for col in cm.question:
        row[col] = f"Question {k} about a {WORDS[k % len(WORDS)]}?"
    for col, value in (
        (cm.system, "Be brief."),
        (cm.answer, f"A {WORDS[k % len(WORDS)]}."),
        (cm.answers, [f"A {WORDS[k % len(WORDS)]}."]),
        (cm.options, ["A", "B"]),
        (cm.id, str(k)),
        (cm.row_source, "sub"),
    ):
        if col is not None:
            row[col] = value
    return row


def table(e: RegistryEntry, folder: Path) -> None:
    """Rows by the entry's column map, as Parquet, JSONL or a JSON list by the file's suffix."""
    cm = _column_map(e)
    path = folder / concrete(e.files[0])
    rows = [
        _row(cm, k, folder, "root" in e.options, path.suffix != ".parquet") for k in range(GOOD)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, default=_no_bytes) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows, default=_no_bytes))


def _no_bytes(value: Any) -> Any:
    raise TypeError(f"a JSON table cannot hold {type(value).__name__}")


# ---- the readers added for the registry -------------------------------------------------------


def _parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def text(e: RegistryEntry, folder: Path) -> None:
    """FineWeb-style parquet: ``text``, ``id``, ``url``; one empty document (a skip)."""
    docs = [f"A document about a {WORDS[k % len(WORDS)]}. " * (k % 5 + 1) for k in range(GOOD)] + [
        ""
    ]
    _parquet(
        folder / concrete(e.files[0]),
        pa.table(
            {
                "text": docs,
                "id": [f"<urn:{k}>" for k in range(len(docs))],
                "url": ["https://example.org"] * len(docs),
            }
        ),
    )


def synthdog(e: RegistryEntry, folder: Path) -> None:
    """Synthdog parquet: ``image`` structs and Donut ``ground_truth`` JSON strings."""
    gt = [
        json.dumps({"gt_parse": {"text_sequence": f"synthetic {WORDS[k % len(WORDS)]}"}})
        for k in range(GOOD)
    ]
    images = [{"bytes": png((96, 64), k), "path": None} for k in range(GOOD)]
    _parquet(
        folder / concrete(e.files[0]),
        pa.table({"image": pa.array(images, IMAGE), "ground_truth": gt}),
    )


def coco_captions(e: RegistryEntry, folder: Path) -> None:
    """``annotations/captions_train2017.json`` + ``train2017/`` images; one caption of an image
    that was not downloaded (a skip)."""
    images = [
        {"id": k, "file_name": f"{k:012d}.jpg", "width": 64, "height": 48} for k in range(GOOD + 1)
    ]
    for k in range(GOOD):
        save_png(folder / f"train2017/{k:012d}.jpg", k=k)
    notes = [
        {"id": k, "image_id": k, "caption": f"A {WORDS[k % len(WORDS)]}."} for k in range(GOOD + 1)
    ]
    path = folder / concrete(e.files[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": notes}))


def refcoco(e: RegistryEntry, folder: Path) -> None:
    """jxu124/refcoco parquet: ``image_path`` under the COCO folder, pixel-xyxy ``bbox``."""
    paths = []
    for k in range(GOOD):
        save_png(folder / f"coco/train2014/COCO_train2014_{k:012d}.jpg", (100, 200), k)
        paths.append(f"coco/train2014/COCO_train2014_{k:012d}.jpg")
    _parquet(
        folder / concrete(e.files[0]),
        pa.table(
            {
                "ref_id": list(range(GOOD)),
                "image_path": paths,
                "bbox": [[10.0, 20.0, 60.0, 120.0]] * GOOD,
                "captions": [[f"the {WORDS[k % len(WORDS)]}"] for k in range(GOOD)],
                "split": ["train"] * GOOD,
            }
        ),
    )


def write_video(path: Path, frames: int = 8, size: tuple[int, int] = (32, 32)) -> None:
    """A real MPEG-4 clip (PyAV), so training decodes its frames."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for f in range(frames):
            rgb = np.full((size[1], size[0], 3), 30 * f % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def videochat2(e: RegistryEntry, folder: Path) -> None:
    """VideoChat2-IT JSON list: ``video`` + ``QA[{i, q, a}]`` with the clip under ``videos/``."""
    rows = []
    for k in range(GOOD):
        write_video(folder / f"videos/clips/c{k}.mp4")
        rows.append(
            {
                "video": f"clips/c{k}.mp4",
                "QA": [
                    {
                        "i": "Watch the video and answer.",
                        "q": "What moves?",
                        "a": f"A {WORDS[k % len(WORDS)]}.",
                    },
                    {"i": "", "q": "Where?", "a": "Left."},
                ],
            }
        )
    path = folder / concrete(e.files[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))


def activitynet_qa(e: RegistryEntry, folder: Path) -> None:
    """``train_q.json`` + ``train_a.json`` joined on ``question_id``; ``videos/v_<name>.mp4``;
    one question whose video is missing (a skip)."""
    qs, ans = [], []
    for k in range(GOOD + 1):
        if k < GOOD:
            write_video(folder / f"videos/v_vid{k}.mp4")
        qs.append(
            {
                "question": f"what is shown {k}",
                "question_id": f"v_vid{k}_0",
                "video_name": f"vid{k}",
            }
        )
        ans.append({"answer": WORDS[k % len(WORDS)], "question_id": f"v_vid{k}_0", "type": 0})
    (folder / "train_q.json").write_text(json.dumps(qs))
    (folder / "train_a.json").write_text(json.dumps(ans))


BUILDERS: dict[str, Callable[[RegistryEntry, Path], None]] = {
    "text": text,
    "synthdog": synthdog,
    "coco_captions": coco_captions,
    "refcoco": refcoco,
    "videochat2": videochat2,
    "activitynet_qa": activitynet_qa,
    "captions": captions,
    "pdf_ocr": pdf_ocr,
    "rendered_text": rendered_text,
    "obelics": obelics,
    "conversation": conversation,
    "table": table,
}


def write_registry_fixtures(
    data_root: Path, entries: tuple[RegistryEntry, ...] | None = None
) -> list[str]:
    """Write every entry's fixture under ``data_root``; the names written."""
    written = []
    for e in entries if entries is not None else builtin_entries():
        BUILDERS[e.kind](e, data_root / e.dir)
        written.append(e.name)
    return written
