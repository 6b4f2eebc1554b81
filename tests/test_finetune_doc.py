"""docs/finetune.md, run as written: its bash block, in order, on tiny stand-ins in the layouts
the page names (a CLIP encoder and a Llama decoder saved by transformers, LLaVA-format photos,
a POPE parquet), with ``--preset 1b`` → ``--preset tiny``; the page cannot go stale."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

DOC = Path(__file__).resolve().parents[1] / "docs" / "finetune.md"
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
THINGS = ["a red square", "a blue circle", "a green square", "a blue square", "a red circle"]


def doc_script() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "docs/finetune.md has one bash block, run whole"
    script = blocks[0]
    assert script.count("--preset 1b") == 1
    return script.replace("--preset 1b", "--preset tiny")


def _jpeg(k: int) -> bytes:
    from io import BytesIO

    im = Image.new("RGB", (96, 64), "white")
    colour = ("red", "blue", "green")[k % 3]
    im.paste(colour, (16, 8, 80, 56))
    buf = BytesIO()
    im.save(buf, format="JPEG")
    return buf.getvalue()


def write_user_data(data: Path) -> None:
    photos = data / "my_photos"
    (photos / "images").mkdir(parents=True)
    rows = []
    for k in range(8):
        (photos / "images" / f"{k}.jpg").write_bytes(_jpeg(k))
        rows.append(
            {
                "id": str(k),
                "image": f"{k}.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is in the picture?"},
                    {"from": "gpt", "value": f"There is {THINGS[k % len(THINGS)]}."},
                ],
            }
        )
    (photos / "train.json").write_text(json.dumps(rows))
    pope = data / "pope" / "data" / "test-00000-of-00001.parquet"
    pope.parent.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "id": ["0", "1", "2", "3"],
                "question_id": ["1", "2", "3", "4"],
                "question": ["Is there a square in the image?"] * 4,
                "answer": ["yes", "no", "yes", "no"],
                "image_source": ["x"] * 4,
                "category": ["random", "random", "popular", "adversarial"],
                "image": pa.array([{"bytes": _jpeg(k), "path": None} for k in range(4)], IMAGE),
            }
        ),
        pope,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_command_of_the_finetune_page_runs(hf_clip_dir, hf_llama_dir, tmp_path):
    models, data, work = tmp_path / "models", tmp_path / "data", tmp_path / "work"
    shutil.copytree(hf_clip_dir, models / "clip")
    shutil.copytree(hf_llama_dir, models / "llm")
    write_user_data(data)
    work.mkdir()
    bindir = str(Path(sys.executable).parent)  # the venv's mm15 and python
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
        "MODELS": str(models),
        "DATA": str(data),
        "PORT": str(_free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "log.txt"
    with log.open("w") as out:  # a file, not a pipe: a stray server cannot hold it open
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", doc_script()],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert (work / "ckpt/base/config.json").exists()
    check = json.loads((work / "runs/my_photos-check/data_check.json").read_text())
    (dataset,) = check["stages"][0]["datasets"]
    assert dataset["name"] == "my_photos" and dataset["samples"] == 8 and not dataset["skipped"]
    assert (work / "runs/my_photos-check/contact_sheet.png").exists()
    audit = json.loads((work / "runs/my_photos/audit_sft.json").read_text())
    assert audit["mixture"]["sources"]["my_photos"]["trained"] > 0
    assert (work / "runs/my_photos/final/config.json").exists()
    summary = json.loads((work / "runs/my_photos-eval/summary.json").read_text())
    assert "pope" in json.dumps(summary)
    assert "epoch(s) =" in text  # step 4 turned one epoch into steps
    assert "reply: " in text  # step 7: the served model answered the official client
