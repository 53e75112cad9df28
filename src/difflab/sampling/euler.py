"""First-order Euler solver of the probability-flow ODE in sigma.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Algorithm 1
with the second-order correction (lines 9-11) removed: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i,
d_i = (x_i - D(x_i, sigma_i)) / sigma_i.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ._core import (
    SAMPLERS,
    Callback,
    Denoiser,
    NoiseFn,
    call_denoiser,
    report,
    sigma_list,
    step_range,
    to_d,
)


@SAMPLERS.register("euler", order=1, stochastic=False, nfe=lambda steps: steps)
@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Euler steps along the PF-ODE (Karras et al. 2022, Alg. 1 without the Heun correction).

    ``x`` is the start at ``sigmas[0]``. Exactly N denoiser calls for N = len(sigmas) - 1 steps.
    A step to sigma = 0 lands on the denoised estimate. ``noise``/``generator`` are accepted for a
    uniform signature and ignored (the sampler is deterministic).
    """
    s = sigma_list(x, sigmas)
    for i in step_range(len(s) - 1, progress, "euler"):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = call_denoiser(denoiser, x, sigma, cond)
        report(callback, i, sigma, sigma_next, x, denoised)
        x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
    return x
