"""Heun's second-order solver of the probability-flow ODE in sigma.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Algorithm 1
(deterministic sampling with Heun's 2nd order method): an Euler predictor followed by the trapezoidal
correction x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (d_i + d'_i) / 2, skipped on a step to sigma = 0
(line 8), where d'_i would divide by zero.
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


def heun_step(
    denoiser: Denoiser,
    x: Tensor,
    sigma: float,
    sigma_next: float,
    cond: Mapping[str, Any] | None,
) -> tuple[Tensor, Tensor]:
    """One step of Karras et al. 2022 Alg. 1 (lines 4-11) from ``sigma`` to ``sigma_next``.

    Two denoiser calls, or one when ``sigma_next == 0``. Returns (x_next, D(x, sigma)).
    """
    denoised = call_denoiser(denoiser, x, sigma, cond)
    d = to_d(x, sigma, denoised)
    dt = sigma_next - sigma
    x_next = x + d * dt
    if sigma_next == 0:
        return x_next, denoised
    d_next = to_d(x_next, sigma_next, call_denoiser(denoiser, x_next, sigma_next, cond))
    return x + (d + d_next) * (0.5 * dt), denoised


@SAMPLERS.register("heun", order=2, stochastic=False, nfe=lambda steps: 2 * steps - 1)
@torch.no_grad()
def sample_heun(
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
    """Heun sampler, Karras et al. 2022 Algorithm 1.

    ``x`` is the start at ``sigmas[0]``. For N = len(sigmas) - 1 steps on a grid ending in 0 this makes
    exactly 2N - 1 denoiser calls (two per step, one on the final step to sigma = 0); on a grid not
    ending in 0 it makes 2N. ``noise``/``generator`` are accepted and ignored (deterministic).
    """
    s = sigma_list(x, sigmas)
    for i in step_range(len(s) - 1, progress, "heun"):
        sigma, sigma_next = s[i], s[i + 1]
        x_next, denoised = heun_step(denoiser, x, sigma, sigma_next, cond)
        report(callback, i, sigma, sigma_next, x, denoised)
        x = x_next
    return x
