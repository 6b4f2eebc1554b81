"""The model's chat format as a Hugging Face Jinja ``chat_template`` (``tokenizer_config.json``).

An mm15 checkpoint's ``config.json`` holds the chat format the model was trained with
(``ModelConfig.format``, :class:`~mm15.config.FormatConfig`); :func:`chat_template` turns it into
a Jinja template that renders exactly the text :func:`mm15.data.pipeline.format_sample` renders, so
``AutoTokenizer.from_pretrained(ckpt).apply_chat_template(messages)`` gives the token ids mm15
trained on, with one image token per image where mm15 expands it into its tiles (mm15 tokenises
the text between special tokens and images whole, as the template's rendering is tokenised, so
the ids agree with a BPE vocabulary too: :mod:`mm15.data.token_stream`).  It is
generated from the config (a non-default format gets its own template) and written by
:func:`mm15.services.checkpoint.save_checkpoint` into ``tokenizer_config.json`` (:func:`hf_tokenizer_config`).

**Messages** (the Hugging Face convention): ``{"role": "system"|"user"|"assistant", "content":
str | [part, ...]}``.  A string is written as it is (it may hold ``<image>`` placeholders).
Parts::

    {"type": "text", "text": "..."}           the text
    {"type": "image"}                          one image placeholder (also "image_url")
    {"type": "video", "num_frames": N}         N placeholders, one per frame (mm15 shows a video
                                               as its frames); without num_frames the model's
                                               VideoConfig.num_frames (a shorter clip has fewer).
                                               A template made with a video token (the HF
                                               export's) writes that one token instead
    {"type": "region", "box": [x1, y1, x2, y2], "image": k}   a box or point in mm15's
    {"type": "region", "point": [x, y], "image": k}           coordinate text

A region's numbers are the model's integer bins in ``[0, 1000)``, normalised by image ``k``'s
original size (:func:`mm15.data.coords.quantize_box` / ``quantize_point`` of pixel
coordinates); ``image`` (default 0) counts images in order of appearance, a video's frames
included.  The template writes ``<x1,y1,x2,y2>`` or ``<k:x1,y1,x2,y2>`` by the format's
``region_image_index`` ("multi_image": the index when the conversation shows more than one
image, video frames counted).  :func:`sample_messages` turns an mm15 sample into these messages.

Roles: ``[BOS]`` (when ``add_bos`` and the tokenizer has one), then per message its role prefix
and content, EOS after an assistant's content, ``turn_end`` after every turn but a final
assistant one; ``add_generation_prompt`` appends ``turn_end`` (after a final assistant turn) and
the assistant prefix, as ``format_sample(..., for_generation=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mm15.config import ModelConfig
from mm15.data.coords import Box, Point, quantize_box, quantize_point
from mm15.data.media import media_size, video_frame_count
from mm15.data.schema import Sample, SampleError
from mm15.tokenizer import MM15Tokenizer

TOKENIZER_CONFIG = "tokenizer_config.json"

_BODY = """
{%- set ns = namespace(images=0) -%}
{%- for message in messages if message['content'] is not string -%}
  {%- for part in message['content'] -%}
    {%- if part['type'] in ['image', 'image_url'] -%}
      {%- set ns.images = ns.images + 1 -%}
    {%- elif part['type'] == 'video' -%}
      {%- set ns.images = ns.images + (part.num_frames | default(video_frames)) -%}
    {%- endif -%}
  {%- endfor -%}
{%- endfor -%}
{%- if add_bos and bos_token is defined and bos_token -%}{{ bos_token }}{%- endif -%}
{%- for message in messages -%}
  {%- if message['role'] == 'system' -%}{{ system_prefix }}
  {%- elif message['role'] == 'user' -%}{{ user_prefix }}
  {%- elif message['role'] == 'assistant' -%}{{ assistant_prefix }}
  {%- else -%}{{ raise_exception('mm15: unknown role ' ~ message['role']) }}
  {%- endif -%}
  {%- if message['content'] is string -%}{{ message['content'] }}
  {%- else -%}
    {%- for part in message['content'] -%}
      {%- if part['type'] == 'text' -%}{{ part['text'] }}
      {%- elif part['type'] in ['image', 'image_url'] -%}{{ image_token }}
      {%- elif part['type'] == 'video' and video_token -%}{{ video_token }}
      {%- elif part['type'] == 'video' -%}
        {{- image_token * (part.num_frames | default(video_frames)) -}}
      {%- elif part['type'] == 'region' -%}
        {%- set k = part.image | default(0) -%}
        {%- set coords = part.box if part.box is defined else part.point -%}
        {%- if region_image_index == 'always' or (region_image_index == 'auto' and k != 0)
              or (region_image_index == 'multi_image' and ns.images > 1) -%}
          {%- set tag = k ~ ':' -%}
        {%- elif k != 0 -%}
          {{- raise_exception('mm15: a region on image ' ~ k ~ ' of a single-image chat') -}}
        {%- else -%}
          {%- set tag = '' -%}
        {%- endif -%}
        {{- '<' ~ tag ~ (coords | join(',')) ~ '>' -}}
      {%- else -%}{{ raise_exception('mm15: unknown content part ' ~ part['type']) }}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {%- if message['role'] == 'assistant' -%}{{ eos_token }}
    {%- if not loop.last or add_generation_prompt -%}{{ turn_end }}{%- endif -%}
  {%- else -%}{{ turn_end }}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ assistant_prefix }}{%- endif -%}
"""


def _literal(value: Any) -> str:
    """``value`` as a Jinja literal: JSON with non-ASCII kept (Jinja unescapes string literals
    with Python's unicode-escape after backslash-replacing non-ASCII, so both round trip)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def chat_template(cfg: ModelConfig, *, video_token: str | None = None) -> str:
    """The Jinja chat template rendering ``cfg.format`` as :func:`~mm15.data.pipeline.format_sample`
    does (image placeholder ``cfg.image_token``, a video's default frame count from
    ``cfg.video``).  With ``video_token`` a video part is that one placeholder, which the
    processor expands into the frames it samples (``mm15 export --hf``: :mod:`mm15.hf.processing`,
    :mod:`mm15.vllm`); without, one image placeholder per frame."""
    fmt = cfg.format
    names = {
        "system_prefix": fmt.system_prefix,
        "user_prefix": fmt.user_prefix,
        "assistant_prefix": fmt.assistant_prefix,
        "turn_end": fmt.turn_end,
        "add_bos": fmt.add_bos,
        "region_image_index": fmt.region_image_index,
        "image_token": cfg.image_token,
        "video_frames": cfg.video.num_frames,
        "video_token": video_token or "",
    }
    head = "".join(f"{{%- set {k} = {_literal(v)} -%}}\n" for k, v in names.items())
    header = "{#- mm15 chat template, generated from the checkpoint's config.json format -#}\n"
    return header + head + _BODY.strip() + "\n"


def hf_tokenizer_config(tokenizer: MM15Tokenizer, cfg: ModelConfig) -> dict[str, Any]:
    """``tokenizer_config.json`` for transformers' ``PreTrainedTokenizerFast``: the special
    tokens mm15 uses (EOS: the first of ``eos_tokens``) and the chat template."""
    meta = tokenizer.meta
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": meta.bos_token,
        "eos_token": meta.eos_tokens[0] if meta.eos_tokens else None,
        "pad_token": meta.pad_token,
        "model_max_length": cfg.lm.max_seq_len,
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template(cfg),
    }


def write_hf_tokenizer_config(
    directory: str | Path, tokenizer: MM15Tokenizer, cfg: ModelConfig
) -> None:
    text = json.dumps(hf_tokenizer_config(tokenizer, cfg), indent=2, ensure_ascii=False)
    (Path(directory) / TOKENIZER_CONFIG).write_text(text + "\n", encoding="utf-8")


def sample_messages(sample: Sample, cfg: ModelConfig) -> list[dict[str, Any]]:
    """``sample``'s chat as the messages :func:`chat_template` renders (media headers are read
    for region sizes and video frame counts); :func:`~mm15.data.pipeline.format_sample` of the
    sample and the template of these messages give the same text up to image expansion."""
    frames, first, k = {}, {}, 0  # media index → frames shown, its first image number
    for part in (p for m in sample.messages for p in m.content if p.type == "media"):
        media = sample.media[part.media]
        n = video_frame_count(media, cfg.video, cfg.image) if media.kind == "video" else 1
        frames[part.media], first[part.media], k = n, k, k + n
    out = []
    for msg in sample.messages:
        if msg.role == "document":
            raise SampleError("malformed", f"sample {sample.id}: a document is not a chat")
        parts: list[dict[str, Any]] = []
        for part in msg.content:
            if part.type == "text":
                parts.append({"type": "text", "text": part.text})
            elif part.type == "media" and sample.media[part.media].kind == "video":
                parts.append({"type": "video", "num_frames": frames[part.media]})
            elif part.type == "media":
                parts.append({"type": "image"})
            else:
                region = sample.regions[part.region]
                size = media_size(sample.media[region.media], cfg.image)
                if region.box is not None:
                    shape = {"box": list(quantize_box(Box(*region.box), size))}
                else:
                    shape = {"point": list(quantize_point(Point(*region.point), size))}
                parts.append({"type": "region", **shape, "image": first[region.media]})
        out.append({"role": msg.role, "content": parts})
    return out
