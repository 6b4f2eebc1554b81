"""A formatted sample's pieces → token ids and the loss mask (MM1.5 §4: loss on assistant turns).

The formatter (:func:`mm15.data.pipeline.format_sample`) writes text, special tokens (BOS, EOS)
and images into a :class:`TokenStream`, each piece marked trained or not; :meth:`TokenStream.encode`
turns them into ids and a per-token mask.

**Text is tokenised as the chat template renders it.**  All text between two special tokens or
image blocks is one span, tokenised once as a whole, whatever the trained flags of its parts
(role prefix, content, ``turn_end``), because that is what a Jinja chat template
(:mod:`mm15.data.chat_template`) does: it renders one string and transformers' or vLLM's
tokenizer splits it only at special tokens.  Tokenising the role prefix apart from the content
would end the prefix at a token boundary that the template's rendering does not have: with a
BPE vocabulary ``"Assistant: A"`` is ``["Assistant", ":", " A"]``, not ``[..., ":", " ", "A"]``,
and a model served by another engine would see other ids than it was trained on.

**The loss mask comes from character offsets.**  The span remembers which of its characters
are trained; a token is trained when the characters it covers (its ``tokenizers`` offsets)
include at least one trained character.  So every trained character is inside a trained token,
and a token that straddles a boundary (``" A"``: the prefix's space and the answer's first
letter) is trained: the model must emit that token to begin its answer, and masking it would
leave the first word of every answer untrained.  A token covering only prefix, user or
``turn_end`` characters is never trained.  Where no token straddles (any byte-level vocabulary
without merges, prefixes ending in a pre-tokeniser boundary) the mask is exactly the per-piece
mask.  The assistant's end has no boundary to straddle: EOS is a special token, always alone.

A consequence for formats whose assistant prefix ends in a space that the vocabulary joins to
the next word (``"Assistant: "``, the default before the newline, with a GPT-style BPE): an answer is trained as
``[":", " A", ...]`` while a generation prompt, rendered by the same template here and in any
other engine, ends ``[":", " "]``.  The ids agree everywhere; a prefix ending at a pre-tokeniser
boundary (the default ``"Assistant:\\n"``) avoids the seam between training and generating;
:func:`prefix_merges` finds a prefix that does not, and ``mm15 data check`` reports it.

Sub-image indicators (Table 3) are tokenised on their own, as each image block is: the template
writes one image placeholder where mm15 writes the block, so the block's text never merges with
its neighbours on either side.  Image-token runs and indicators never carry loss.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from mm15.data.layout import ImagePlan, ImageRun, TextPiece
from mm15.data.schema import SampleError
from mm15.tokenizer import MM15Tokenizer

# First characters of answers probed for a prefix that merges into them.
_ANSWER_STARTS = ("A", "a", "1", "<", "(", "The")


def prefix_merges(tok: MM15Tokenizer, prefix: str) -> bool:
    """Whether ``tok`` joins the end of ``prefix`` to the start of a following answer, so that
    a generation prompt (which ends with ``prefix``) ends on a token training never saw there."""
    if not prefix:
        return False
    alone = tok.encode(prefix)
    return any(tok.encode(prefix + start)[: len(alone)] != alone for start in _ANSWER_STARTS)


@dataclass
class TextSpan:
    """Adjacent text, tokenised once.  Its strings are kept in a list and joined at encoding, so
    building a prompt of n messages costs O(n) (adding to one string each time cost O(n²): 15 s
    for 200k empty messages); ``trained`` holds the sorted, disjoint ``[start, end)`` character
    ranges that carry loss."""

    strings: list[str] = field(default_factory=list)
    trained: list[tuple[int, int]] = field(default_factory=list)
    length: int = 0

    def add(self, text: str, train: bool) -> None:
        start, self.length = self.length, self.length + len(text)
        self.strings.append(text)
        if not train:
            return
        if self.trained and self.trained[-1][1] == start:
            self.trained[-1] = (self.trained[-1][0], self.length)
        else:
            self.trained.append((start, self.length))

    def encode(self, tok: MM15Tokenizer) -> tuple[str, list[int], list[bool]]:
        """The span's text, its ids and which of them are trained (rule in the module
        docstring)."""
        text = "".join(self.strings)
        if not self.trained:
            ids = tok.encode(text)
            return text, ids, [False] * len(ids)
        if self.trained == [(0, self.length)]:
            ids = tok.encode(text)
            return text, ids, [True] * len(ids)
        enc = tok.tok.encode(text, add_special_tokens=False)
        starts = [s for s, _ in self.trained]
        mask = []
        for start, end in enc.offsets:
            end = max(end, start + 1)  # a zero-width token counts as its next character
            k = bisect.bisect_left(starts, end) - 1  # the last range starting before `end`
            mask.append(k >= 0 and self.trained[k][1] > start)
        return text, enc.ids, mask


class TokenStream:
    """Pieces in order: :class:`TextSpan` s, ``("token", id, train)`` for BOS / EOS,
    ``("indicator", text)`` and ``("run", ImageRun)`` for an image's block."""

    def __init__(self) -> None:
        self.pieces: list[TextSpan | tuple] = []

    def text(self, text: str, train: bool) -> None:
        """Text joins the span before it, whatever either's ``train``: the template renders it
        as one string."""
        if not text:
            return
        if not self.pieces or not isinstance(self.pieces[-1], TextSpan):
            self.pieces.append(TextSpan())
        self.pieces[-1].add(text, train)

    def token(self, token_id: int | None, train: bool) -> None:
        if token_id is not None:
            self.pieces.append(("token", token_id, train))

    def image(self, plan: ImagePlan) -> None:
        for seg in plan.segments:
            if isinstance(seg, TextPiece):
                self.pieces.append(("indicator", seg.text))
            else:
                self.pieces.append(("run", seg))

    def encode(self, tok: MM15Tokenizer, where: str) -> tuple[list[int], list[bool]]:
        """Token ids and, per id, whether it carries loss.  Raises ``SampleError`` when text
        holds the image token (images are media parts, never text)."""
        ids: list[int] = []
        mask: list[bool] = []
        image_id = tok.image_token_id
        for piece in self.pieces:
            if isinstance(piece, TextSpan):
                text, new, trained = piece.encode(tok)
            elif piece[0] == "run":
                run: ImageRun = piece[1]
                ids += [image_id] * run.num_tokens
                mask += [False] * run.num_tokens
                continue
            elif piece[0] == "token":
                ids.append(piece[1])
                mask.append(piece[2])
                continue
            else:
                text = piece[1]
                new = tok.encode(text)
                trained = [False] * len(new)
            if image_id in new:
                raise SampleError(
                    "malformed",
                    f"{where}: text {text[:60]!r} contains "
                    "the image token; images must be media parts",
                )
            ids += new
            mask += trained
        return ids, mask
