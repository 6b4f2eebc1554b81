"""An lmms-eval model plugin, so the standard harness runs mm15 checkpoints (MM1.5 §4.1, Tables 4–14)::

    lmms-eval --model mm15 --model_args pretrained=CKPT --batch_size 8 --tasks textvqa_val

Registration: lmms-eval (0.7.x, ``lmms_eval.models.registry_v2.ModelRegistryV2``) loads every
entry point of the group ``lmms_eval.models``; ours returns a ``ModelManifest`` naming
:class:`MM15LMMS` as a *simple* model (``is_simple = True``: requests carry ``(context,
gen_kwargs, doc_to_visual, doc_id, task, split)``).  pyproject::

    [project.entry-points."lmms_eval.models"]
    mm15 = "mm15.eval.lmms_plugin:manifest"

The module imports without lmms-eval (the harness is an optional dependency); the class then
does not exist and asking for it raises ImportError saying what to install.

Requests become chat samples (:mod:`mm15.data.pipeline`, PIL images handed over decoded) with
the template the model was trained with: images in order before the text, or at ``<image>`` placeholders when the context has one per image.  Generation
is batched (requests with equal ``gen_kwargs`` together), greedy unless the task asks for
``temperature > 0``; beam search is not supported (``num_beams`` is ignored).

``loglikelihood`` scores a continuation after the assistant marker and returns, per request,
``(loss, is_greedy)`` with ``loss`` the **mean negative log-likelihood per continuation token**,
as lmms-eval's own models return it (llava, llava_hf: the LM loss over the continuation), because
lmms-eval 0.7.3 scores ``multiple_choice`` tasks with ``argmin`` over that value (``acc``;
``acc_norm`` divides it by the choice's length in characters).  Returning log-probabilities,
as the base class's docstring suggests, would make every multiple-choice task pick the least
likely option.  :func:`continuation_loglikelihood` gives the plain sum of log-probabilities.
(lmms-eval 0.7.3's evaluator itself turns these pairs into strings before scoring, so its
``multiple_choice`` tasks fail there for every model; docs/evaluation.md.)

The batch size comes from the harness's ``--batch_size`` (giving it in ``--model_args`` too is
a duplicate keyword for lmms-eval and fails).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mm15.data.prompt_encoding import encode_sample, placeholder_parts
from mm15.data.schema import Media, Message, Part, Sample
from mm15.services.inference import GenerationSettings, generate_for_samples

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
except ImportError as _e:  # the harness is optional
    lmms = None
    _IMPORT_ERROR: ImportError | None = _e
else:
    _IMPORT_ERROR = None

MODEL_ID = "mm15"
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif")


def manifest() -> Any:
    """The entry point's payload: lmms-eval's ``ModelManifest`` for :class:`MM15LMMS`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.MM15LMMS")


def __getattr__(name: str) -> Any:
    if name == "MM15LMMS":
        raise ImportError(
            f"mm15.eval.lmms_plugin.MM15LMMS needs lmms-eval (pip install "
            f"lmms-eval==0.7.3); importing it failed: {_IMPORT_ERROR}"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# Requests → samples and settings (no lmms-eval needed)


def _media(visual: Any) -> Media:
    if isinstance(visual, Image.Image):  # already decoded: handed to the pipeline as it is
        return Media(decoded=visual.convert("RGB"))
    if isinstance(visual, str | Path):
        kind = "video" if Path(visual).suffix.lower() in VIDEO_SUFFIXES else "image"
        return Media(kind=kind, path=str(visual))
    raise TypeError(f"unsupported visual {type(visual).__name__} (want a PIL image or a path)")


def request_sample(
    context: str,
    visuals: Sequence[Any] | None,
    *,
    sample_id: str = "request",
    image_token: str = "<image>",
) -> Sample:
    """One user turn: the visuals at the context's image placeholders when it has exactly one
    per visual, else all visuals first; other placeholders become plain text."""
    media = [_media(v) for v in visuals or [] if v is not None]
    parts = placeholder_parts(context, len(media), image_token) if media else None
    if parts is None:
        text = context.replace(image_token, "image")
        parts = [*(Part.m(k) for k in range(len(media))), Part.t(text)]
    return Sample(
        id=sample_id,
        source="lmms_eval",
        category="eval",
        stage="eval",
        media=media,
        messages=[Message("user", parts)],
    )


def generation_settings(gen_kwargs: dict[str, Any] | None, default_max: int) -> GenerationSettings:
    """lmms-eval ``gen_kwargs`` (until, max_new_tokens, temperature, do_sample, top_p) →
    :class:`GenerationSettings`; greedy unless sampling is asked for with temperature > 0."""
    kw = dict(gen_kwargs or {})
    until = kw.get("until") or []
    until = [until] if isinstance(until, str) else [u for u in until if u]
    temperature = float(kw.get("temperature") or 0.0)
    if kw.get("do_sample") is False:
        temperature = 0.0
    return GenerationSettings(
        max_new_tokens=int(kw.get("max_new_tokens") or default_max),
        temperature=temperature,
        top_p=float(kw.get("top_p") or 1.0),
        stop_strings=list(until),
    )


@torch.inference_mode()
def continuation_loglikelihood(
    model: Any, tokenizer: Any, sample: Sample, continuation: str
) -> tuple[float, bool]:
    """(Σ log p(token), every token the argmax) of ``continuation`` right after the assistant
    marker of ``sample``'s prompt."""
    enc = encode_sample(sample, tokenizer=tokenizer, model_cfg=model.cfg)
    cont = tokenizer.encode(continuation)
    if not cont:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens")
    device = next(model.parameters()).device
    ids_1T = torch.tensor([enc.input_ids + cont], device=device)
    pixels = enc.pixels
    if pixels is not None:
        pixels = pixels.to(device, model.lm.embed.weight.dtype)
    logits_TV = model(ids_1T, pixels_NCHW=pixels).logits[0].float()
    n = len(enc.input_ids)
    logp_CV = torch.log_softmax(logits_TV[n - 1 : -1], dim=-1)  # position t predicts t + 1
    target_C = torch.tensor(cont, device=device)
    ll = logp_CV.gather(-1, target_C[:, None]).sum().item()
    return ll, bool((logp_CV.argmax(-1) == target_C).all())


# ---------------------------------------------------------------------------------------------
# The harness model

if lmms is not None:

    class MM15LMMS(lmms):
        """``--model mm15 --model_args pretrained=CKPT[,device=cuda,dtype=bfloat16,
        max_new_tokens=256] --batch_size 8``."""

        is_simple = True

        def __init__(
            self,
            pretrained: str,
            batch_size: int | str = 8,
            device: str = "auto",
            dtype: str = "auto",
            max_new_tokens: int | str = 256,
            **kwargs: Any,
        ) -> None:
            super().__init__()
            from mm15.services.checkpoint import load_checkpoint

            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            dtypes = {
                "float32": torch.float32,
                "bfloat16": torch.bfloat16,
                "float16": torch.float16,
            }
            torch_dtype = dtypes.get(dtype) or (
                torch.bfloat16 if device.startswith("cuda") else torch.float32
            )
            self.model, self.tokenizer = load_checkpoint(
                pretrained, device=device, dtype=torch_dtype
            )
            # the harness passes --batch_size here too; "auto" / "auto:N" (memory probing) is
            # not supported and falls back to 8
            self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
            self.max_new_tokens = int(max_new_tokens)
            self.ignored_args = sorted(kwargs)  # harness-wide args meant for other models

        def _visuals(self, doc_to_visual: Any, doc_id: Any, task: str, split: str) -> list:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            return list(visuals or [])

        def generate_until(self, requests: list[Instance]) -> list[str]:
            from tqdm import tqdm

            out: list[str | None] = [None] * len(requests)
            groups: dict[str, list[int]] = {}
            for i, req in enumerate(requests):
                groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(
                    i
                )
            bar = tqdm(total=len(requests), disable=self.rank != 0, desc="mm15 responding")
            for idx in groups.values():
                settings = generation_settings(requests[idx[0]].args[1], self.max_new_tokens)
                for start in range(0, len(idx), self.batch_size):
                    chunk = idx[start : start + self.batch_size]
                    samples = [self._sample(requests[i], i) for i in chunk]
                    results = generate_for_samples(self.model, self.tokenizer, samples, settings)
                    for i, res in zip(chunk, results, strict=True):
                        text = (
                            res.text if res.text is not None else self.tokenizer.decode(res.tokens)
                        )
                        out[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args[:2], text)
                    bar.update(len(chunk))
            bar.close()
            return [o if o is not None else "" for o in out]

        def _sample(self, req: Instance, i: int) -> Sample:
            context, _, doc_to_visual, doc_id, task, split = req.args[:6]
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            return request_sample(
                context,
                visuals,
                sample_id=f"{task}/{doc_id}",
                image_token=self.tokenizer.meta.image_token,
            )

        def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
            """(mean NLL per continuation token, is greedy) per request (module docstring)."""
            res = []
            for req in requests:
                context, target, doc_to_visual, doc_id, task, split = req.args[:6]
                doc = self.task_dict[task][split][doc_id]
                continuation = target if isinstance(target, str) else target(doc)
                visuals = self._visuals(doc_to_visual, doc_id, task, split)
                sample = request_sample(
                    context,
                    visuals,
                    sample_id=f"{task}/{doc_id}",
                    image_token=self.tokenizer.meta.image_token,
                )
                ll, greedy = continuation_loglikelihood(
                    self.model, self.tokenizer, sample, str(continuation)
                )
                # lmms-eval's convention (module docstring): the mean token loss, lower is better
                res.append((-ll / len(self.tokenizer.encode(str(continuation))), greedy))
            return res

        def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
            raise NotImplementedError(
                "mm15's lmms-eval plugin does not implement multi-round "
                "generation; use single-round generate_until tasks"
            )
