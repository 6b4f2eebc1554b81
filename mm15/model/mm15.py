"""The assembled MM1.5 model: image encoder → C-Abstractor → decoder (MM1 §3, Fig. 1).

Images enter as tiles (sub-images, overview images, video frames: every one a ``r×r`` crop
made by :mod:`mm15.data.splitting`). All tiles of a batch go through the encoder in one call;
the connector turns each into ``connector.num_tokens`` vectors; those vectors replace, in order,
the embeddings at the positions of the image placeholder token in the text.  How many
placeholders an image gets is decided by one function, :func:`mm15.data.layout.plan_image`;
here we only check that the two agree, with an error that names both numbers.

Shape legend: B batch, T sequence, N tiles, K tokens per tile, D decoder width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from mm15.config import ModelConfig
from mm15.model.attention import KVCache
from mm15.model.connector import CAbstractor
from mm15.model.lm import Decoder, DecoderOutput
from mm15.model.vision import VisionTransformer

IGNORE_INDEX = -100


@dataclass
class MM15Output:
    logits: Tensor  # (B, T, V); (M, V) for the M selected positions with ``logits_at_BT``
    loss: Tensor | None  # mean next-token cross entropy over selected positions, + MoE aux loss
    lm_loss: Tensor | None  # the cross-entropy part alone
    aux_loss: Tensor | None  # weighted MoE load-balance + router z-loss (None for dense)
    decoder: DecoderOutput


class MM15(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionTransformer(cfg.vision)
        self.connector = CAbstractor(
            cfg.connector,
            enc_width=cfg.vision.width,
            enc_grid=cfg.vision.image_size // cfg.vision.patch_size,
            out_dim=cfg.lm.dim,
        )
        self.lm = Decoder(cfg.lm)

    def init_weights(self) -> None:
        self.vision.init_weights()
        self.connector.init_weights()
        self.lm.init_weights()

    # ---- images -------------------------------------------------------------------------------

    def encode_tiles(self, pixels_NCHW: Tensor) -> Tensor:
        """(N, 3, r, r) tiles → (N, K, D) decoder-width image tokens, all tiles in one call."""
        feats_NLC = self.vision(pixels_NCHW)
        return self.connector(feats_NLC)

    def embed(self, input_ids_BT: Tensor, pixels_NCHW: Tensor | None = None) -> Tensor:
        """Text embeddings with image tokens placed at the image-placeholder positions.

        Tiles are consumed in order: row by row through the batch, each tile's K tokens filling
        the next K placeholder positions.
        """
        if pixels_NCHW is not None and self.cfg.image_token_id < 0:
            raise ValueError("ModelConfig.image_token_id is not set; take it from the tokenizer")
        embeds_BTD = self.lm.embed(input_ids_BT)
        is_image_BT = input_ids_BT == self.cfg.image_token_id
        return place_image_features(
            embeds_BTD,
            is_image_BT,
            pixels_NCHW,
            encode_tiles=self.encode_tiles,
            tokens_per_tile=self.cfg.connector.num_tokens,
            counted_by="mm15.data.layout.plan_image",
        )

    # ---- forward ------------------------------------------------------------------------------

    def forward(
        self,
        input_ids_BT: Tensor,
        *,
        pixels_NCHW: Tensor | None = None,
        labels_BT: Tensor | None = None,
        position_ids_BT: Tensor | None = None,
        document_ids_BT: Tensor | None = None,
        cache: KVCache | None = None,
        always_encode: bool = False,
        logits_at_BT: Tensor | None = None,
    ) -> MM15Output:
        """Logits, and the training loss when ``labels_BT`` is given.

        ``labels_BT`` is aligned with ``input_ids_BT`` (the token each position *is*); the loss
        predicts position t+1 from t wherever the label is not ``IGNORE_INDEX`` and both positions
        belong to the same packed document.  ``document_ids_BT`` isolates packed documents in
        attention (see :class:`mm15.model.lm.Decoder`).  ``always_encode`` runs the image tower
        even for a text-only batch (on one zero tile, contributing exactly zero), because FSDP2
        needs every rank to run the same modules in every step.

        ``logits_at_BT`` (bool, B × T) computes logits only where it is True, in row-major order:
        training then projects only the positions that have a target onto the vocabulary (in SFT
        a few percent of them), with the same loss and gradients.  It excludes ``labels_BT``.
        """
        if logits_at_BT is not None and labels_BT is not None:
            raise ValueError("give labels_BT or logits_at_BT, not both")
        embeds_BTD = self.embed(input_ids_BT, pixels_NCHW)
        if always_encode and pixels_NCHW is None:
            r = self.cfg.image.resolution
            blank = self.lm.embed.weight.new_zeros(1, 3, r, r)
            embeds_BTD = embeds_BTD + 0.0 * self.encode_tiles(blank).sum()
        out = self.lm(
            embeds_BTD=embeds_BTD,
            position_ids_BT=position_ids_BT,
            document_ids_BT=document_ids_BT,
            cache=cache,
            compute_logits=logits_at_BT is None,
        )
        if logits_at_BT is not None:
            out.logits = self.lm.logits(out.hidden[logits_at_BT])
        lm_loss = (
            None if labels_BT is None else next_token_loss(out.logits, labels_BT, document_ids_BT)
        )
        loss = lm_loss
        if lm_loss is not None and out.aux_loss is not None:
            loss = lm_loss + out.aux_loss
        return MM15Output(
            logits=out.logits, loss=loss, lm_loss=lm_loss, aux_loss=out.aux_loss, decoder=out
        )


def place_image_features(
    embeds_BTD: Tensor,
    is_image_BT: Tensor,
    pixels_NCHW: Tensor | None,
    *,
    encode_tiles: Callable[[Tensor], Tensor],
    tokens_per_tile: int,
    counted_by: str,
) -> Tensor:
    """``embeds_BTD`` with the tiles' image tokens at the image-placeholder positions (the
    indicators and separators around them stay text, MM1.5 §3.5, Table 3).  Tiles fill the
    positions in order, row by row through the batch, K tokens each; a count that does not
    match is a ValueError naming ``counted_by``, the one place image tokens are counted."""
    n_slots = int(is_image_BT.sum())
    n_tiles = 0 if pixels_NCHW is None else pixels_NCHW.shape[0]
    k = tokens_per_tile
    if n_slots != n_tiles * k:
        raise ValueError(
            f"the text has {n_slots} image-token positions but {n_tiles} tiles × {k} tokens "
            f"= {n_tiles * k} image features were given; image tokens must be counted by "
            f"{counted_by}"
        )
    if pixels_NCHW is None or n_tiles == 0:
        return embeds_BTD
    image_ND = encode_tiles(pixels_NCHW).reshape(-1, embeds_BTD.shape[-1])
    mask_BTD = is_image_BT.unsqueeze(-1).expand_as(embeds_BTD)
    return embeds_BTD.masked_scatter(mask_BTD, image_ND.to(embeds_BTD.dtype))


def next_token_loss(
    logits_BTV: Tensor, labels_BT: Tensor, document_ids_BT: Tensor | None = None
) -> Tensor:
    """Mean cross entropy of predicting ``labels[:, t+1]`` from ``logits[:, t]``.

    A pair that crosses a packed-document boundary is never a target, whatever the labels say.
    With no selected position the loss is 0 (kept in the graph so every rank can backprop).
    """
    total, n = next_token_loss_sum(logits_BTV, labels_BT, document_ids_BT)
    return total / n.clamp(min=1)


def next_token_loss_sum(
    logits_BTV: Tensor, labels_BT: Tensor, document_ids_BT: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(summed cross entropy, number of target tokens) — what data-parallel training needs to
    normalise by the token count of the whole global batch rather than per rank."""
    targets_BT = next_token_targets(labels_BT, document_ids_BT)
    logits = logits_BTV[:, :-1].float()
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets_BT.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total, (targets_BT != IGNORE_INDEX).sum()


def next_token_targets(labels_BT: Tensor, document_ids_BT: Tensor | None = None) -> Tensor:
    """(B, T-1) the label each position predicts; ``IGNORE_INDEX`` across document boundaries."""
    targets_BT = labels_BT[:, 1:].clone()
    if document_ids_BT is not None:
        targets_BT[document_ids_BT[:, 1:] != document_ids_BT[:, :-1]] = IGNORE_INDEX
    return targets_BT
