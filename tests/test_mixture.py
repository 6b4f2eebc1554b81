"""Mixtures: the recipe's weights, seeded resumable sampling, audits; data-config round trips."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mm15.config import FormatConfig
from mm15.config_json import from_dict, to_dict
from mm15.data.config import (
    CPTWeights,
    FlatWeights,
    MixtureConfig,
    PackingConfig,
    PretrainWeights,
    SFTWeights,
    SourceConfig,
)
from mm15.data.mixture import (
    MixtureSampler,
    SourceEntry,
    build_sampler,
    mixture_weights,
    sft_category_weights,
)

# §4 / MM1.5 §3–4: the final SFT shares (%) the paper reports.
PAPER_SFT_SHARES = {
    "text_rich": 37.2,
    "refer_ground": 22.5,
    "general": 11.3,
    "math": 5.6,
    "code": 2.3,
    "science": 1.1,
    "multi_image": 10.0,
    "text_only": 10.0,
}


class Fake:
    """A map-style dataset whose items name their source and index."""

    def __init__(self, name: str, n: int):
        self.name, self.n = name, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> str:
        assert 0 <= i < self.n
        return f"{self.name}/{i}"


RULES = {"pretrain": PretrainWeights, "cpt": CPTWeights, "sft": SFTWeights, "flat": FlatWeights}


def _mix(weights: Any, spec: dict[str, tuple[str, int]], **kw) -> tuple[MixtureConfig, dict]:
    """A mixture over ``spec`` (name → (category, size)); ``weights`` is a rule's name (its
    default weights) or a weights dataclass."""
    cfg = MixtureConfig(
        weights=RULES[weights]() if isinstance(weights, str) else weights,
        sources=[SourceConfig(name=n, category=c) for n, (c, _) in spec.items()],
        **kw,
    )
    return cfg, {n: Fake(n, size) for n, (_, size) in spec.items()}


STAGE1 = {
    "cc3m": ("caption", 300),
    "cc12m": ("caption", 1200),
    "coyo": ("caption", 500),
    "obelics": ("interleaved", 700),
    "dclm": ("text", 900),
}
STAGE2 = {
    "pdfa": ("ocr", 2000),
    "idl": ("ocr", 500),
    "renderedtext": ("ocr", 120),
    "docstruct": ("ocr", 40),
}
STAGE3 = {
    "llava": ("general", 900),
    "sharegpt4v": ("general", 225),
    "synthdog": ("text_rich", 3000),
    "chartqa": ("text_rich", 725),
    "grit": ("refer_ground", 50),
    "ai2d": ("science", 3),
    "geo": ("math", 40),
    "datikz": ("code", 48),
    "nlvr2": ("multi_image", 86),
    "orca": ("text_only", 200),
    "dolly": ("text_only", 11),
}


def test_data_configs_round_trip_through_json_including_lists_of_sources():
    cfg, _ = _mix(SFTWeights(alpha_math=0.3), STAGE3, seed=7)
    cfg.sources[0].size = 123
    for c in (cfg, FormatConfig(turn_end="\n\n"), PackingConfig(max_images_per_sequence=None)):
        back = from_dict(type(c), json.loads(json.dumps(to_dict(c))))
        assert back == c
    assert isinstance(back, PackingConfig)
    bad = to_dict(cfg)
    bad["sources"][1]["category"] = "cats"
    with pytest.raises(ValueError, match=r"SourceConfig.category must be one of.*cats"):
        from_dict(MixtureConfig, bad)
    with pytest.raises(ValueError, match=r"MixtureConfig\.sources must be a list"):
        from_dict(MixtureConfig, {"sources": {"name": "a"}})


def test_sft_weights_reproduce_the_papers_final_shares():
    # Sizes in the paper's ratio: text-rich / general = 37.25 / 11.25; the α categories' own
    # sizes do not matter (they are sampled at α·|general|).
    sizes = {
        "general": 1125,
        "text_rich": 3725,
        "refer_ground": 10,
        "science": 68,
        "math": 5,
        "code": 999,
        "multi_image": 7,
        "text_only": 12345,
    }
    shares = sft_category_weights(SFTWeights(), sizes)
    assert sum(shares.values()) == pytest.approx(1.0)
    for cat, pct in PAPER_SFT_SHARES.items():
        assert abs(100 * shares[cat] - pct) <= 0.05 + 1e-9, (cat, 100 * shares[cat], pct)
    # The single-image group is 80%, and general : science = 1 : α.
    assert shares["science"] / shares["general"] == pytest.approx(0.1)


def test_stage_rules_group_then_split_within():
    cfg, ds = _mix("pretrain", STAGE1)
    w = mixture_weights(cfg, {n: len(d) for n, d in ds.items()})
    assert w["cc12m"] == pytest.approx(0.5 * 1200 / 2000)  # caption 50%, by size
    assert (w["obelics"], w["dclm"]) == pytest.approx((0.1, 0.4))
    cfg, ds = _mix("cpt", STAGE2)
    w = mixture_weights(cfg, {n: len(d) for n, d in ds.items()})
    assert list(w.values()) == pytest.approx([0.25] * 4)  # "sampled equally", whatever the size
    cfg, ds = _mix(CPTWeights(within="by_size"), STAGE2)
    assert mixture_weights(cfg, {n: len(d) for n, d in ds.items()})["pdfa"] == pytest.approx(
        2000 / 2660
    )
    cfg, ds = _mix("flat", {"a": ("video", 30), "b": ("video", 10)})
    assert mixture_weights(cfg, {"a": 30, "b": 10}) == pytest.approx({"a": 0.75, "b": 0.25})


@pytest.mark.parametrize(
    ("rule", "spec", "match"),
    [
        ("pretrain", {"a": ("caption", 5), "p": ("ocr", 5)}, r"not \['ocr'\]"),
        ("sft", {"m": ("math", 5), "t": ("text_rich", 5)}, "no general data"),
        ("sft", {"g": ("general", 5), "v": ("video", 5)}, '"rule": "flat"'),
        ("cpt", {"a": ("ocr", 0)}, "has 0 samples"),
    ],
)
def test_inconsistent_mixtures_are_refused(rule, spec, match):
    cfg, ds = _mix(rule, spec)
    with pytest.raises(ValueError, match=match):
        build_sampler(cfg, ds)


def _draw(sampler: MixtureSampler, n: int) -> list[str]:
    return [next(sampler) for _ in range(n)]


def test_sampling_is_deterministic_per_seed():
    cfg, ds = _mix("sft", STAGE3)
    a = _draw(build_sampler(cfg, ds, seed=1), 500)
    assert a == _draw(build_sampler(cfg, dict(reversed(ds.items())), seed=1), 500)
    assert a != _draw(build_sampler(cfg, ds, seed=2), 500)


def test_resume_mid_stream_equals_an_uninterrupted_run(tmp_path):
    cfg, ds = _mix("pretrain", {"s": ("caption", 7), "t": ("text", 3), "u": ("interleaved", 5)})
    whole = _draw(build_sampler(cfg, ds), 400)  # many epochs of every source
    first = build_sampler(cfg, ds)
    head = _draw(first, 157)
    (tmp_path / "state.json").write_text(json.dumps(first.state_dict()))
    resumed = build_sampler(cfg, ds)
    resumed.load_state_dict(json.loads((tmp_path / "state.json").read_text()))
    assert head + _draw(resumed, 400 - 157) == whole
    assert resumed.audit() == build_sampler_after(cfg, ds, 400).audit()
    other, _ = _mix("pretrain", {"s": ("caption", 7), "t": ("text", 3)})
    with pytest.raises(ValueError, match="sources"):
        build_sampler(other, {k: ds[k] for k in ("s", "t")}).load_state_dict(first.state_dict())


def build_sampler_after(cfg: MixtureConfig, ds: dict, n: int) -> MixtureSampler:
    s = build_sampler(cfg, ds)
    _draw(s, n)
    return s


def test_each_epoch_is_a_fresh_permutation_of_the_source():
    s = MixtureSampler({"only": SourceEntry(Fake("only", 50), "general", 1.0)}, seed=3)
    e0, e1 = _draw(s, 50), _draw(s, 50)
    assert sorted(e0) == sorted(e1) == sorted(f"only/{i}" for i in range(50))
    assert e0 != e1
    assert s.audit()["sources"]["only"]["epoch"] == 1


@pytest.mark.parametrize(("rule", "spec"), [("pretrain", STAGE1), ("cpt", STAGE2), ("sft", STAGE3)])
def test_20k_draws_match_the_configured_shares_within_2_points(rule, spec, tmp_path):
    cfg, ds = _mix(rule, spec)
    sampler = build_sampler(cfg, ds)
    _draw(sampler, 20_000)
    sampler.write_audit(tmp_path / "audit.json")
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["draws"] == 20_000
    assert sum(s["drawn"] for s in audit["sources"].values()) == 20_000
    for table in ("sources", "categories"):
        for name, row in audit[table].items():
            assert abs(row["share"] - row["configured_share"]) <= 0.02, (table, name, row)
    if rule == "pretrain":
        cats = audit["categories"]
        assert [cats[c]["configured_share"] for c in ("caption", "interleaved", "text")] == (
            pytest.approx([0.5, 0.1, 0.4])
        )
