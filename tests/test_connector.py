"""C-Abstractor (Honeybee c-abs, MM1 §3.2; Honeybee, Cha et al., CVPR 2024) on tiny widths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mm15.config import ConnectorConfig
from mm15.model.connector import CAbstractor, LayerNorm2d

ENC, HID, OUT = 16, 12, 10


def _cabs(tokens=144, depth=1, enc_grid=27, pos_emb=True, enc=ENC, hidden=HID, mlp_depth=2):
    torch.manual_seed(0)
    cfg = ConnectorConfig(
        num_tokens=tokens, hidden=hidden, depth=depth, mlp_depth=mlp_depth, pos_emb=pos_emb
    )
    return CAbstractor(cfg, enc_width=enc, enc_grid=enc_grid, out_dim=OUT)


def _feats(n, grid, width=ENC, seed=0):
    return torch.randn(n, 1 + grid * grid, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tokens", [144, 81, 64])
@pytest.mark.parametrize("grid", [27, 48])
def test_output_shapes(tokens, grid):
    out = _cabs(tokens=tokens)(_feats(2, grid))
    assert out.shape == (2, tokens, OUT) and torch.isfinite(out).all()


def _shared_weights_without_pos(m: CAbstractor) -> CAbstractor:
    twin = _cabs(pos_emb=False)
    state = {k: v for k, v in m.state_dict().items() if k != "pos_emb"}
    twin.load_state_dict(state, strict=True)
    return twin


def test_pos_emb_exact_at_native_grid():
    m = _cabs()
    twin = _shared_weights_without_pos(m)
    x = _feats(2, 27)
    added = x + torch.cat([torch.zeros(1, 1, ENC), m.pos_emb], dim=1)
    assert torch.equal(m.pos_emb_for(27), m.pos_emb)
    assert torch.equal(m(x), twin(added))


def test_pos_emb_interpolated_off_native_grid():
    m = _cabs()
    with torch.no_grad():
        m.pos_emb.normal_()  # std 1, so the position signal is not lost next to the features
    twin = _shared_weights_without_pos(m)
    x = _feats(2, 48)
    grid_1C27 = m.pos_emb.detach().reshape(1, 27, 27, ENC).permute(0, 3, 1, 2)
    ref = F.interpolate(grid_1C27, size=(48, 48), mode="bicubic", align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(1, 48 * 48, ENC)
    assert torch.allclose(m.pos_emb_for(48), ref, atol=1e-6)
    added = x + torch.cat([torch.zeros(1, 1, ENC), ref], dim=1)
    out = m(x)
    assert torch.allclose(out, twin(added), atol=1e-6)
    assert (out - twin(x)).abs().max() > 0.1 * out.abs().max()  # the position embedding matters
    with torch.no_grad():
        m.pos_emb.fill_(0.25)  # bicubic weights sum to 1: a constant stays constant
    assert torch.allclose(m.pos_emb_for(48), torch.full((1, 2304, ENC), 0.25), atol=1e-6)


def _block_params(c_in: int, c_out: int, se_ratio: float = 0.25) -> int:
    """Hand count of one RegNet bottleneck: convs without bias, LN2d (2c), SE convs with bias."""
    rd = round(se_ratio * c_in)
    params = (c_in * c_out + 2 * c_out) + (9 * c_out + 2 * c_out) + (c_out * c_out + 2 * c_out)
    params += (c_out * rd + rd) + (rd * c_out + c_out)
    if c_in != c_out:
        params += c_in * c_out + 2 * c_out
    return params


def test_parameter_count_matches_hand_formula():
    # enc 8 → hidden 12 → out 10, grid 4, depth 1, mlp_depth 2:
    # pos 16·8=128; s1 block (8→12, SE rd=2) 602; s2 block (12→12, SE rd=3) 555; MLP 130+110.
    cfg = ConnectorConfig(num_tokens=4, hidden=12, depth=1, mlp_depth=2)
    m = CAbstractor(cfg, enc_width=8, enc_grid=4, out_dim=10)
    assert sum(p.numel() for p in m.parameters()) == 128 + 602 + 555 + 240 == 1525
    assert _block_params(8, 12) == 602 and _block_params(12, 12) == 555
    # A deeper one against the formula: 3 blocks per stage, MLP depth 3.
    cfg = ConnectorConfig(num_tokens=9, hidden=24, depth=3, mlp_depth=3)
    m = CAbstractor(cfg, enc_width=40, enc_grid=6, out_dim=10)
    expected = (
        36 * 40 + _block_params(40, 24) + 5 * _block_params(24, 24) + (24 * 10 + 10) + 2 * 110
    )
    assert sum(p.numel() for p in m.parameters()) == expected


def test_structure_follows_timm_regstage():
    m = _cabs(enc=40, hidden=24, depth=3)
    b0, b1 = m.s1.blocks[0], m.s1.blocks[1]
    assert isinstance(b1.shortcut, nn.Identity) and not isinstance(b0.shortcut, nn.Identity)
    assert all(isinstance(b.shortcut, nn.Identity) for b in m.s2.blocks)
    assert b0.se.fc1.out_channels == 10 and b1.se.fc1.out_channels == 6  # round(0.25 · block input)
    assert b0.conv2.conv.groups == 24 and b0.conv2.conv.kernel_size == (3, 3)  # depthwise
    convs = [
        mod for name, mod in m.named_modules() if isinstance(mod, nn.Conv2d) and ".se." not in name
    ]
    assert convs and all(c.bias is None for c in convs)
    # timm's ConvNormAct turns Honeybee's LayerNorm2d (eps 1e-6) into LayerNormAct2d (eps 1e-5);
    # tests/test_connector_honeybee.py checks this against timm itself.
    lns = [mod for mod in m.modules() if isinstance(mod, LayerNorm2d)]
    assert len(lns) == 3 * 6 + 1 and all(mod.eps == 1e-5 for mod in lns)
    y = b0(4 * torch.randn(2, 40, 5, 5))  # ends in SiLU, whose minimum is -0.2785
    assert y.min() >= -0.2785 and y.min() < 0


def test_layernorm2d_normalises_channels():
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.weight.uniform_()
        ln.bias.uniform_()
    x = torch.randn(2, 6, 3, 5)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, 1e-5).permute(0, 3, 1, 2)
    assert torch.allclose(ln(x), ref, atol=1e-6)


def test_trains_gradients_reach_pos_emb_and_first_conv():
    m = _cabs(tokens=4, enc_grid=6)  # input grid 10 ≠ native 6: gradients flow through the resize
    x, target = _feats(2, 10), torch.randn(2, 4, OUT)
    losses = []
    for _ in range(3):  # plain SGD, lr 0.5
        m.zero_grad()
        loss = F.mse_loss(m(x), target)
        loss.backward()
        losses.append(loss.item())
        for p in (m.pos_emb, m.s1.blocks[0].conv1.conv.weight):
            assert p.grad is not None and p.grad.abs().sum() > 0
        with torch.no_grad():
            for p in m.parameters():
                p -= 0.5 * p.grad
    assert losses[-1] < losses[0]


def test_bad_token_counts_raise():
    with pytest.raises(ValueError, match=r"perfect square.*120"):
        _cabs(tokens=120)
    m = _cabs(tokens=4)
    with pytest.raises(ValueError, match="square patch grid, got 10 patch tokens"):
        m(torch.randn(1, 11, ENC))
    with pytest.raises(ValueError, match="expects"):
        m(torch.randn(1, 10, ENC + 1))


def test_meta_build_and_depth_zero():
    with torch.device("meta"):
        m = _cabs(enc=1280, hidden=1024, depth=3)
    assert m.pos_emb.is_meta and m.pos_emb.shape == (1, 729, 1280)
    pool_only = _cabs(tokens=9, depth=0)  # Honeybee's avg-pool baseline: pool + MLP
    assert pool_only(_feats(1, 27)).shape == (1, 9, OUT)


@settings(max_examples=10, deadline=None)
@given(grid=st.integers(2, 10), side=st.integers(1, 4), n=st.integers(1, 3))
def test_any_grid_any_square_token_count(grid, side, n):
    m = _cabs(tokens=side * side, enc_grid=5, enc=8, hidden=8)
    assert m(_feats(n, grid, width=8)).shape == (n, side * side, OUT)
