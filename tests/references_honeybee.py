"""Honeybee's C-Abstractor, built as Honeybee builds it, on the real timm: the parity reference.

Source: kakaobrain/honeybee at commit 68a8d843404b00be65ff16bb149f6a0107c66dff (Honeybee pins
timm==0.9.8 in requirements.txt; the RegNet code below is the same in timm 1.0.x):

* ``honeybee/projectors/projectors.py``: ``build_pos_embeds`` (L15-25), ``build_mlp`` (L48-53),
  ``Projector.forward`` (L84-103: prenorm, ``x += pos_emb``, ``_forward``, eos tokens) and
  ``_load_from_state_dict`` (L105-112: drops an old checkpoint's CLS slot of ``pos_emb``),
  ``ConvProjector._forward`` (L127-136), ``CAbstractor.build_net`` (L139-177: ``RegStage`` with
  ``stride=1, dilation=1, act_layer=nn.SiLU, norm_layer=LayerNorm2d``, ``nn.AdaptiveAvgPool2d``,
  ``net = Sequential(s1, sampler, s2)``, or ``net = sampler`` when depth is 0);
* ``honeybee/visual_encoders/visual_encoder_mixin.py`` L27-34: the CLS token (index 0) is dropped
  before the projector; ``clip.py`` L9-10: ``num_input_tokens = num_positions - 1``;
* ``honeybee/common_layers.py`` L55-70, ``_init_weights``: Conv2d/Linear N(0, 0.02) with zero
  bias, LayerNorm (1, 0); the position embedding keeps ``build_pos_embeds``' trunc-normal 0.02.

Differences from Honeybee's file, none of which changes a number: no HF config object (plain
arguments); ``x + pos_emb`` instead of Honeybee's in-place ``x += pos_emb`` (which would write
into the caller's features); ``einops.rearrange`` written as reshape/transpose; no prenorm or eos
tokens (Honeybee's c-abs.yaml sets ``prenorm: False``, ``num_eos_tokens: 0``).  ``se_ratio``
is not a Honeybee option (timm's default 0.25 applies); passing one is a test-only extension.
The state-dict keys are Honeybee's (``net.0.b1.conv1.bn.weight``, ``readout.0.weight``, ...).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from tests.references import import_references


class HoneybeeCAbstractor(nn.Module):
    """``CAbstractor`` of projectors.py with Honeybee's module names; input without CLS."""

    def __init__(
        self,
        *,
        encoder_hidden_size: int,
        hidden_size: int,
        output_hidden_size: int,
        depth: int,
        mlp_depth: int,
        num_query_tokens: int,
        num_input_tokens: int,
        pos_emb: bool = True,
        se_ratio: float | None = None,  # None: Honeybee (not passed, timm's 0.25)
    ) -> None:
        import_references()
        from timm.layers import LayerNorm2d
        from timm.models.regnet import RegStage

        super().__init__()
        self.num_input_tokens = num_input_tokens
        self.pos_emb = None
        if pos_emb:  # build_pos_embeds
            self.pos_emb = nn.Parameter(torch.zeros(1, num_input_tokens, encoder_hidden_size))
            nn.init.trunc_normal_(self.pos_emb, mean=0.0, std=0.02)
        hw = math.isqrt(num_query_tokens)
        assert hw * hw == num_query_tokens, "n_queries must be square number"
        extra = {} if se_ratio is None else {"se_ratio": se_ratio}
        reg_block = partial(
            RegStage, stride=1, dilation=1, act_layer=nn.SiLU, norm_layer=LayerNorm2d, **extra
        )
        s1 = reg_block(depth, encoder_hidden_size, hidden_size)
        sampler = nn.AdaptiveAvgPool2d((hw, hw))
        s2 = reg_block(depth, hidden_size, hidden_size)
        if depth:
            self.net = nn.Sequential(s1, sampler, s2)
            self.readout = build_mlp(mlp_depth, hidden_size, output_hidden_size)
        else:
            self.net = sampler
            self.readout = build_mlp(mlp_depth, encoder_hidden_size, output_hidden_size)

    def forward(self, x_NPC: Tensor) -> Tensor:
        """``Projector.forward`` then ``ConvProjector._forward``: (B, G², C) → (B, T, out)."""
        if self.pos_emb is not None:
            x_NPC = x_NPC + self.pos_emb
        hw = int(x_NPC.size(1) ** 0.5)
        b, _, d = x_NPC.shape
        x = x_NPC.transpose(1, 2).reshape(b, d, hw, hw)  # "b (h w) d -> b d h w"
        x = self.net(x)
        x = x.flatten(2).transpose(1, 2)  # "b d h w -> b (h w) d"
        return self.readout(x)

    def project_encoder_output(self, hidden_NLC: Tensor) -> Tensor:
        """``postprocess_for_projector`` (drop CLS at index 0), then the projector."""
        return self(hidden_NLC[:, 1:])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Honeybee hard-codes the key "abstractor.pos_emb"; here it is prefix-relative.
        pos_emb = state_dict.get(prefix + "pos_emb")
        if pos_emb is not None and pos_emb.size(1) == self.pos_emb.size(1) + 1:
            state_dict[prefix + "pos_emb"] = pos_emb[:, 1:]  # obsolete CLS slot
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def build_mlp(depth: int, hidden_size: int, output_hidden_size: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(hidden_size, output_hidden_size)]
    for _ in range(1, depth):
        layers.append(nn.SiLU())
        layers.append(nn.Linear(output_hidden_size, output_hidden_size))
    return nn.Sequential(*layers)


def honeybee_init_(module: nn.Module) -> None:
    """``HoneybeePreTrainedModel._init_weights`` applied to every sub-module (HF post_init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Embedding, nn.Linear)):
            m.weight.data.normal_(mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.LayerNorm):
            m.bias.data.zero_()
            m.weight.data.fill_(1.0)
