"""ADM-style UNet backbone.

The architecture of Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image Synthesis", Sec. 3),
which refines the UNet of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", Appendix B):

* residual blocks GroupNorm -> SiLU -> conv3x3 -> AdaGN(emb) -> SiLU -> dropout -> conv3x3, where AdaGN
  is ADM's ``use_scale_shift_norm``: ``GroupNorm(h) * (1 + scale) + shift`` with (scale, shift) a
  linear function of the noise/class embedding;
* an encoder of ``len(channel_mult)`` levels with ``num_res_blocks`` blocks each, a middle block
  (res, attention, res) and a decoder with ``num_res_blocks + 1`` blocks per level that concatenate the
  matching encoder activations (skip connections);
* multi-head self-attention (SDPA) at the levels named by ``attention_resolutions``;
* downsampling by a stride-2 conv3x3 (``resample="conv"``) or 2x2 average pooling
  (``resample="avgpool"``); upsampling by nearest-neighbour x2 followed by a conv3x3;
* zero-initialised last conv of every residual block, attention projection and output conv, so every
  block starts as the identity and the untrained network outputs exactly 0.

Input sizes: H and W must be divisible by ``2 ** (len(channel_mult) - 1)`` (e.g. 28 -> 14 -> 7 with
three levels). The network is fully convolutional; ``image_size`` is only used to decide which levels
get attention, and any divisible size runs. ``channels_last`` inputs are supported (and usually faster
on CPU); the output then keeps that memory format.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import BACKBONES
from .layers import ConditionEmbedding, SelfAttention, group_norm, modulate, zero_init_

UNET_PRESETS: dict[str, dict] = {
    # ~0.43M params, for 8x8 inputs (sklearn digits) on a CPU: levels 8x8 (24 ch) and 4x4 (48 ch),
    # attention only at 4x4 (where the middle block also attends).
    "tiny": dict(
        model_channels=24, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
        image_size=8, head_channels=24,
    ),
    # ~1.15M params, for 28x28 inputs (MNIST): levels 28 -> 14 -> 7 with 16, 48 and 80 channels,
    # attention at 7x7. The width grows with depth so that most parameters sit at 14x14 and 7x7, where a
    # parameter costs 4x and 16x fewer FLOPs than at 28x28: 0.24 GFLOP per forward pass against 0.38 for
    # DDPM's doubling (32, 64, 64) at the same size, 1.5-1.7x the training throughput on a CPU
    # (bench/throughput.py). One block per encoder level keeps CPU training fast.
    "small": dict(
        model_channels=16, channel_mult=(1, 3, 5), num_res_blocks=1, attention_resolutions=(7,),
        image_size=28, head_channels=32,
    ),
    # ~9M params, for 32x32 inputs (CIFAR-10 scale, GPU): DDPM's CIFAR layout at half width.
    "base": dict(
        model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
        image_size=32, head_channels=32, dropout=0.1,
    ),
}


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """ADM residual block with scale-shift conditioning: (N, C_in, H, W), (N, E) -> (N, C_out, H, W).

    The second GroupNorm has no affine parameters: the bias of ``emb_proj`` already provides a learned
    per-channel scale and shift, so the affine would be redundant work.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch, affine=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = zero_init_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (N, C_out, H, W)
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)  # (N, C_out, 1, 1) each
        h = F.silu(modulate(self.norm2(h), shift, scale))
        h = self.conv2(self.dropout(h))  # (N, C_out, H, W)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Residual spatial self-attention: x + Attn(GroupNorm(x)); (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = SelfAttention(channels, num_heads, zero_out=True)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, H*W, C)
        out = self.attn(tokens).transpose(1, 2).reshape(n, c, h, w)  # (N, C, H, W)
        return x + out


class Downsample(nn.Module):
    """Halve H and W: stride-2 conv3x3 or 2x2 average pooling. (N, C, H, W) -> (N, C, H/2, W/2)."""

    def __init__(self, channels: int, resample: str):
        super().__init__()
        if resample == "conv":
            self.op: nn.Module = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(2)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3. (N, C, H, W) -> (N, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """ResBlock -> optional attention -> optional upsample (one entry of ADM's block lists)."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None = None, up: Upsample | None = None):
        super().__init__()
        self.res, self.attn, self.up = res, attn, up

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.up is not None:
            x = self.up(x)
        return x


# ---------------------------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------------------------


def _attention_levels(image_size: int, num_levels: int, resolutions: Sequence[int]) -> set[int]:
    """Map each spatial size in ``resolutions`` to the level whose size is nearest in log scale.

    Level l has size image_size / 2**l. An exact match (the usual case) selects that level; a preset
    written for 28x28 (attention at 7) used on 32x32 images then attends at 8, the analogous level.
    Ties go to the coarser (cheaper) level.
    """
    levels = set()
    for r in resolutions:
        if r <= 0:
            raise ValueError(f"attention_resolutions must be positive sizes, got {r}")
        dist = [abs(math.log2(image_size / 2**lv) - math.log2(r)) for lv in range(num_levels)]
        levels.add(min(range(num_levels), key=lambda lv: (round(dist[lv], 9), -lv)))
    return levels


@BACKBONES.register("unet", presets=UNET_PRESETS, data="image")
class UNet(nn.Module):
    """ADM UNet: x (N, C, H, W), noise_cond (N,), class_labels (N,) | None -> (N, C, H, W).

    Args:
        in_channels: image channels C (also the output channels).
        model_channels: channels of the first level; level l has ``model_channels * channel_mult[l]``.
        channel_mult: per-level channel multipliers; ``len(channel_mult)`` levels, each but the last
            followed by a 2x downsampling.
        num_res_blocks: residual blocks per encoder level (the decoder has one more per level).
        attention_resolutions: spatial sizes (for ``image_size`` inputs) at which to add self-attention;
            the middle block always has attention.
        image_size: nominal input size (int or (H, W)); only locates the attention levels.
        num_heads: attention heads, unless ``head_channels`` is given (then heads = channels // it).
        head_channels: target channels per attention head (ADM's ``num_head_channels``); each attention
            layer uses the largest head count that divides its channels and is <= channels // it.
        dropout: dropout rate inside the residual blocks.
        num_classes: number of classes for conditioning (0 = unconditional model).
        resample: downsampling op, ``"conv"`` (stride-2 conv3x3) or ``"avgpool"``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        image_size: int | Sequence[int] = 32,
        num_heads: int = 4,
        head_channels: int | None = None,
        dropout: float = 0.0,
        num_classes: int = 0,
        resample: str = "conv",
    ):
        super().__init__()
        if resample not in ("conv", "avgpool"):
            raise ValueError(f"resample must be 'conv' or 'avgpool', got {resample!r}")
        if not channel_mult or num_res_blocks < 1 or model_channels < 1 or in_channels < 1:
            raise ValueError("UNet needs in_channels, model_channels, num_res_blocks >= 1 and a channel_mult")
        if isinstance(channel_mult, str) or not all(isinstance(m, int) and m >= 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a list of positive integers, got {channel_mult!r}")
        size = min(image_size) if isinstance(image_size, Sequence) else int(image_size)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_levels = len(channel_mult)
        self.attention_levels = _attention_levels(size, self.num_levels, attention_resolutions)

        def heads(ch: int) -> int:
            if head_channels is None:
                return num_heads
            # Largest head count that divides ch with heads of at least ~head_channels channels, so
            # presets survive a model_channels override (e.g. 32 channels, head_channels=24 -> 1 head).
            return max(h for h in range(1, max(1, ch // head_channels) + 1) if ch % h == 0)

        emb_dim = 4 * model_channels
        self.cond = ConditionEmbedding(emb_dim, num_classes=num_classes)
        self.input_layer = nn.Conv2d(in_channels, model_channels, 3, padding=1)

        # Encoder: every module produces one skip activation.
        self.down = nn.ModuleList()
        skip_chs, ch = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            out = model_channels * mult
            for _ in range(num_res_blocks):
                attn = AttentionBlock(out, heads(out)) if level in self.attention_levels else None
                self.down.append(Stage(ResBlock(ch, out, emb_dim, dropout), attn))
                ch = out
                skip_chs.append(ch)
            if level < self.num_levels - 1:
                self.down.append(Downsample(ch, resample))
                skip_chs.append(ch)

        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, emb_dim, dropout),
                AttentionBlock(ch, heads(ch)),
                ResBlock(ch, ch, emb_dim, dropout),
            ]
        )

        # Decoder: every stage consumes one skip activation (concatenated on channels).
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            out = model_channels * mult
            for i in range(num_res_blocks + 1):
                attn = AttentionBlock(out, heads(out)) if level in self.attention_levels else None
                upsample = Upsample(out) if level > 0 and i == num_res_blocks else None
                self.up.append(Stage(ResBlock(ch + skip_chs.pop(), out, emb_dim, dropout), attn, upsample))
                ch = out

        self.out_norm = group_norm(ch)
        self.output_layer = zero_init_(nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: Tensor, noise_cond: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        factor = 2 ** (self.num_levels - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"UNet with {self.num_levels} levels needs H and W divisible by {factor}, "
                f"got {x.shape[2]}x{x.shape[3]}; pad or crop the images"
            )
        emb = self.cond(noise_cond, class_labels, batch=x.shape[0])  # (N, E), SiLU-activated

        h = self.input_layer(x)  # (N, C0, H, W)
        skips = [h]
        for module in self.down:
            h = module(h, emb)  # (N, C_l, H / 2^l, W / 2^l)
            skips.append(h)

        h = self.mid[0](h, emb)
        h = self.mid[1](h)
        h = self.mid[2](h, emb)  # (N, C_last, H / 2^(L-1), W / 2^(L-1))

        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)

        return self.output_layer(F.silu(self.out_norm(h)))  # (N, C, H, W)
