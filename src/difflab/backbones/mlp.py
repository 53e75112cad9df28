"""Residual MLP backbone for tabular / low-dimensional data.

A pre-norm residual MLP in the spirit of the tabular diffusion networks of Kotelnikov et al. 2023
("TabDDPM") and the residual MLPs of Gorishniy et al. 2021 ("Revisiting Deep Learning Models for
Tabular Data"), conditioned like DiT (Peebles & Xie 2023, Sec. 3.2) through adaptive LayerNorm:

    x (N, D) -> Linear -> [ h + Linear2(Dropout(SiLU(Linear1(adaLN(h, c))))) ] x depth
             -> SiLU -> Linear -> (N, D)

where adaLN(h, c) = LayerNorm(h) * (1 + scale(c)) + shift(c) and c is the noise(+class) embedding.

Initialisation and head were chosen by short CPU runs on the 8-Gaussian 2-D mixture ("gmm2d", "base"
preset, 600 AdamW steps, mean over 3 seeds of the log-likelihood gap of samples, lower is better):

* the modulation starts at zero (each block starts with a plain LayerNorm) and the output linear is
  zero-initialised, so the untrained network outputs exactly 0 (as in ADM / DiT);
* the blocks' second linear keeps its default init: zero-initialising it as well (ADM-style) raised
  the gap from ~0.38 to ~0.53 nats;
* the head is SiLU -> Linear without normalisation: the scale of the residual stream carries
  information when regressing a few coordinates; a DiT-style adaLN head gave ~0.59 nats.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from . import BACKBONES
from .layers import ConditionEmbedding, modulate, zero_init_

MLP_PRESETS: dict[str, dict] = {
    "small": dict(hidden=128, depth=3),  # ~0.23M params
    "base": dict(hidden=256, depth=4),  # ~1.2M params
    "large": dict(hidden=512, depth=6),  # ~6.7M params
}


# ---------------------------------------------------------------------------------------------
# Residual block
# ---------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block with adaLN: h (N, W), c (N, E) SiLU-activated -> (N, W)."""

    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = zero_init_(nn.Linear(emb_dim, 2 * width))
        self.fc1 = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)  # (N, W) each
        out = F.silu(self.fc1(modulate(self.norm(h), shift, scale)))  # (N, W)
        return h + self.fc2(self.dropout(out))


# ---------------------------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------------------------


@BACKBONES.register("mlp", presets=MLP_PRESETS, data="tabular")
class ResidualMLP(nn.Module):
    """Residual MLP: x (N, D), noise_cond (N,), class_labels (N,) | None -> (N, D).

    Args:
        in_features: data dimension D (also the output dimension).
        hidden: width W of the residual stream (and of the conditioning embedding).
        depth: number of residual blocks.
        dropout: dropout rate inside the blocks.
        num_classes: number of classes for conditioning (0 = unconditional model).
    """

    def __init__(
        self,
        *,
        in_features: int,
        hidden: int = 256,
        depth: int = 4,
        dropout: float = 0.0,
        num_classes: int = 0,
    ):
        super().__init__()
        if in_features < 1 or hidden < 2 or depth < 0:
            raise ValueError(
                f"MLP needs in_features >= 1, hidden >= 2, depth >= 0; got {in_features}, {hidden}, {depth}"
            )
        self.in_features = in_features
        self.num_classes = num_classes
        self.cond = ConditionEmbedding(hidden, num_classes=num_classes)
        self.input_layer = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, hidden, dropout) for _ in range(depth))
        self.output_layer = zero_init_(nn.Linear(hidden, in_features))

    def forward(self, x: Tensor, noise_cond: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects x of shape (N, {self.in_features}), got {tuple(x.shape)}")
        c = self.cond(noise_cond, class_labels, batch=x.shape[0])  # (N, W), SiLU-activated
        h = self.input_layer(x)  # (N, W)
        for block in self.blocks:
            h = block(h, c)  # (N, W)
        return self.output_layer(F.silu(h))  # (N, D)
