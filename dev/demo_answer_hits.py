"""Does the demo's model pick the object the question names?  (docs/demo.md, seventh session)

    python dev/demo_answer_hits.py OUT      # OUT of `mm15 demo --out OUT`

refer_ground/box: each predicted box is classed by the drawn objects it overlaps at IoU ≥ 0.5
(found from the test image's pixels, one object per colour): the named one ("target"), another
("other"), or none.  ui/*: each predicted label is the named button's ("target"), another label
on the screen ("other") or one not on it ("absent"), from the sample's ``meta["labels"]``.
Answering about a random object of the scene gives "other" more often than "target".
"""

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from mm15.data.coord_parse import parse_regions
from mm15.data.coords import Box
from mm15.data.synthetic_corpus import CorpusIndex
from mm15.data.synthetic_images import COLOURS


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


out = Path(sys.argv[1])
corpus = CorpusIndex.read(out / "corpus")
items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
pred = {i["id"]: i["prediction"] for i in items}
for task in sorted({i["task"] for i in items}):
    if task != "refer_ground/box" and not task.startswith("ui/"):
        continue
    counts: Counter[str] = Counter()
    for s in corpus.load(task, "test"):
        p = pred.get(s.id)
        if p is None:
            continue
        if task.startswith("ui/"):
            labels = s.meta.get("labels")
            if labels is None:
                print(f"{task}: no meta['labels'] (a corpus written before they were recorded)")
                break
            counts["target" if p == s.answers[0] else "other" if p in labels else "absent"] += 1
            continue
        parsed = parse_regions(p, [s.media[0].size]).regions
        if not parsed or not isinstance(parsed[0].shape, Box):
            counts["unparsed"] += 1
            continue
        box = parsed[0].shape  # in pixels
        pb = (box.x1, box.y1, box.x2, box.y2)
        arr = np.asarray(Image.open(s.media[0].path).convert("RGB"))
        objects = []
        for rgb in COLOURS.values():
            ys, xs = np.nonzero((arr == np.array(rgb, np.uint8)).all(-1))
            if len(xs):
                objects.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        target = s.regions[s.meta["answer_region"]].box
        hit = iou(pb, target) >= 0.5
        counts[
            "target" if hit else "other" if any(iou(pb, o) >= 0.5 for o in objects) else "none"
        ] += 1
    print(f"{task:22s} {dict(counts)}")
