"""Helpers for the judged tasks' tests: a stub OpenAI-compatible endpoint with fixed replies
(and a grade every judged task reads), and the judged benchmarks' lmms-eval Parquet layouts
with a few rows each."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mm15.eval import judge_prompts as jp


def png(colour=(200, 30, 30), size=(40, 30)) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


class StubJudge:
    """An OpenAI-compatible ``/v1/chat/completions`` on a free port of 127.0.0.1 whose reply is
    ``answer(messages)``: a string, or an int HTTP status to fail with (``retry-after-ms: 1``,
    so the client's retries do not wait).  ``calls`` counts the requests received."""

    def __init__(self, answer: Callable[[list[dict]], str | int]) -> None:
        self.answer, self.calls, self.requests = answer, 0, []
        lock, stub = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    stub.calls += 1
                    stub.requests.append(body)
                reply = stub.answer(body["messages"])
                if isinstance(reply, int):
                    self._send(reply, {"error": {"message": "stub failure", "type": "server"}})
                    return
                self._send(
                    200,
                    {
                        "id": "stub",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply},
                                "finish_reason": "stop",
                            }
                        ],
                    },
                )

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "1")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubJudge:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def readable_grade(messages: list[dict]) -> str:
    """A grade every judged task reads, in its grader's format: MM-Vet's correctness, the
    reviewer's two scores (LLaVA-W, Ferret-Bench), MathVista's extracted answer, LLaVA-Hound's
    "Score:", and the dict of ActivityNet-QA and VCGBench ('pred' and 'score')."""
    text = messages[-1]["content"]
    if text.startswith("Compare the ground truth"):
        return "0.5"
    if messages[0]["content"] == jp.REVIEWER_SYSTEM:
        return "7 8"
    if text.endswith("Extracted answer: "):
        return "14"
    if text.startswith("Given the following inputs:"):
        return "Explanation: close.\nScore: 4"
    return "{'pred': 'yes', 'score': 4}"


def _write(root: Path, task: str, split: str, rows: list[dict]) -> None:
    (root / task / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / task / f"data/{split}-00000-of-00001.parquet")


def write_benchmarks(root: Path) -> Path:
    """mmvet, llava_bench, mathvista and ferret_bench under ``root`` as their HF snapshots
    hold them (lmms-lab/MMVet, lmms-lab/llava-bench-in-the-wild, AI4Math/MathVista,
    lmms-lab/Ferret-Bench): ``ROOT/<task>/data/<split>-00000-of-00001.parquet``."""
    _write(
        root,
        "mmvet",
        "test",
        [
            {
                "question_id": f"v1_{i}",
                "image": png((30 * i, 90, 90)),
                "question": q,
                "answer": a,
                "image_source": "x",
                "capability": cap,
            }
            for i, (q, a, cap) in enumerate(
                [
                    ("What is x?", "-1<AND>-5", "ocr,math"),
                    ("What colour is it?", "red<OR>crimson", "rec"),
                    ("Explain the joke.", "It is a pun.", "rec,know,gen"),
                ]
            )
        ],
    )
    _write(
        root,
        "llava_bench",
        "train",
        [
            {
                "question_id": i,
                "question": f"Describe picture {i}.",
                "image": png((10, 20 * i, 30)),
                "caption": f"A red square number {i}.",
                "gpt_answer": f"It is red square {i}.",
                "category": cat,
                "image_id": f"{i:03d}",
            }
            for i, cat in enumerate(["conv", "detail", "complex"])
        ],
    )
    choices = ["3/11", "8/11", "6/11", "3/5"]
    _write(
        root,
        "mathvista",
        "testmini",
        [
            {
                "pid": "1",
                "question": "Which number is missing?",
                "image": "images/1.jpg",
                "decoded_image": png((90, 90, 10)),
                "choices": None,
                "unit": None,
                "precision": None,
                "answer": "14",
                "question_type": "free_form",
                "answer_type": "integer",
                "query": "Hint: Please answer the question requiring an integer answer and "
                "provide the final value, e.g., 1, 2, 3, at the end.\nQuestion: Which number "
                "is missing?",
            },
            {
                "pid": "2",
                "question": "What fraction of the shape is blue?",
                "image": "images/2.jpg",
                "decoded_image": png((10, 10, 200)),
                "choices": choices,
                "unit": None,
                "precision": None,
                "answer": "8/11",
                "question_type": "multi_choice",
                "answer_type": "text",
                "query": "Hint: Please answer the question and provide the correct option "
                "letter, e.g., A, B, C, D, at the end.\nQuestion: What fraction of the shape "
                "is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5",
            },
        ],
    )
    _write(
        root,
        "ferret_bench",
        "test",
        [
            {
                "question_id": i,
                "question": q,
                "image": png((50, 50, 50 * i)),
                "image_name": f"{i:012d}.jpg",
                "category": cat,
                "context": "A man rides a bike.\nman: [0.100, 0.200, 0.300, 0.400]",
                "gpt_answer": "The object [0.850, 0.523, 0.898, 0.583] is a bell.",
            }
            for i, (q, cat) in enumerate(
                [
                    ("What is the object [0.850, 0.523, 0.898, 0.583]?", "refer_desc"),
                    ("Why is the man [0.100, 0.200, 0.300, 0.400] here?", "refer_reason"),
                    ("Where is the bike?", "ground_conv"),
                ]
            )
        ],
    )
    return root
