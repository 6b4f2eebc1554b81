"""docs/transformers.md's own commands run: its `mm15 export` line through the CLI's parsing, then
its Python blocks (load and generate, trust_remote_code, the PEFT wrap, a video) in one fresh process,
with the page's paths pointed at a tiny checkpoint (issue 22)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from mm15.cli import main
from tests.registry_fixtures import write_video

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "transformers.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_pages_export_and_python_blocks_run(tiny_ckpt_dir, tmp_path):
    (export,) = _blocks("bash")
    out = tmp_path / "hf-model"
    line = export.strip().replace("out/hf-model", str(out))
    line = line.replace("out/demo/model", str(tiny_ckpt_dir))
    argv = shlex.split(line)
    assert argv[0].endswith("mm15") and argv[1] == "export", line
    assert main(argv[1:]) == 0
    python = _blocks("python")
    assert len(python) == 4, "load, trust_remote_code, PEFT, video"
    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=10)
    script = "\n".join(python).replace("out/hf-model", str(out)).replace("clip.mp4", str(clip))
    script = script.replace("max_new_tokens=64", "max_new_tokens=4")  # a random tiny model
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
