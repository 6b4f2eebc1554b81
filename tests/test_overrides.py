"""`--set key=value` overrides: dotted paths, list indices, validation that names the field."""

import pytest

from mm15.overrides import apply_overrides
from mm15.presets import get_preset


def test_dotted_overrides_apply_and_keep_types():
    cfg = apply_overrides(
        get_preset("3b"),
        ["image.n_max=16", "lm.rope_theta=1e4", "image.indicator=seps", "image.static_grid=[3,3]"],
    )
    assert cfg.image.n_max == 16 and cfg.image.indicator == "seps"
    assert cfg.lm.rope_theta == 10000.0 and isinstance(cfg.lm.rope_theta, float)
    assert cfg.image.static_grid == (3, 3)
    assert get_preset("3b").image.n_max == 9  # the original is untouched


def test_nested_object_can_be_set_whole():
    cfg = apply_overrides(get_preset("tiny"), ['lm.moe={"num_experts": 8, "every": 2}'])
    assert cfg.lm.moe.num_experts == 8 and cfg.lm.moe.top_k == 2  # defaults filled in
    cfg = apply_overrides(get_preset("tiny-moe"), ["lm.moe=null"])
    assert cfg.lm.moe is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("image.n_maxx=16", "no such setting"),
        ("image.indicator=stars", "indicator"),
        ("lm.dim=big", "dim"),
        ("image", "not key=value"),
        ("lm.moe.num_experts=8", "set it whole"),
        ("image.static_grid.5=1", "out of range"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(get_preset("tiny"), [override])
