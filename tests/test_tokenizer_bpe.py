"""The demo's trained BPE tokenizer: how it splits numbers (the grounding language's coordinates)."""

from __future__ import annotations

import pytest

from mm15.tokenizer import train_bpe_tokenizer

TEXTS = ["a box <12,345,678,999> and 1234 things", " ".join(str(n) for n in range(1000))] * 20


def _pieces(tok, text):
    return [tok.decode([i]) for i in tok.encode(text)]


def test_three_digit_runs_are_one_token_each():
    tok = train_bpe_tokenizer(TEXTS, vocab_size=1400, max_digits=3)
    assert _pieces(tok, "<357,38,5,999>") == ["<", "357", ",", "38", ",", "5", ",", "999", ">"]
    assert _pieces(tok, "1234")[-2:] == ["123", "4"]  # Llama 3's rule: left-aligned runs of 3


def test_single_digit_mode_spells_every_number():
    tok = train_bpe_tokenizer(TEXTS, vocab_size=1400, max_digits=1)
    pieces = _pieces(tok, "<357,38> 12")
    assert pieces[:8] == ["<", "3", "5", "7", ",", "3", "8", ">"]
    assert "".join(pieces) == "<357,38> 12" and all(len(p.strip()) <= 1 for p in pieces)


@pytest.mark.parametrize("bad", [0, 4])
def test_max_digits_out_of_range_is_an_error(bad):
    with pytest.raises(ValueError, match="max_digits"):
        train_bpe_tokenizer(TEXTS, vocab_size=300, max_digits=bad)
