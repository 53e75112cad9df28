"""Building blocks shared by every difflab backbone.

Nothing here knows about noise processes or preconditioning. The pieces are:

* ``ConditionEmbedding``: noise level (+ optional class label) -> one conditioning vector per sample,
  the role of the timestep/label embedding of ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat
  GANs", Sec. 3) and DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", Sec. 3.2).
* ``SelfAttention``: multi-head self-attention over tokens through ``F.scaled_dot_product_attention``.
* small helpers: ``modulate``, ``zero_init_``, ``group_norm``.

Noise-level features
--------------------
Backbones receive ``noise_cond = c_noise = ln(sigma) / 4`` (Karras et al. 2022, "EDM", Table 1), which
covers roughly [-2.5, 1.5] for sigma in [0.002, 80]. ``NoiseEmbedding`` maps it to ``[cos(w_k c),
sin(w_k c)]`` with angular frequencies ``w_k`` log-spaced over [0.1, 100] rad per unit of c_noise:

* the lowest frequency turns by only ~0.4 rad over the whole range, so its features are a monotone,
  almost linear read-out of the noise level (no aliasing / wrap-around);
* the highest has a period of ~0.06 in c_noise (a factor ~1.3 in sigma): sigmas 5 % apart already
  differ by ~1.2 rad in phase, finer than any practical sampling grid.

This spans three decades, comparable to ADM's sinusoidal embedding of integer timesteps in [0, 1000)
(0.1 to 1000 rad over the range), but expressed directly in c_noise units, so the caller needs no
"x 1000" rescaling and no features are wasted on frequencies that are constant over the range.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def zero_init_(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero in place and return it (ADM ``zero_module``)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def num_groups(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """Largest group count <= ``max_groups`` that divides ``channels`` with >= 4 channels per group.

    ADM always uses 32 groups; like EDM we cap the groups so that small layers (e.g. 16 or 32
    channels) still normalise over a few channels rather than degenerating to instance norm.
    """
    for g in range(min(max_groups, channels // min_channels_per_group), 0, -1):
        if channels % g == 0:
            return g
    return 1


def group_norm(channels: int, *, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm with ``num_groups(channels)`` groups and eps 1e-5."""
    return nn.GroupNorm(num_groups(channels), channels, eps=1e-5, affine=affine)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive affine ``x * (1 + scale) + shift`` (AdaGN in ADM, adaLN in DiT).

    ``shift`` and ``scale`` must already broadcast against ``x`` (e.g. (N, C, 1, 1) for (N, C, H, W)).
    """
    return torch.addcmul(shift, x, 1 + scale)


# ---------------------------------------------------------------------------------------------
# Conditioning: noise level and class label
# ---------------------------------------------------------------------------------------------


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of c_noise: (N,) -> (N, dim), frequencies log-spaced in [min_freq, max_freq].

    See the module docstring for why [0.1, 100] rad per unit suits c_noise = ln(sigma) / 4.
    """

    def __init__(self, dim: int, *, min_freq: float = 0.1, max_freq: float = 100.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"NoiseEmbedding: dim must be even and >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(torch.linspace(math.log(max_freq), math.log(min_freq), half, dtype=torch.float64))
        # Constants, not learned and not saved: recomputed identically on construction.
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.dim = dim

    def forward(self, noise_cond: Tensor) -> Tensor:
        args = noise_cond.float()[:, None] * self.freqs.float()[None, :]  # (N, dim/2), always fp32
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (N, dim)


class ConditionEmbedding(nn.Module):
    """(noise_cond (N,), class_labels (N,) | None) -> SiLU(emb) of shape (N, emb_dim).

    ``emb = MLP(NoiseEmbedding(noise_cond)) + label_table[class_labels]`` as in ADM/DiT. The label table
    has ``num_classes + 1`` rows; row ``num_classes`` is the "unconditional" (null) label used for
    classifier-free guidance (Ho & Salimans 2022), and ``class_labels=None`` selects it for the whole
    batch. With ``num_classes == 0`` labels are ignored. The SiLU that every backbone applies before its
    per-block modulation projections is applied once here, so blocks hold a plain ``nn.Linear``.
    """

    def __init__(self, emb_dim: int, *, num_classes: int = 0, freq_dim: int | None = None):
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        freq_dim = freq_dim or min(256, 2 * (emb_dim // 2))
        self.noise = NoiseEmbedding(freq_dim)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = num_classes
        self.label: nn.Embedding | None = None
        if num_classes > 0:
            self.label = nn.Embedding(num_classes + 1, emb_dim)
            nn.init.normal_(self.label.weight, std=0.02)

    def forward(self, noise_cond: Tensor, class_labels: Tensor | None = None, *, batch: int) -> Tensor:
        if noise_cond.dim() == 0:
            noise_cond = noise_cond.expand(batch)
        if noise_cond.shape != (batch,):
            raise ValueError(f"noise_cond must have shape ({batch},), got {tuple(noise_cond.shape)}")
        feats = self.noise(noise_cond).to(self.mlp[0].weight.dtype)  # (N, freq_dim)
        emb = self.mlp(feats)  # (N, emb_dim)
        if self.label is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=emb.device)
            elif class_labels.shape != (batch,):
                raise ValueError(f"class_labels must have shape ({batch},), got {tuple(class_labels.shape)}")
            emb = emb + self.label(class_labels)  # (N, emb_dim)
        return F.silu(emb)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention on tokens (N, L, C) -> (N, L, C), via SDPA (Vaswani et al. 2017).

    ``zero_out=True`` zero-initialises the output projection so a residual attention block starts as the
    identity (ADM's ``AttentionBlock``); DiT instead gates the residual with adaLN-Zero.
    """

    def __init__(self, dim: int, num_heads: int, *, dropout: float = 0.0, zero_out: bool = False):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"attention: {dim} channels are not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if zero_out:
            zero_init_(self.proj)

    def forward(self, x: Tensor) -> Tensor:
        n, length, c = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, C/heads)
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        h = h.transpose(1, 2).reshape(n, length, c)  # (N, L, C)
        return self.proj(h)

