"""Where a demo model's grounding goes wrong: row and column of the predicted 3×3 cell.

    python dev/demo_ground_cells.py MODEL_DIR CORPUS_DIR
    python dev/demo_ground_cells.py --oracle      # what knowing the cell alone would score

Evaluates ``refer_ground/box``'s test items greedily and compares the grid cell holding each
predicted box's centre with the reference's (grid scenes are 3×3; chance is 1/3 for each).
Used for the grounding rows of docs/demo-log.md.
"""

import re
import sys

import torch

from mm15.demo.data.corpus import CorpusIndex
from mm15.eval.synthetic_suite import evaluate_synthetic
from mm15.services.checkpoint import load_checkpoint


def cell(box: list[int]) -> tuple[int, int]:
    """(row, column) of the box centre in a 3×3 grid of [0, 1000) coordinates."""
    return min(2, (box[1] + box[3]) * 3 // 2000), min(2, (box[0] + box[2]) * 3 // 2000)


def oracle(n: int = 2000) -> None:
    """Hit rate (IoU >= 0.5) of answering each test box with the mean box of its true cell (means
    over ``n`` training draws), and of the best constant box among those means."""
    import random

    import numpy as np

    from mm15.demo.data import chance as synchance
    from mm15.demo.data import tasks as syn

    def draws(split: str) -> list[tuple[int, list[float]]]:
        out = []
        for i in range(n):
            d = syn.TASKS["refer_ground/box"].build(random.Random(f"oracle/{split}/{i}"))
            x1, y1, x2, y2 = d.regions[0].box
            w, h = d.images[0].size
            out.append(
                (
                    cell([x1 * 1000 / w, y1 * 1000 / h, x2 * 1000 / w, y2 * 1000 / h]),
                    [x1 / w, y1 / h, x2 / w, y2 / h],
                )
            )
        return out

    train, test = draws("train"), draws("test")
    cells = sorted({c for c, _ in train})
    mean = {c: np.mean([b for cc, b in train if cc == c], axis=0) for c in cells}
    refs = np.array([b for _, b in test])
    hits = [synchance._iou_matrix(mean[c][None], np.array([b]))[0, 0] >= 0.5 for c, b in test]
    const = (synchance._iou_matrix(np.array([mean[c] for c in cells]), refs) >= 0.5).mean(1).max()
    print(f"mean box of the true cell: {np.mean(hits):.3f}; best constant box: {const:.3f}")


if sys.argv[1:] == ["--oracle"]:
    oracle()
    sys.exit()
torch.set_num_threads(1)
model, tok = load_checkpoint(sys.argv[1])
suite = evaluate_synthetic(
    model, tok, CorpusIndex.read(sys.argv[2]), tasks=["refer_ground/box"], max_new_tokens=24
)
rows = cols = n = 0
for item in suite.items:
    pred = [int(v) for v in re.findall(r"\d+", item["prediction"])]
    ref = [int(v) for v in re.findall(r"\d+", item["references"][0])]
    if len(pred) == 4:
        (pr, pc), (rr, rc) = cell(pred), cell(ref)
        rows, cols, n = rows + (pr == rr), cols + (pc == rc), n + 1
score = sum(i["score"] for i in suite.items) / len(suite.items)
print(
    f"Acc@0.5 {score:.2f}; {n} boxes parsed; row accuracy {rows / max(n, 1):.2f}, "
    f"column accuracy {cols / max(n, 1):.2f}"
)
