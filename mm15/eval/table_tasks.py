"""Table benchmarks (MM1.5 §4.1, Table 4, text-rich: WTQ, TabFact) as image benchmarks.

lmms-eval has no task for either.  The public image versions are the test files of DocOwl
1.5's **DocDownstream-1.0** (``mPLUG/DocDownstream-1.0``; the table images of the DUE
benchmark), which MM1.5's peers score on: ``test/WikiTableQuestions_test.jsonl`` and
``test/TabFact_test.jsonl``, one chat row per question::

    {"image": ["./imgs/DUE_Benchmark/WikiTableQuestions/pngs/….png"],
     "messages": [{"role": "user", "content": "<|image|>which …?"},
                  {"role": "assistant", "content": "Smith"}], …}

with image paths relative to the dataset root (the folder above ``test/``).  Metrics:
:mod:`mm15.eval.table_metrics`.
"""

from __future__ import annotations

from typing import Any

from mm15.data.schema import SampleError
from mm15.eval.table_metrics import tabfact_label
from mm15.eval.task_spec import SHORT, Columns, NestedRows, Row, TaskSpec

_IMAGE_TOKEN = "<|image|>"  # DocOwl's image placeholder inside the user text


def docowl_row(row: Row, where: str, k: int = 0) -> Row:
    """A DocDownstream chat row → ``{"question", "answer", "image"}`` (the user text without
    DocOwl's image token, the assistant text, the first image path)."""
    images, messages = row.get("image"), row.get("messages")
    image = images[0] if isinstance(images, list) and images else images
    if not isinstance(image, str) or not image:
        raise SampleError("missing", f"{where}: no image path in column 'image' ({images!r:.60})")
    ok = (
        isinstance(messages, list)
        and len(messages) >= 2
        and all(isinstance(m, dict) for m in messages[:2])
        and [m.get("role") for m in messages[:2]] == ["user", "assistant"]
    )
    if not ok:
        raise SampleError(
            "malformed", f"{where}: 'messages' is not a user turn then an assistant turn"
        )
    question, answer = (_text(m.get("content")) for m in messages[:2])
    return {
        "question": question.replace(_IMAGE_TOKEN, "").strip(),
        "answer": answer,
        "image": image,
    }


def _text(content: Any) -> str:
    return content.strip() if isinstance(content, str) else ""


def _tabfact_row(row: Row, where: str, k: int = 0) -> Row:
    """A DocDownstream TabFact row, its answer checked to be a verdict (``malformed`` if not)."""
    flat = docowl_row(row, where, k)
    if flat["answer"] and tabfact_label(flat["answer"]) is None:
        raise SampleError(
            "malformed", f"{where}: TabFact answer {flat['answer']!r:.40} is not true/false"
        )
    return flat


def table_specs() -> list[TaskSpec]:
    """WTQ (the official denotation accuracy) and TabFact (verdict accuracy)."""
    chat = ("image", "messages")
    return [
        TaskSpec(
            name="wtq",
            category="text_rich",
            metric="wtq",
            split="test",
            files="WikiTableQuestions_test*",
            nested=NestedRows(reads=chat, flatten=docowl_row, images_from="parent"),
            columns=Columns(answer="answer"),
            prompt=lambda r: r["question"] + SHORT,
        ),
        TaskSpec(
            name="tabfact",
            category="text_rich",
            metric="tabfact",
            split="test",
            files="TabFact_test*",
            nested=NestedRows(reads=chat, flatten=_tabfact_row, images_from="parent"),
            columns=Columns(answer="answer"),
            prompt=lambda r: r["question"],
            max_new_tokens=16,
        ),
    ]
