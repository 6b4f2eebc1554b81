"""The lmms-eval model plugin (mm15.eval.lmms_plugin).

The request adapters and the log-likelihood run everywhere; the harness tests import the
installed lmms-eval and drive the plugin with its real ``Instance`` objects, model registry and
entry-point loader (skipped when lmms-eval is not installed: it is an optional dependency).
"""

from __future__ import annotations

import importlib.util
import math
import string
import sys

import pytest
from PIL import Image

from mm15.checkpoint import load_checkpoint
from mm15.eval import lmms_plugin as lp
from mm15.inference import GenerationSettings, generate_for_samples

HAS_LMMS = importlib.util.find_spec("lmms_eval") is not None
needs_lmms = pytest.mark.skipif(not HAS_LMMS, reason="lmms-eval is not installed")


def image(colour=(200, 30, 30), size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


@pytest.fixture(scope="module")
def model_tok(tiny_ckpt_dir):
    return load_checkpoint(tiny_ckpt_dir)


# ---- adapters (no harness needed) ---------------------------------------------------------------


def test_request_sample_places_images():
    s = lp.request_sample("<image>\nWhat colour?", [image()])
    assert [p.type for p in s.messages[0].content] == ["media", "text"]
    assert s.messages[0].content[1].text == "\nWhat colour?" and s.media[0].bytes[:4] == b"\x89PNG"
    s = lp.request_sample("Left <image> right <image>", [image(), image()])
    assert [p.type for p in s.messages[0].content] == ["text", "media", "text", "media"]
    # no placeholders, or not one per image: images first, stray placeholders become text
    s = lp.request_sample("Compare <image>.", [image(), image()])
    assert [p.type for p in s.messages[0].content] == ["media", "media", "text"]
    assert s.messages[0].content[2].text == "Compare image."
    assert lp.request_sample("Text only", []).media == []
    assert lp.request_sample("clip", ["/v/a.mp4"]).media[0].kind == "video"
    with pytest.raises(TypeError, match="unsupported visual"):
        lp.request_sample("x", [3])


def test_generation_settings_from_gen_kwargs():
    s = lp.generation_settings({"until": "\n\n", "max_new_tokens": 7}, 99)
    assert (s.stop_strings, s.max_new_tokens, s.temperature) == (["\n\n"], 7, 0.0)
    s = lp.generation_settings({"until": ["A", ""], "temperature": 0.7, "do_sample": False}, 5)
    assert (s.stop_strings, s.max_new_tokens, s.temperature) == (["A"], 5, 0.0)
    assert lp.generation_settings({"temperature": 0.5, "top_p": 0.9}, 5).temperature == 0.5


def test_continuation_loglikelihood(model_tok):
    model, tok = model_tok
    sample = lp.request_sample("Say something.", [])  # text only: 66 forwards stay fast
    greedy = generate_for_samples(model, tok, [sample], GenerationSettings(max_new_tokens=1))[0]
    printable = list(string.ascii_letters + string.digits + " .,?")  # one byte-token each
    scores = {c: lp.continuation_loglikelihood(model, tok, sample, c) for c in printable}
    assert all(ll < 0.0 for ll, _ in scores.values())
    assert sum(math.exp(ll) for ll, _ in scores.values()) <= 1.0 + 1e-6
    # "greedy" exactly for the token generation picks (if it is printable at all)
    assert [c for c, (_, g) in scores.items() if g] == [
        c for c in printable if tok.encode(c) == greedy.tokens]  # fmt: skip
    best = max(printable, key=lambda c: scores[c][0])
    assert scores[best][1] == (tok.encode(best) == greedy.tokens)
    # a longer continuation is never more likely than its prefix
    assert lp.continuation_loglikelihood(model, tok, sample, "ab")[0] < scores["a"][0]
    with pytest.raises(ValueError, match="no tokens"):
        lp.continuation_loglikelihood(model, tok, sample, "")


@pytest.mark.skipif(HAS_LMMS, reason="lmms-eval is installed")
def test_class_needs_the_harness():
    with pytest.raises(ImportError, match="needs lmms-eval"):
        from mm15.eval.lmms_plugin import MM15LMMS  # noqa: F401


# ---- the installed harness ----------------------------------------------------------------------


def _instances(requests: list[tuple], kind: str = "generate_until") -> list:
    from lmms_eval.api.instance import Instance

    return [Instance(request_type=kind, arguments=args, idx=0,
                     metadata={"task": "t", "doc_id": args[3], "repeats": 1}) for args in requests]  # fmt: skip


def _docs() -> list[dict]:
    return [{"img": image((40 * k, 90, 0)), "q": f"What is {k}?"} for k in range(5)]


def to_visual(doc):
    return [doc["img"]]


@pytest.fixture(scope="module")
def plugin(tiny_ckpt_dir):
    obj = lp.MM15LMMS.create_from_arg_string(f"pretrained={tiny_ckpt_dir},batch_size=2,device=cpu")
    obj.task_dict = {"t": {"test": _docs()}}
    return obj


@needs_lmms
def test_plugin_is_a_harness_model(plugin):
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    assert isinstance(plugin, lmms) and lp.MM15LMMS.is_simple and plugin.batch_size == 2
    registry = ModelRegistryV2()
    registry.register_manifest(lp.manifest())  # validates subclass and the simple flag
    assert registry.get_model_class("mm15") is lp.MM15LMMS


@needs_lmms
def test_entry_point_registration(tmp_path, monkeypatch):
    """The pyproject entry point, as an installed distribution declares it, is what the
    harness's loader picks up (a dist-info on sys.path stands in for the installed package)."""
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    dist = tmp_path / "mm15_entry_test-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mm15-entry-test\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(
        "[lmms_eval.models]\nmm15 = mm15.eval.lmms_plugin:manifest\n"
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    assert registry.get_model_class("mm15") is lp.MM15LMMS


@needs_lmms
def test_generate_until_with_real_instances(plugin, model_tok):
    model, tok = model_tok
    greedy = {"max_new_tokens": 5, "temperature": 0, "do_sample": False}
    reqs = [(f"<image>\n{d['q']}", dict(greedy), to_visual, k, "t", "test")
            for k, d in enumerate(_docs())]  # fmt: skip
    reqs[3] = (reqs[3][0], {"max_new_tokens": 2}, *reqs[3][2:])  # another group, same order
    out = plugin.generate_until(_instances(reqs))
    assert len(out) == 5 and all(isinstance(o, str) for o in out)
    for k, (ctx, kw, *_rest) in enumerate(reqs):  # the same as mm15's own batched generation
        ref = generate_for_samples(model, tok, [lp.request_sample(ctx, [_docs()[k]["img"]])],
                                   GenerationSettings(max_new_tokens=kw["max_new_tokens"]))[0]  # fmt: skip
        assert out[k] == ref.text
    assert len(tok.encode(out[3])) <= 2
    stop = out[0][1:2]
    cut = plugin.generate_until(_instances([(reqs[0][0], {**greedy, "until": [stop]},
                                             *reqs[0][2:])]))[0]  # fmt: skip
    assert stop not in cut and out[0].startswith(cut)


@needs_lmms
def test_loglikelihood_with_real_instances(plugin, model_tok):
    model, tok = model_tok
    ctx = "<image>\nWhat is 1?"
    reqs = [
        (ctx, "ab", to_visual, 1, "t", "test"),
        (ctx, lambda doc: doc["q"], to_visual, 1, "t", "test"),
    ]
    res = plugin.loglikelihood(_instances(reqs, "loglikelihood"))
    sample = lp.request_sample(ctx, [_docs()[1]["img"]])
    assert res[0] == lp.continuation_loglikelihood(model, tok, sample, "ab")
    assert res[1] == lp.continuation_loglikelihood(model, tok, sample, "What is 1?")
    with pytest.raises(NotImplementedError, match="multi-round"):
        plugin.generate_until_multi_round([])
