"""Packing: documents isolated (ids, positions, model), never cut, skips counted, image cap."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.config import FormatConfig
from mm15.data.config import PackingConfig
from mm15.data.layout import plan_image
from mm15.data.packing import Packer, collate, pack
from mm15.data.pipeline import IGNORE_INDEX, Example, format_sample
from mm15.data.sample_images import ImageRef, materialize_pixels
from mm15.data.schema import Media, Message, Part, Sample
from mm15.model.mm15 import MM15
from mm15.presets import tiny
from mm15.tokenizer import byte_tokenizer

CFG = tiny()
PAD = 0


def _ex(sid: int, n_tokens: int, n_images: int = 0) -> Example:
    """Token ids encode (example, position) so a cut or reorder is visible."""
    ids = [1000 * (sid + 1) + t for t in range(n_tokens)]
    plan = plan_image((10, 10), CFG.image, tokens_per_tile=1)
    refs = [ImageRef(str(sid), Media(), i, None, None, plan, True) for i in range(n_images)]
    labels = [IGNORE_INDEX if t % 3 == 0 else i for t, i in enumerate(ids)]
    return Example(ids, labels, refs, str(sid), "src", "general")


def _check_row(row, seq_len: int, examples: dict[str, Example]) -> None:
    assert len(row.input_ids) == len(row.labels) == len(row.position_ids) == seq_len
    assert len(row.document_ids) == seq_len
    start = 0
    for doc, sid in enumerate(row.sample_ids):
        ex = examples[sid]
        end = start + len(ex)
        assert row.input_ids[start:end] == ex.input_ids  # whole, in order
        assert row.labels[start:end] == ex.labels
        assert row.position_ids[start:end] == list(range(len(ex)))
        assert row.document_ids[start:end] == [doc] * len(ex)
        start = end
    assert row.document_ids[start:] == [-1] * (seq_len - start)
    assert row.input_ids[start:] == [PAD] * (seq_len - start)
    assert set(row.labels[start:]) <= {IGNORE_INDEX}
    assert row.num_tokens == start


def test_documents_are_isolated_in_ids_and_positions():
    exs = [_ex(0, 5, 1), _ex(1, 3), _ex(2, 4, 2), _ex(3, 6)]
    packer = Packer(12, None, PAD)
    rows = list(pack(exs, packer))
    assert [r.sample_ids for r in rows] == [["0", "1", "2"], ["3"]]
    assert rows[0].document_ids == [0] * 5 + [1] * 3 + [2] * 4  # exactly full: no padding
    assert rows[0].position_ids == [*range(5), *range(3), *range(4)]
    assert rows[0].image_documents == [0, 2, 2]
    for r in rows:
        _check_row(r, 12, {e.sample_id: e for e in exs})


def test_full_row_closes_on_add_and_flush_is_empty_after():
    packer = Packer(8, None, PAD)
    assert packer.add(_ex(0, 3)) == []
    rows = packer.add(_ex(1, 5))
    assert len(rows) == 1 and rows[0].sample_ids == ["0", "1"] and rows[0].num_tokens == 8
    assert packer.flush() == []


def test_too_long_and_too_many_images_are_skipped_and_counted():
    packer = Packer(10, 2, PAD)
    rows = list(pack([_ex(0, 4), _ex(1, 11), _ex(2, 3, 3), _ex(3, 10)], packer))
    assert [r.sample_ids for r in rows] == [["0"], ["3"]]  # 3 did not fit beside 0
    assert packer.stats.skipped == {"too_long": 2}
    assert [sid for sid, _ in packer.stats.skip_records] == ["1", "2"]
    assert "11 tokens > seq_len 10" in packer.stats.skip_records[0][1]
    assert packer.stats.examples == 2 and packer.stats.rows == 2
    assert packer.stats.tokens + packer.stats.padding == 20


def test_image_cap_closes_the_row():
    packer = Packer.from_config(PackingConfig(seq_len=100, max_images_per_sequence=3), pad_id=PAD)
    rows = list(pack([_ex(0, 4, 2), _ex(1, 4, 1), _ex(2, 4, 1), _ex(3, 4)], packer))
    assert [r.sample_ids for r in rows] == [["0", "1"], ["2", "3"]]
    assert [len(r.images) for r in rows] == [3, 1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 40), st.integers(0, 3)), max_size=30),
    st.integers(8, 32),
    st.one_of(st.none(), st.integers(0, 4)),
)
def test_every_example_lands_whole_in_order_or_is_skipped(specs, seq_len, cap):
    exs = [_ex(i, n, k) for i, (n, k) in enumerate(specs)]
    packer = Packer(seq_len, cap, PAD)
    rows = list(pack(exs, packer))
    again = list(pack(exs, Packer(seq_len, cap, PAD)))
    assert [r.input_ids for r in rows] == [r.input_ids for r in again]  # deterministic
    by_id = {e.sample_id: e for e in exs}
    for r in rows:
        _check_row(r, seq_len, by_id)
        assert cap is None or len(r.images) <= cap
    packed = [sid for r in rows for sid in r.sample_ids]
    fits = [e.sample_id for e in exs if len(e) <= seq_len and (cap is None or len(e.images) <= cap)]
    assert packed == fits
    assert packer.stats.skipped["too_long"] == len(exs) - len(fits)
    # Greedy: a row was closed only because the next example did not fit.
    for a, b in itertools.pairwise(rows):
        nxt = by_id[b.sample_ids[0]]
        room = seq_len - a.num_tokens
        assert len(nxt) > room or (cap is not None and len(a.images) + len(nxt.images) > cap)


def test_collate_stacks_rows_and_checks_tiles():
    rows = list(pack([_ex(0, 5, 1), _ex(1, 7, 2)], Packer(8, None, PAD)))
    px = [torch.full((1, 3, 4, 4), 1.0), torch.full((2, 3, 4, 4), 2.0)]
    batch = collate(rows, px)
    assert batch["input_ids_BT"].shape == batch["document_ids_BT"].shape == (2, 8)
    assert batch["input_ids_BT"].dtype == torch.long
    assert batch["pixels_NCHW"][:, 0, 0, 0].tolist() == [1.0, 2.0, 2.0]  # row order
    assert batch["labels_BT"][0, 5:].tolist() == [IGNORE_INDEX] * 3
    with pytest.raises(ValueError, match=r"row 1 .* has 2 tiles planned but 1 were given"):
        collate(rows, [px[0], px[0]])
    assert collate(list(pack([_ex(2, 3)], Packer(8, None, PAD))))["pixels_NCHW"] is None


def _png(w: int, h: int, seed: int) -> bytes:
    buf = io.BytesIO()
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def test_packed_row_gives_each_document_the_logits_it_has_alone():
    tok = byte_tokenizer()
    cfg = tiny(vocab_size=len(tok))
    cfg.image_token_id = tok.image_token_id
    samples = [
        Sample(
            id="a",
            source="t",
            category="general",
            stage="sft",
            media=[Media(bytes=_png(200, 90, 0))],
            messages=[
                Message("user", [Part.m(0), Part.t("what?")]),
                Message("assistant", [Part.t("red")]),
            ],
        ),
        Sample(
            id="b",
            source="t",
            category="text",
            stage="pretrain",
            messages=[Message("document", [Part.t("plain text only")])],
        ),
        Sample(
            id="c",
            source="t",
            category="caption",
            stage="pretrain",
            media=[Media(bytes=_png(40, 60, 1))],
            messages=[Message("document", [Part.m(0), Part.t("a caption")])],
        ),
    ]
    exs = [format_sample(s, tokenizer=tok, model_cfg=cfg, fmt=FormatConfig()) for s in samples]
    seq_len = sum(len(e) for e in exs) + 5
    (row,) = list(pack(exs, Packer(seq_len, 16, tok.pad_id)))
    batch = collate([row], [materialize_pixels(row.images, cfg)])
    torch.manual_seed(0)
    model = MM15(cfg).eval()
    model.init_weights()
    with torch.no_grad():
        packed = model(
            batch["input_ids_BT"],
            pixels_NCHW=batch["pixels_NCHW"],
            position_ids_BT=batch["position_ids_BT"],
            document_ids_BT=batch["document_ids_BT"],
        ).logits[0]
        start = 0
        for ex in exs:
            px = materialize_pixels(ex, cfg) if ex.images else None
            alone = model(torch.tensor([ex.input_ids]), pixels_NCHW=px).logits[0]
            assert (packed[start : start + len(ex)] - alone).abs().max() < 1e-4
            start += len(ex)
