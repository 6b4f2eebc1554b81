"""The one input pipeline: a :class:`~mm15.data.schema.Sample` → token ids, loss labels, the
image plans and the tiles (MM1.5 §3.1, §3.5).  Training, evaluation, the lmms-eval plugin,
``mm15 chat``, ``mm15 serve`` and the inference API all come here; nothing else formats, plans or
tiles.  Its modules:

* this one: :func:`format_sample` (ids, labels, image plans; no pixels decoded), the template;
* :mod:`mm15.data.sample_images`: the plans of the images a sample shows
  (:class:`~mm15.data.sample_images.ImageRef`) and their tiles (``materialize_pixels``);
* :mod:`mm15.data.token_stream`: text, special tokens and image blocks → ids and loss mask;
* :mod:`mm15.data.prompt_encoding`: prompts to generate from (``encode_sample``,
  ``encode_prompt``: ids and tiles, an ``EncodedPrompt``).

**Pre-training** (every message has role ``document``; captions, interleaved documents, text,
OCR pages): ``[BOS] text… [EOS]`` with loss on all text and the EOS (§4, MM1 §3).

**Chat** (SFT, evaluation): role markers are ordinary text (:class:`~mm15.config.FormatConfig`;
the model's is ``ModelConfig.format``, saved in its checkpoint, and
:mod:`mm15.data.chat_template` writes the same template as Jinja for Hugging Face tools)::

    [BOS]System: {system}\\n
    User: {user}\\n
    Assistant:\\n{answer}[EOS]\\n
    User: {user}\\n
    Assistant:\\n{answer}[EOS]

Loss on assistant content and its EOS only (MM1.5 §4: loss on assistant turns); role markers,
system and user turns carry none.  ``Message.train`` overrides a message's default.  With
``for_generation`` the text ends with the assistant marker, where the model takes over (a
document then ends without EOS: the model continues it), followed by
``Sample.meta["answer_prefix"]`` when a sample sets one (the start of the reply an evaluation
prompt writes for the model: MM1.5 §5's "Best Option: (").  The text between special tokens and
images is tokenised whole, as the Jinja template's is, and a token is trained when it covers a
trained character (:mod:`mm15.data.token_stream`).

Labels are aligned with ``input_ids`` (``labels[t]`` is ``input_ids[t]`` where the loss applies,
else ``IGNORE_INDEX``); the model predicts ``t+1`` from ``t``.  Image tokens and the sub-image
position indicators (Table 3) never carry loss.

**Images.** Every media part expands to the segments of its plan
(:func:`mm15.data.sample_images.plan_media`).  Each medium must be shown exactly once, so that a
region's image index ``k`` is well defined.  Regions render through
:func:`mm15.data.coords.format_box` / ``format_point`` on the original media size (on the split
grid's canvas under the ``FormatConfig.coords="grid"`` control, ``TileGeometry.region_frame``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mm15.config import FormatConfig, ModelConfig
from mm15.data.coords import Box, CoordinateError, Point, format_box, format_point
from mm15.data.sample_images import ImageRef, plan_media
from mm15.data.schema import Message, Part, Sample, SampleError, check_references
from mm15.data.token_stream import TokenStream
from mm15.tokenizer import MM15Tokenizer

IGNORE_INDEX = -100  # equals mm15.model.mm15.IGNORE_INDEX (data never imports the model)


@dataclass
class Example:
    """A formatted sample: ``input_ids`` and ``labels`` have equal length; ``images`` in order."""

    input_ids: list[int]
    labels: list[int]
    images: list[ImageRef]
    sample_id: str
    source: str
    category: str

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_tiles(self) -> int:
        return sum(r.n_tiles for r in self.images)

    @property
    def num_trainable(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class _Writer:
    """One sample being written: its stream, the plans of its media and the images shown."""

    sample: Sample
    refs: dict[int, list[ImageRef]]
    fmt: FormatConfig
    stream: TokenStream
    images: list[ImageRef]

    def content(self, msg: Message, train: bool) -> None:
        n_images = sum(len(r) for r in self.refs.values())
        for part in msg.content:
            if part.type == "text":
                self.stream.text(part.text, train)
            elif part.type == "media":
                for ref in self.refs[part.media]:
                    self.images.append(ref)
                    self.stream.image(ref.plan)
            else:
                self.stream.text(self.region_text(part, n_images), train)

    def region_text(self, part: Part, n_images: int) -> str:
        sample = self.sample
        region = sample.regions[part.region]
        if sample.media[region.media].kind != "image":
            raise SampleError(
                "malformed", f"sample {sample.id}: region {part.region} is on a video"
            )
        plan = self.refs[region.media][0].plan
        frame = plan.geometry.region_frame(self.fmt.coords)
        mode = self.fmt.region_image_index
        if mode == "multi_image":
            mode = "always" if n_images > 1 else "never"
        try:
            if region.box is not None:
                box = Box(*region.box, image=plan.image_index)
                return format_box(box, frame, image_index=mode)
            point = Point(*region.point, image=plan.image_index)
            return format_point(point, frame, image_index=mode)
        except CoordinateError as e:
            raise SampleError("malformed", f"sample {sample.id}: region {part.region}: {e}") from e


def _is_document(sample: Sample) -> bool:
    """True for a pre-training document sample, False for a chat; raises when mixed."""
    if not sample.messages:
        raise SampleError("empty", f"sample {sample.id} has no messages")
    docs = [m.role == "document" for m in sample.messages]
    if any(docs) and not all(docs):
        raise SampleError("malformed", f"sample {sample.id} mixes document and chat messages")
    return all(docs)


def _write_document(w: _Writer, eos: int, for_generation: bool) -> None:
    for msg in w.sample.messages:
        w.content(msg, msg.train is not False)
    if not for_generation:  # a document to continue ends where the text does
        w.stream.token(eos, True)


def _write_chat(w: _Writer, eos: int, for_generation: bool) -> None:
    fmt, messages = w.fmt, w.sample.messages
    prefix = {
        "system": fmt.system_prefix,
        "user": fmt.user_prefix,
        "assistant": fmt.assistant_prefix,
    }
    for i, msg in enumerate(messages):
        train = msg.train if msg.train is not None else msg.role == "assistant"
        w.stream.text(prefix[msg.role], False)
        w.content(msg, train)
        if msg.role == "assistant":
            w.stream.token(eos, train)
            if i + 1 < len(messages) or for_generation:
                w.stream.text(fmt.turn_end, False)
        else:
            w.stream.text(fmt.turn_end, False)
    if for_generation:  # an answer prompt in meta starts the reply (MM1.5 §5: "Best Option: (")
        w.stream.text(fmt.assistant_prefix + w.sample.meta.get("answer_prefix", ""), False)


def _check_tokenizer(tokenizer: MM15Tokenizer, model_cfg: ModelConfig) -> None:
    if 0 <= model_cfg.image_token_id != tokenizer.image_token_id:
        raise ValueError(
            f"ModelConfig.image_token_id={model_cfg.image_token_id} but the "
            f"tokenizer's image token id is {tokenizer.image_token_id}"
        )
    if not tokenizer.eos_ids:
        raise ValueError("the tokenizer has no EOS token; the chat template needs one")


def format_sample(
    sample: Sample,
    *,
    tokenizer: MM15Tokenizer,
    model_cfg: ModelConfig,
    fmt: FormatConfig | None = None,
    for_generation: bool = False,
) -> Example:
    """Token ids, labels and images of ``sample`` (template in the module docstring), in
    ``fmt`` or, by default, the model's own format (``model_cfg.format``, from its checkpoint).

    Raises :class:`SampleError`: ``malformed`` (bad references, the image token in text,
    mixed roles), ``missing``/``corrupt`` (media headers), ``empty`` (no trainable token unless
    ``for_generation``).  Length limits are the packer's job (``too_long``).
    """
    _check_tokenizer(tokenizer, model_cfg)
    fmt = model_cfg.format if fmt is None else fmt
    check_references(sample)
    is_doc = _is_document(sample)
    w = _Writer(sample, plan_media(sample, model_cfg), fmt, TokenStream(), [])
    w.stream.token(tokenizer.bos_id if fmt.add_bos else None, False)
    write = _write_document if is_doc else _write_chat
    write(w, tokenizer.eos_ids[0], for_generation)
    ids, trained = w.stream.encode(tokenizer, f"sample {sample.id}")
    labels = [i if t else IGNORE_INDEX for i, t in zip(ids, trained, strict=True)]
    ex = Example(ids, labels, w.images, sample.id, sample.source, sample.category)
    if not for_generation and ex.num_trainable == 0:
        raise SampleError("empty", f"sample {sample.id} has no token with loss")
    return ex
