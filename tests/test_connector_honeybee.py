"""mm15's C-Abstractor against Honeybee's, built on the real timm (tests/references_honeybee.py).

Same weights through Honeybee's state-dict keys, fp32, max-abs difference ≤ 1e-5 (measured: 0,
bit-identical; with the old LayerNorm eps 1e-6 it was up to 3.3e-3).  Then Honeybee checkpoints:
a position table at the grid Honeybee trained at (with or without the obsolete CLS row) loads
through ``mm15 init --connector`` and round-trips through an mm15 checkpoint.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mm15.cli import main
from mm15.config import ConnectorConfig
from mm15.model.connector import CAbstractor, LayerNorm2d
from mm15.model.honeybee import connector_key, honeybee_connector, honeybee_key
from tests.references import import_references
from tests.references_honeybee import HoneybeeCAbstractor, honeybee_init_

TOL = 1e-5


def _reference(enc, hidden, out, depth, mlp_depth, tokens, grid, se=None, perturb=False):
    torch.manual_seed(0)
    ref = HoneybeeCAbstractor(
        encoder_hidden_size=enc,
        hidden_size=hidden,
        output_hidden_size=out,
        depth=depth,
        mlp_depth=mlp_depth,
        num_query_tokens=tokens,
        num_input_tokens=grid * grid,
        se_ratio=se,
    )
    honeybee_init_(ref)
    if perturb:  # away from the init, so that LN affines, biases and SE gates all matter
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return ref.eval()


def _ours(ref, enc, hidden, out, depth, mlp_depth, tokens, grid, se=None, **cfg_kw):
    cfg = ConnectorConfig(
        num_tokens=tokens,
        hidden=hidden,
        depth=depth,
        mlp_depth=mlp_depth,
        se_ratio=0.25 if se is None else se,
        **cfg_kw,
    )
    m = CAbstractor(cfg, enc_width=enc, enc_grid=grid, out_dim=out)
    m.load_state_dict({connector_key(k): v for k, v in ref.state_dict().items()}, strict=True)
    return m.eval()


def _feats(n, grid, width, seed=2):
    return torch.randn(n, 1 + grid * grid, width, generator=torch.Generator().manual_seed(seed))


# (enc, hidden, out, depth, mlp_depth, tokens, grid, se_ratio); se None = Honeybee (timm 0.25).
CONFIGS = [
    (16, 12, 10, 1, 2, 4, 6, None),  # channels change: projection shortcut in s1
    (16, 16, 10, 1, 1, 9, 6, None),  # channels equal: identity shortcut everywhere
    (40, 24, 10, 3, 2, 9, 7, None),  # Honeybee's depth 3; 7 → 3 uneven pooling windows
    (16, 12, 10, 0, 2, 4, 6, None),  # depth 0: Honeybee's pool + MLP
    (16, 12, 10, 3, 3, 4, 6, 0.0),  # no SE (an mm15 option; Honeybee always has timm's 0.25)
    (4, 8, 10, 1, 2, 4, 5, 0.1),  # round(4 · 0.1) = 0: timm's SE falls back to 8 channels
]


@pytest.mark.parametrize("perturb", [False, True], ids=["honeybee_init", "perturbed"])
@pytest.mark.parametrize(
    "arch", CONFIGS, ids=lambda a: "enc{}-hid{}-out{}-d{}-mlp{}-t{}-g{}-se{}".format(*a)
)
def test_matches_honeybee_on_timm(arch, perturb):
    ref = _reference(*arch, perturb=perturb)
    m = _ours(ref, *arch)
    x = _feats(3, arch[6], arch[0])
    with torch.no_grad():
        diff = (m(x) - ref.project_encoder_output(x)).abs().max().item()
    print(f"max abs diff {diff:.3g}")
    assert diff <= TOL


def test_every_norm_is_timm_layernormact2d_with_eps_1e5():
    """The cause of the old 3.9e-3 gap: timm's ConvNormAct builds LayerNormAct2d (eps 1e-5)
    from Honeybee's ``norm_layer=LayerNorm2d`` (eps 1e-6), in conv1-3 and the shortcut."""
    import_references()
    from timm.layers import LayerNormAct2d

    ref = _reference(40, 24, 10, 3, 2, 9, 7)
    norms = {n: mod for n, mod in ref.named_modules() if isinstance(mod, torch.nn.LayerNorm)}
    assert "net.0.b1.downsample.bn" in norms and len(norms) == 19
    assert all(type(mod) is LayerNormAct2d and mod.eps == 1e-5 for mod in norms.values())
    ours = _ours(ref, 40, 24, 10, 3, 2, 9, 7)
    assert all(mod.eps == 1e-5 for mod in ours.modules() if isinstance(mod, LayerNorm2d))
    # The test has teeth: the old eps (1e-6) is far outside the tolerance at Honeybee's init.
    ref16 = _reference(16, 16, 10, 1, 1, 9, 6)
    old = _ours(ref16, 16, 16, 10, 1, 1, 9, 6)
    for mod in old.modules():
        if isinstance(mod, LayerNorm2d):
            mod.eps = 1e-6
    x = _feats(3, 6, 16)
    with torch.no_grad():
        assert (old(x) - ref16.project_encoder_output(x)).abs().max() > 1e-3


def test_key_mapping_is_a_bijection():
    ref = _reference(40, 24, 10, 3, 2, 9, 7)
    hb_keys = set(ref.state_dict())
    assert {
        "net.0.b1.conv1.bn.weight",
        "net.0.b1.se.fc1.bias",
        "net.0.b1.downsample.conv.weight",
        "net.2.b3.conv3.bn.bias",
        "readout.2.weight",
        "pos_emb",
    } <= hb_keys
    ours = {connector_key(k) for k in hb_keys}
    m = CAbstractor(
        ConnectorConfig(num_tokens=9, hidden=24, depth=3), enc_width=40, enc_grid=7, out_dim=10
    )
    assert ours == set(m.state_dict())
    assert {honeybee_key(k) for k in ours} == hb_keys
    for bad in ("net.1.b1.conv1.conv.weight", "net.0.b0.conv1.conv.weight", "query_tokens"):
        with pytest.raises(ValueError, match="not a C-Abstractor"):
            connector_key(bad)


# ---- Honeybee checkpoints --------------------------------------------------------------------

ENC, HID, OUT, TOK = 32, 24, 32, 16  # the tiny CLIP (width 32, native grid 2) and Llama (dim 32)
TRAINED = 8  # the grid Honeybee ran the encoder at (48 for 672 px; small here)


def _honeybee_file(tmp_path, *, cls_row=False, fmt="safetensors", edit=None):
    """A Honeybee-style full-model checkpoint: vision_model.*, abstractor.*, language_model.*."""
    ref = _reference(ENC, HID, OUT, 1, 2, TOK, TRAINED, perturb=True)
    sd = {f"abstractor.{k}": v.clone() for k, v in ref.state_dict().items()}
    if cls_row:  # old checkpoints: 1 + G² rows, the first for a CLS token nothing uses
        sd["abstractor.pos_emb"] = torch.cat([torch.randn(1, 1, ENC), sd["abstractor.pos_emb"]], 1)
    sd |= {"vision_model.x.weight": torch.zeros(2), "language_model.y.weight": torch.zeros(2)}
    if edit:
        edit(sd)
    path = tmp_path / f"honeybee.{fmt}"
    save_file(sd, path) if fmt == "safetensors" else torch.save(sd, path)
    return ref, path


@pytest.mark.parametrize(("cls_row", "fmt"), [(False, "safetensors"), (True, "bin")])
def test_honeybee_checkpoint_loads_at_its_grid_and_resizes_off_it(tmp_path, cls_row, fmt):
    ref, path = _honeybee_file(tmp_path, cls_row=cls_row, fmt=fmt)
    if cls_row:  # Honeybee's own _load_from_state_dict drops the CLS row the same way
        twin = _reference(ENC, HID, OUT, 1, 2, TOK, TRAINED)
        twin.load_state_dict({k[11:]: v for k, v in torch.load(path).items() if "abstractor" in k})
        assert torch.equal(twin.pos_emb, ref.pos_emb)
    cfg, state = honeybee_connector(
        path, ConnectorConfig(num_tokens=TOK), enc_width=ENC, out_dim=OUT
    )
    assert (cfg.pos_grid, cfg.hidden, cfg.depth, cfg.mlp_depth) == (TRAINED, HID, 1, 2)
    m = CAbstractor(cfg, enc_width=ENC, enc_grid=2, out_dim=OUT).eval()  # native grid 2
    m.load_state_dict(state, strict=True)
    x = _feats(2, TRAINED, ENC)
    with torch.no_grad():
        assert (m(x) - ref.project_encoder_output(x)).abs().max() <= TOL
        # At the native grid (Honeybee cannot run there) mm15 resizes the table bicubically.
        x2 = _feats(2, 2, ENC)
        table = ref.pos_emb.reshape(1, TRAINED, TRAINED, ENC).permute(0, 3, 1, 2)
        small = F.interpolate(table, size=(2, 2), mode="bicubic", align_corners=False)
        ref.pos_emb = torch.nn.Parameter(small.permute(0, 2, 3, 1).reshape(1, 4, ENC))
        assert (m(x2) - ref.project_encoder_output(x2)).abs().max() <= TOL


def test_sharded_checkpoint_reads_only_abstractor_shards(tmp_path):
    ref, path = _honeybee_file(tmp_path)
    path.unlink()
    shard = tmp_path / "pytorch_model-00001-of-00002.bin"
    torch.save({f"abstractor.{k}": v for k, v in ref.state_dict().items()}, shard)
    weight_map = {f"abstractor.{k}": shard.name for k in ref.state_dict()}
    weight_map["language_model.y"] = "pytorch_model-00002-of-00002.bin"  # absent: never read
    d = tmp_path
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (d / "config.json").write_text(
        json.dumps({"projector_config": {"projector_type": "c-abs", "num_query_tokens": TOK}})
    )
    cfg, _ = honeybee_connector(d, ConnectorConfig(num_tokens=TOK), enc_width=ENC, out_dim=OUT)
    assert cfg.pos_grid == TRAINED
    with pytest.raises(ValueError, match="num_query_tokens 16, the preset 9"):
        honeybee_connector(d, ConnectorConfig(num_tokens=9), enc_width=ENC, out_dim=OUT)


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_mm15_init_connector_round_trips(hf_clip_dir, hf_llama_dir, tmp_path, capsys):
    from mm15.services.checkpoint import load_checkpoint

    ref, path = _honeybee_file(tmp_path)
    out = tmp_path / "ckpt"
    args = ("init", "--vision", str(hf_clip_dir), "--llm", str(hf_llama_dir), "--preset", "tiny")
    code, _, err = _run(capsys, *args, "--out", str(out), "--connector", str(path))
    assert code == 0, err
    model, _ = load_checkpoint(out)
    c = model.cfg.connector
    assert (c.pos_grid, c.hidden, c.depth, c.mlp_depth, c.num_tokens) == (TRAINED, HID, 1, 2, TOK)
    assert json.loads((out / "config.json").read_text())["connector"]["pos_grid"] == TRAINED
    x = _feats(2, TRAINED, ENC)
    with torch.no_grad():
        assert (model.connector(x) - ref.project_encoder_output(x)).abs().max() <= TOL
        # The encoder's own grid (28 px / 14 = 2) resizes the 8×8 table on the fly.
        assert model.encode_tiles(torch.randn(2, 3, 28, 28)).shape == (2, TOK, OUT)


def _drop(key):
    return lambda sd: sd.pop(key)


def _set(key, value):
    return lambda sd: sd.__setitem__(key, value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _drop("abstractor.net.2.b1.se.fc2.bias"),
            r"do not fit: missing \['net.2.b1.se.fc2.bias'\]",
        ),
        (
            _set("abstractor.net.0.b1.conv1.conv.weight", torch.zeros(HID, 48, 1, 1)),
            r"net.0.b1.conv1.conv.weight has shape \[24, 48, 1, 1\], expected \[24, 32, 1, 1\]",
        ),
        (_set("abstractor.pos_emb", torch.zeros(1, 48, ENC)), "48 rows: neither a square grid"),
        (_set("abstractor.prenorm.weight", torch.ones(ENC)), "prenorm / num_eos_tokens"),
        (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("abstractor.")], "no Honeybee"),
    ],
    ids=["missing", "shape", "non_square", "prenorm", "no_abstractor"],
)
def test_bad_honeybee_checkpoints_are_one_error_line(
    hf_clip_dir, hf_llama_dir, tmp_path, capsys, edit, message
):
    import re

    _, path = _honeybee_file(tmp_path, edit=edit)
    out = tmp_path / "ckpt"
    args = ("init", "--vision", str(hf_clip_dir), "--llm", str(hf_llama_dir), "--preset", "tiny")
    code, _, err = _run(capsys, *args, "--out", str(out), "--connector", str(path))
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1 and err.startswith(f"error: {path}") and re.search(message, err)
