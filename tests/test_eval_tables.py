"""WTQ and TabFact (DocDownstream-1.0 layout) and LVIS-Ref box / point (Ferret's lvis_eval.jsonl):
the official normalisation and answer extraction by hand, the readers on fixtures in the real
layouts (bad rows as error items), the region written as training writes it, and `mm15 eval`
end to end through the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mm15.cli.eval import main
from mm15.data.coords import Box, Point, format_box, format_point
from mm15.data.pipeline import format_sample
from mm15.eval.benchmarks import ferret_class_names, lvis_ref_match
from mm15.eval.readers import read_items
from mm15.eval.table_metrics import (
    tabfact_accuracy,
    tabfact_label,
    wtq_accuracy,
    wtq_normalize,
    wtq_value,
)
from mm15.eval.tasks import TASKS, score_item
from mm15.presets import tiny
from mm15.tokenizer import byte_tokenizer


def png(colour=(200, 0, 0), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------
# WTQ: the official evaluator's normalisation and denotation check


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Ångström", "angstrom"),  # diacritics dropped (NFKD, combining marks removed)
        ("Smith [1]", "smith"),  # trailing citation
        ("Smith†", "smith"),  # trailing footnote mark
        ("Abbey Road (album)", "abbey road"),  # trailing details in parentheses
        ("(album)", "(album)"),  # ... but not when they are the whole answer
        ('"Yes"', "yes"),  # outermost quotes
        ("“Hey Jude”.", '"hey jude"'),  # curly quotes unified; the final "." goes after the loop
        ("1990–91", "1990-91"),  # en dash → hyphen
        ("  New   York. ", "new york"),  # whitespace collapsed, final "." dropped
        ('"Help" [2] (song)', "help"),  # rules repeat until nothing changes
    ],
)
def test_wtq_normalize(raw, norm):
    assert wtq_normalize(raw) == norm


def test_wtq_values_and_matching():
    assert (wtq_value("3").kind, wtq_value("3").key) == ("number", 3)
    assert wtq_value("3.0").key == 3 and wtq_value("2.5").key == 2.5
    assert wtq_value("1,000").kind == "string"  # the evaluator's float() does not read commas
    assert wtq_value("1_000").kind == "string"  # nor Python 3's underscores
    assert (wtq_value("2004-xx-xx").kind, wtq_value("2004-xx-xx").key) == ("number", 2004)
    assert wtq_value("2004-05-xx").key == (2004, 5, -1)
    assert wtq_value("2004-13-01").kind == "string"  # month out of range: not a date
    assert wtq_value("nan").kind == "string"
    # numbers: equal amounts match whatever the text; strings: normalised text only
    assert wtq_accuracy("3.0", ["3"]) == 1.0
    assert wtq_accuracy("3.0000001", ["3"]) == 1.0  # within 1e-6
    assert wtq_accuracy("3.01", ["3"]) == 0.0
    assert wtq_accuracy("2004", ["2004-xx-xx"]) == 1.0
    assert wtq_accuracy("1000", ["1,000"]) == 0.0  # "1,000" is a string, "1000" a number
    assert wtq_accuracy("1,000", ["1,000"]) == 1.0
    assert wtq_accuracy("The Beatles.", ["the beatles"]) == 1.0
    assert wtq_accuracy("Beatles", ["the beatles"]) == 0.0  # no article stripping in WTQ
    assert wtq_accuracy("Abbey Road (album)", ["Abbey Road"]) == 1.0


def test_wtq_lists():
    assert wtq_accuracy("Paris|London", ["London|Paris"]) == 1.0  # order free
    assert wtq_accuracy("Paris | London", ["London", "Paris"]) == 1.0  # a list column
    assert wtq_accuracy("Paris", ["London|Paris"]) == 0.0  # size differs
    assert wtq_accuracy("Paris|London|Rome", ["London|Paris"]) == 0.0
    assert wtq_accuracy("Paris|paris", ["Paris"]) == 1.0  # equal values count once
    assert wtq_accuracy("3|3.0", ["3"]) == 1.0  # equal amounts too
    assert wtq_accuracy("", ["x"]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        wtq_accuracy("x", [])


# ---------------------------------------------------------------------------------------------
# TabFact and LVIS-Ref answer extraction


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("true", "true"),
        ("True.", "true"),
        ("Yes, the table says so", "true"),
        ("entailed", "true"),
        ("1", "true"),
        ("FALSE", "false"),
        ("false, because 3 > 2", "false"),
        ("No.", "false"),
        ("not entailed", "false"),
        ("refuted", "false"),
        ("0", "false"),
        ("The statement is true", None),  # the verdict must come first
        ("", None),
        ("maybe", None),
    ],
)
def test_tabfact_label(text, label):
    assert tabfact_label(text) == label


def test_tabfact_accuracy():
    assert tabfact_accuracy("True.", "true") == 1.0
    assert tabfact_accuracy("yes", "1") == 1.0
    assert tabfact_accuracy("false", "true") == 0.0
    assert tabfact_accuracy("unsure", "false") == 0.0
    with pytest.raises(ValueError, match="not true/false"):
        tabfact_accuracy("true", "perhaps")


def test_lvis_ref_match_follows_ferret():
    assert ferret_class_names("baseball_bat", ["bat_(sports)", "club"]) == [
        "baseball bat",
        "bat",
        "sports",
        "club",
    ]
    assert lvis_ref_match("It is a baseball bat.", "baseball_bat", []) == 1.0
    assert lvis_ref_match("a club", "baseball_bat", ["club"]) == 1.0
    assert lvis_ref_match("sports gear", "baseball_bat", ["bat_(sports)"]) == 1.0
    # negated phrases are dropped up to the next "," or "."
    assert lvis_ref_match("It is not a dog, it is a cat.", "dog", []) == 0.0
    assert lvis_ref_match("It is not a cat, it is a dog.", "dog", []) == 1.0
    assert lvis_ref_match("Dog", "dog", []) == 0.0  # case-sensitive, as Ferret
    assert lvis_ref_match("a dog or a cat", "dog", []) == 1.0  # naming both counts, as Ferret
    # Ferret's second pattern also drops words starting with "no" up to "," or "."
    assert lvis_ref_match("A notebook, or so.", "notebook", []) == 0.0


# ---------------------------------------------------------------------------------------------
# Readers on the real layouts


def docdownstream(root: Path) -> Path:
    """DocDownstream-1.0: test/<Dataset>_test.jsonl, images under imgs/ at the root."""
    img = root / "imgs" / "DUE_Benchmark" / "WikiTableQuestions" / "pngs"
    img.mkdir(parents=True)
    (img / "t0.png").write_bytes(png())

    def chat(q, a, image="./imgs/DUE_Benchmark/WikiTableQuestions/pngs/t0.png"):
        return {
            "image": [image],
            "messages": [
                {"role": "user", "content": f"<|image|>{q}"},
                {"role": "assistant", "content": a},
            ],
            "task_name": "qa_sft",
        }

    write_jsonl(
        root / "test" / "WikiTableQuestions_test.jsonl",
        [
            chat("which team won?", "Leeds"),
            chat("who scored?", "A|B"),
            chat("how many?", "3", image="./imgs/nope.png"),
            {"image": ["x.png"], "messages": [{"role": "assistant", "content": "x"}]},
        ],
    )
    write_jsonl(
        root / "test" / "TabFact_test.jsonl",
        [chat("Is it true that Leeds won? Answer true or false.", "true"), chat("q", "maybe")],
    )
    write_jsonl(root / "test" / "DocVQA_test.jsonl", [chat("other benchmark", "x")])
    write_jsonl(root / "train.jsonl", [chat("training", "x")])
    return root


def texts(item) -> str:
    return "".join(p.text for p in item.sample.messages[0].content if p.type == "text")


def test_docdownstream_readers(tmp_path):
    root = docdownstream(tmp_path)
    res = read_items(TASKS["wtq"], root)
    assert [p.name for p in res.files] == ["WikiTableQuestions_test.jsonl"]
    assert [i.error.split(":")[0] if i.error else None for i in res.items] == [
        None,
        None,
        "missing",
        "malformed",
    ]
    first = res.items[0]
    assert texts(first) == "which team won?\nAnswer the question using a single word or phrase."
    assert first.references == ["Leeds"] and first.sizes == [(40, 30)]
    assert res.items[1].references == ["A|B"]
    assert "nope.png" in res.items[2].error
    assert "user turn then an assistant turn" in res.items[3].error
    assert score_item(TASKS["wtq"], res.items[1], "B | A") == 1.0
    tab = read_items(TASKS["tabfact"], root).items
    assert texts(tab[0]) == "Is it true that Leeds won? Answer true or false."
    assert tab[0].references == ["true"] and score_item(TASKS["tabfact"], tab[0], "True") == 1.0
    assert tab[1].error.startswith("malformed") and "not true/false" in tab[1].error
    (root / "test" / "TabFact_test.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="no file named 'TabFact_test\\*'"):
        read_items(TASKS["tabfact"], root)


def lvis_root(root: Path) -> Path:
    """Ferret's lvis_eval.jsonl with COCO val2017 images beside it."""
    (root / "val2017").mkdir(parents=True)
    (root / "val2017" / "000000000139.jpg").write_bytes(png(size=(200, 100)))
    obj = {
        "id": 7,
        "image_path": "coco/val2017/000000000139.jpg",
        "width": 200,
        "height": 100,
        "name": "baseball_bat",
        "synonyms": ["bat_(sports)"],
        "neg_class": "tennis_racket",
        "bbox_norm": [0.25, 0.1, 0.75, 0.6],
        "bbox": [50, 10, 100, 50],
        "sample_point": [120, 40],
    }
    rows = [
        obj,
        {**obj, "id": 8},
        {**obj, "id": 9, "bbox_norm": [0.5, 0.5, 1.5, 0.9], "sample_point": [500, 40]},
        {**obj, "id": 10, "synonyms": "bat"},
        {**obj, "id": 11, "image_path": "coco/val2017/gone.jpg"},
    ]
    write_jsonl(root / "lvis_eval.jsonl", rows)
    return root


@pytest.mark.parametrize("region", ["box", "point"])
def test_lvis_ref_reader_writes_the_region_as_training(tmp_path, region):
    items = read_items(TASKS[f"lvis_ref_{region}"], lvis_root(tmp_path)).items
    assert [i.id for i in items] == ["7", "8", "9", "10", "11"]
    assert [i.error.split(":")[0] if i.error else None for i in items] == [
        None,
        None,
        "malformed",  # the region leaves the image
        "malformed",  # synonyms not a list
        "missing",
    ]
    ok = items[0]
    assert ok.references == ["baseball_bat", "bat_(sports)"]
    assert ok.meta == {"neg_class": "tennis_racket"}
    (reg,) = ok.sample.regions
    if region == "box":
        assert reg.box == pytest.approx((50, 10, 150, 60)) and reg.point is None
        tag = format_box(Box(50, 10, 150, 60), (200, 100))
    else:
        assert reg.point == pytest.approx((120, 40)) and reg.box is None
        tag = format_point(Point(120, 40), (200, 100))
    # the chat template renders it exactly as in training (coordinates on the original image)
    tok = byte_tokenizer()
    cfg = tiny(vocab_size=len(tok))
    cfg.image_token_id = tok.image_token_id
    ids = format_sample(ok.sample, tokenizer=tok, model_cfg=cfg, for_generation=True).input_ids
    text = tok.decode([i for i in ids if i != tok.image_token_id])
    assert f"Is the object {tag} of the image a baseball bat or a tennis racket?" in text
    # Ferret alternates the order of the two classes
    assert "a tennis racket or a baseball bat?" in texts(items[1])
    assert score_item(TASKS[f"lvis_ref_{region}"], ok, "It is a baseball bat.") == 1.0
    assert score_item(TASKS[f"lvis_ref_{region}"], ok, "a tennis racket") == 0.0


# ---------------------------------------------------------------------------------------------
# `mm15 eval` end to end


def test_cli_eval_tables_and_lvis(tiny_ckpt_dir, tmp_path, capsys):
    root = tmp_path / "bench"
    docdownstream(root / "DocDownstream-1.0")
    lvis_root(root / "lvis")
    out = tmp_path / "out"
    argv = ["--model", str(tiny_ckpt_dir), "--out", str(out), "--device", "cpu"]
    argv += ["--task", "wtq,tabfact", "--task", "lvis_ref_box,lvis_ref_point"]
    argv += ["--data", str(root / "DocDownstream-1.0"), "--data", str(root / "DocDownstream-1.0")]
    argv += ["--data", str(root / "lvis"), "--data", str(root / "lvis")]
    assert main([*argv, "--max-new-tokens", "4", "--batch-size", "2"]) == 0
    printed = capsys.readouterr()
    assert "| wtq | text_rich | WTQ accuracy |" in printed.out
    assert "| lvis_ref_point | refer_ground | accuracy (Ferret LVIS) |" in printed.out
    summary = json.loads((out / "summary.json").read_text())
    bench = summary["benchmarks"]
    assert [bench[t]["n"] for t in ("wtq", "tabfact", "lvis_ref_box", "lvis_ref_point")] == [
        4,
        2,
        5,
        5,
    ]
    assert bench["wtq"]["errors"] == {"malformed": 1, "missing": 1}
    assert bench["lvis_ref_box"]["errors"] == {"malformed": 2, "missing": 1}
    rows = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    for task in bench:  # the benchmark score is the item mean, errors in the denominator
        scores = [r["score"] for r in rows if r["task"] == task]
        assert bench[task]["score"] == pytest.approx(sum(scores) / len(scores))
    assert set(summary["categories"]) == {"text_rich", "refer_ground"}
