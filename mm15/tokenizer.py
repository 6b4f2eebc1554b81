"""Tokenizer: a Hugging Face ``tokenizers`` model plus the few facts mm15 needs about it.

An mm15 checkpoint directory holds ``tokenizer.json`` (the fast-tokenizer file every HF
Llama/Qwen2 release ships) and ``mm15_tokenizer.json`` (image token, BOS/EOS).  The image
placeholder ``<image>`` is a special token: it never merges with neighbouring text and is never
produced by encoding ordinary text that happens to spell it unless it was meant as one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from mm15.errors import read_json_object

META_FILE = "mm15_tokenizer.json"


@dataclass
class TokenizerMeta:
    image_token: str = "<image>"
    bos_token: str | None = None
    eos_tokens: list[str] = field(default_factory=list)
    pad_token: str | None = None


class MM15Tokenizer:
    def __init__(self, tok: Tokenizer, meta: TokenizerMeta):
        self.tok = tok
        self.meta = meta
        # The image token may be absent from a decoder's own tokenizer: with_image_token adds it.
        missing = [
            t
            for t in [meta.bos_token, meta.pad_token, *meta.eos_tokens]
            if t is not None and tok.token_to_id(t) is None
        ]
        if missing:
            raise ValueError(f"tokenizer has no ids for special tokens {missing}")

    # ---- ids ----------------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        return self._id(self.meta.image_token)

    @property
    def bos_id(self) -> int | None:
        return None if self.meta.bos_token is None else self._id(self.meta.bos_token)

    @property
    def eos_ids(self) -> list[int]:
        return [self._id(t) for t in self.meta.eos_tokens]

    @property
    def pad_id(self) -> int:
        if self.meta.pad_token is not None:
            return self._id(self.meta.pad_token)
        return self.eos_ids[0] if self.meta.eos_tokens else 0

    def __len__(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def _id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    # ---- text ---------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no BOS/EOS added (prompt builders add those explicitly)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], *, skip_special: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    # ---- files --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(directory / "tokenizer.json"))
        (directory / META_FILE).write_text(json.dumps(asdict(self.meta), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> MM15Tokenizer:
        """Load an mm15 tokenizer, or a Hugging Face one (tokenizer.json + its configs).

        A file that is not what it should be is a ValueError naming it."""
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(
                f"{directory}: no tokenizer.json (a fast tokenizer is required)"
            )
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for any unreadable file
            raise ValueError(f"{path}: not a readable tokenizers file: {e}") from None
        meta_path = directory / META_FILE
        meta = _read_meta(meta_path) if meta_path.exists() else _meta_from_hf(directory, tok)
        try:
            return cls(tok, meta)
        except ValueError as e:
            where = meta_path if meta_path.exists() else directory
            raise ValueError(f"{where}: {e}") from None

    def with_image_token(self, image_token: str = "<image>") -> MM15Tokenizer:
        """This tokenizer with ``image_token`` added as a special token (if it is missing)."""
        if self.tok.token_to_id(image_token) is None:
            self.tok.add_special_tokens([AddedToken(image_token, special=True, normalized=False)])
        self.meta.image_token = image_token
        return self


def _read_meta(path: Path) -> TokenizerMeta:
    """``mm15_tokenizer.json``: every field of :class:`TokenizerMeta`, of the right type."""
    data = read_json_object(path)
    known = {f.name for f in fields(TokenizerMeta)}
    if unknown := sorted(set(data) - known):
        raise ValueError(f"{path}: unknown keys {unknown} (known: {sorted(known)})")
    for key in [k for k in ("bos_token", "pad_token", "image_token") if k in data]:
        value = data[key]
        if not (isinstance(value, str) or (value is None and key != "image_token")):
            raise ValueError(f"{path}: {key} must be a string, got {value!r}")
    eos = data.get("eos_tokens", [])
    if not isinstance(eos, list) or not all(isinstance(t, str) for t in eos):
        raise ValueError(f"{path}: eos_tokens must be a list of strings, got {eos!r}")
    return TokenizerMeta(**data)


def _meta_from_hf(directory: Path, tok: Tokenizer) -> TokenizerMeta:
    """BOS/EOS from tokenizer_config.json and generation_config.json, as HF releases ship them."""

    def read(name: str) -> dict:
        p = directory / name
        return read_json_object(p) if p.exists() else {}

    tcfg, gcfg = read("tokenizer_config.json"), read("generation_config.json")

    def token_str(value: object) -> str | None:
        if isinstance(value, dict):  # older tokenizer_config.json: {"content": "<s>", ...}
            value = value.get("content")
        return value if isinstance(value, str) else None

    eos = [t for t in [token_str(tcfg.get("eos_token"))] if t]
    gen_eos = gcfg.get("eos_token_id")
    for i in [gen_eos] if isinstance(gen_eos, int) else (gen_eos or []):
        t = tok.id_to_token(i)
        if t is not None and t not in eos:
            eos.append(t)
    bos = token_str(tcfg.get("bos_token"))
    pad = token_str(tcfg.get("pad_token"))
    return TokenizerMeta(bos_token=bos, eos_tokens=eos, pad_token=pad)


def byte_tokenizer(
    special: tuple[str, ...] = ("<|pad|>", "<|bos|>", "<|eos|>", "<image>"),
) -> MM15Tokenizer:
    """A byte-level tokenizer (256 byte tokens + specials) that needs no training data.

    Used by the tiny presets and tests; real models take the tokenizer of their decoder.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    meta = TokenizerMeta(
        bos_token="<|bos|>" if "<|bos|>" in special else None,
        eos_tokens=[t for t in ("<|eos|>",) if t in special],
        pad_token="<|pad|>" if "<|pad|>" in special else None,
    )
    return MM15Tokenizer(tok, meta)


def train_bpe_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int,
    special: tuple[str, ...] = ("<|pad|>", "<|bos|>", "<|eos|>", "<image>"),
    max_digits: int = 3,
) -> MM15Tokenizer:
    """A byte-level BPE tokenizer trained on ``texts`` (the demo's own corpus).

    Byte-level, so any text encodes.  Numbers are pre-tokenised as runs of at most
    ``max_digits`` digits: 3 (Llama 3's rule) makes each coordinate of the grounding language
    (0–999) one token once learnt; 1 (Llama 2's rule) spells every number digit by digit, so a
    coordinate's leading digit alone places it within a tenth of the image.
    """
    if not 1 <= max_digits <= 3:
        raise ValueError(f"max_digits must be 1, 2 or 3, got {max_digits}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(rf"\d{{1,{max_digits}}}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    meta = TokenizerMeta(
        bos_token="<|bos|>" if "<|bos|>" in special else None,
        eos_tokens=[t for t in ("<|eos|>",) if t in special],
        pad_token="<|pad|>" if "<|pad|>" in special else None,
    )
    return MM15Tokenizer(tok, meta)
