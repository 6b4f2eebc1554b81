"""mm15.data.token_stream: text between special tokens is tokenised whole (as a Jinja chat
template's rendering is), and the loss mask follows the characters (MM1.5 §4: loss on assistant
turns): every trained character lies in a trained token, and a trained token covers at least
one trained character (a token straddling a boundary is trained)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mm15.data.schema import SampleError
from mm15.data.token_stream import TokenStream
from mm15.tokenizer import byte_tokenizer, train_bpe_tokenizer

CORPUS = ["User: what is in the image? Assistant: A cat on a mat. 12 < 345 " * 3, "System: hi"]
BPE = train_bpe_tokenizer(CORPUS, vocab_size=400).with_image_token()
BYTE = byte_tokenizer()

pieces_st = st.lists(
    st.tuples(
        st.text(alphabet="Asitn: .\n\t1<é😀", min_size=0, max_size=8),
        st.booleans(),
    ),
    min_size=1,
    max_size=8,
)


def _encode(tok, pieces):
    stream = TokenStream()
    for text, train in pieces:
        stream.text(text, train)
    return stream.encode(tok, "test")


@settings(max_examples=200, deadline=None)
@given(pieces=pieces_st)
def test_a_span_is_tokenised_whole_and_its_mask_follows_the_characters(pieces):
    text = "".join(t for t, _ in pieces)
    trained_chars = [train for t, train in pieces for _ in t]
    for tok in (BPE, BYTE):
        ids, mask = _encode(tok, pieces)
        enc = tok.tok.encode(text, add_special_tokens=False)
        assert ids == enc.ids == tok.encode(text)
        for (start, end), trained in zip(enc.offsets, mask, strict=True):
            covered = trained_chars[start : max(end, start + 1)]
            assert trained == any(covered), (text, start, end)


def test_a_token_straddling_prefix_and_answer_is_trained():
    ids, mask = _encode(BPE, [("User: hi\nAssistant: ", False), ("A cat.", True)])
    assert ids == BPE.encode("User: hi\nAssistant: A cat.")
    trained = BPE.decode([i for i, t in zip(ids, mask, strict=True) if t])
    untrained = BPE.decode([i for i, t in zip(ids, mask, strict=True) if not t])
    assert (trained, untrained) == (" A cat.", "User: hi\nAssistant:")
    # the byte tokenizer has no merges: the mask is exactly the pieces'
    ids, mask = _encode(BYTE, [("Assistant: ", False), ("A cat.", True)])
    assert mask == [False] * len("Assistant: ") + [True] * len("A cat.")


def test_special_tokens_and_images_split_spans():
    stream = TokenStream()
    stream.text("Assistant: ", False)
    stream.token(BPE.eos_ids[0], True)
    stream.text("A", True)
    ids, mask = stream.encode(BPE, "test")
    assert ids == [*BPE.encode("Assistant: "), BPE.eos_ids[0], *BPE.encode("A")]
    assert mask == [False] * (len(ids) - 2) + [True, True]


def test_the_image_token_in_text_is_refused():
    with pytest.raises(SampleError, match="contains the image token"):
        _encode(BPE, [("look: <image>", True)])
