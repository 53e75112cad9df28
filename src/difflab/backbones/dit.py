"""Diffusion Transformer (DiT) backbone.

Peebles & Xie 2023, "Scalable Diffusion Models with Transformers" (Sec. 3.2, Fig. 3):

* patchify: a p x p conv with stride p turns (N, C, H, W) into T = (H/p)(W/p) tokens of width D;
* fixed 2-D sine-cosine positional embedding (computed from the grid, not learned, not saved);
* ``depth`` transformer blocks with adaLN-Zero conditioning: from the conditioning vector c (noise
  embedding + class embedding) each block regresses shift/scale for its two LayerNorms and gates for
  its two residual branches; the regression is zero-initialised so every block starts as the identity;
* final adaLN layer + linear to p*p*C values per token (zero-initialised), then unpatchify.

Unlike the original, the output has C channels (no learned variance), the noise level is embedded
from c_noise (see ``layers.NoiseEmbedding``), and ``dropout`` (default 0) is applied to attention
weights and after the MLP activation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import BACKBONES
from .layers import ConditionEmbedding, SelfAttention, modulate, zero_init_

DIT_PRESETS: dict[str, dict] = {
    # For 8x8 inputs on a CPU (16 tokens): ~1.25M params.
    "tiny/2": dict(image_size=8, patch_size=2, hidden_size=128, depth=4, num_heads=4),
    # For 28x28 / 32x32 inputs (196 / 256 tokens): ~5.5M params.
    "XS/2": dict(image_size=28, patch_size=2, hidden_size=192, depth=8, num_heads=3),
    # The paper's S and B configurations (Table 1), here for 32x32 inputs: ~32M and ~130M params.
    "S/2": dict(image_size=32, patch_size=2, hidden_size=384, depth=12, num_heads=6),
    "S/4": dict(image_size=32, patch_size=4, hidden_size=384, depth=12, num_heads=6),
    "B/2": dict(image_size=32, patch_size=2, hidden_size=768, depth=12, num_heads=12),
}


# ---------------------------------------------------------------------------------------------
# Positional embedding
# ---------------------------------------------------------------------------------------------


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sin-cos positional embedding (Vaswani et al. 2017, per axis), shape (grid_h*grid_w, dim).

    Half the channels encode the row index and half the column index; each half is
    [sin(pos * w_k), cos(pos * w_k)] with w_k = 10000^(-k / (dim/4)). Tokens are in row-major order.
    """
    if dim % 4:
        raise ValueError(f"hidden_size must be divisible by 4 for the 2-D sin-cos embedding, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )

    def axis(pos: Tensor) -> Tensor:
        args = pos.reshape(-1, 1) * omega[None]  # (T, dim/4)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (T, dim/2)

    return torch.cat([axis(rows), axis(cols)], dim=1).float()  # (T, dim)


# ---------------------------------------------------------------------------------------------
# Transformer block
# ---------------------------------------------------------------------------------------------


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: x (N, T, D), c (N, D) SiLU-activated -> (N, T, D)."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_hidden),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(mlp_hidden, hidden),
        )
        self.ada = zero_init_(nn.Linear(hidden, 6 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        mods = self.ada(c).unsqueeze(1).chunk(6, dim=-1)  # 6 x (N, 1, D)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """adaLN + linear head: x (N, T, D), c (N, D) SiLU-activated -> (N, T, out_dim).

    LayerNorm -> modulate(shift, scale regressed from c) -> Linear; modulation and linear start at zero,
    so the network initially outputs 0.
    """

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = zero_init_(nn.Linear(hidden, 2 * hidden))
        self.linear = zero_init_(nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).unsqueeze(1).chunk(2, dim=-1)  # (N, 1, D) each
        return self.linear(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------
# DiT
# ---------------------------------------------------------------------------------------------


@BACKBONES.register("dit", presets=DIT_PRESETS, data="image")
class DiT(nn.Module):
    """DiT: x (N, C, H, W), noise_cond (N,), class_labels (N,) | None -> (N, C, H, W).

    Args:
        in_channels: image channels C (also the output channels).
        image_size: input size, int or (H, W); both must be divisible by ``patch_size``.
        patch_size: patch side p; the sequence has (H/p)(W/p) tokens.
        hidden_size: token width D (divisible by 4 and by ``num_heads``).
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of D.
        num_classes: number of classes for conditioning (0 = unconditional model).
        dropout: dropout on attention weights and inside the MLP.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int | Sequence[int],
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if patch_size < 1 or h % patch_size or w % patch_size:
            raise ValueError(f"DiT: image size {h}x{w} is not divisible by patch_size={patch_size}")
        self.in_channels, self.image_size, self.patch_size = in_channels, (h, w), patch_size
        self.num_classes = num_classes
        self.grid = (h // patch_size, w // patch_size)

        self.input_layer = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        pos = sincos_pos_embed_2d(hidden_size, *self.grid)[None]  # (1, T, D)
        self.register_buffer("pos_embed", pos, persistent=False)
        self.cond = ConditionEmbedding(hidden_size, num_classes=num_classes)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, dropout) for _ in range(depth)
        )
        self.final = FinalLayer(hidden_size, patch_size * patch_size * in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears and patch conv, N(0, 0.02) noise MLP, adaLN-Zero."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith("cond."):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.input_layer.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.input_layer.bias)
        for layer in (self.cond.mlp[0], self.cond.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            zero_init_(block.ada)
        zero_init_(self.final.ada)
        zero_init_(self.final.linear)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(N, T, p*p*C) -> (N, C, H, W)."""
        n, p, c = x.shape[0], self.patch_size, self.in_channels
        gh, gw = self.grid
        x = x.reshape(n, gh, gw, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, gh * p, gw * p)

    @property
    def output_layer(self) -> nn.Linear:
        """The zero-initialised last linear layer (a property, so it is not saved twice)."""
        return self.final.linear

    def forward(self, x: Tensor, noise_cond: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.image_size:
            want = (self.in_channels, *self.image_size)
            raise ValueError(f"DiT expects x of shape (N, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        c = self.cond(noise_cond, class_labels, batch=x.shape[0])  # (N, D), SiLU-activated
        h = self.input_layer(x).flatten(2).transpose(1, 2)  # (N, T, D)
        h = h + self.pos_embed.to(h.dtype)
        for block in self.blocks:
            h = block(h, c)  # (N, T, D)
        h = self.final(h, c)  # (N, T, p*p*C)
        return self.unpatchify(h)  # (N, C, H, W)


