"""Does the demo's model pick the object the question names?  (docs/demo-log.md, seventh session)

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

from mm15.data.coords import Box
from mm15.demo.data.corpus import CorpusIndex
from mm15.demo.data.images import COLOURS
from mm15.eval.metrics import box_iou50, first_region


def drawn_boxes(path: str) -> list[Box]:
    """The box of each colour's pixels (one object per colour in these scenes)."""
    arr = np.asarray(Image.open(path).convert("RGB"))
    out = []
    for rgb in COLOURS.values():
        ys, xs = np.nonzero((arr == np.array(rgb, np.uint8)).all(-1))
        if len(xs):
            out.append(Box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    return out


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
        size = s.media[0].size
        if not isinstance(first_region(p, size), Box):
            counts["unparsed"] += 1
        elif box_iou50(p, Box(*s.regions[s.meta["answer_region"]].box), size):
            counts["target"] += 1
        elif any(box_iou50(p, b, size) for b in drawn_boxes(s.media[0].path)):
            counts["other"] += 1
        else:
            counts["none"] += 1
    print(f"{task:22s} {dict(counts)}")
