"""EDM stochastic sampler ("churn" + Heun).

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Algorithm 2:
at each level sigma_i in [S_tmin, S_tmax] raise the noise to sigma_hat = sigma_i (1 + gamma_i) with
gamma_i = min(S_churn / N, sqrt(2) - 1) by adding fresh noise of std sqrt(sigma_hat^2 - sigma_i^2)
S_noise, then take the Heun step of Algorithm 1 from sigma_hat to sigma_{i+1}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ._core import SAMPLERS, Callback, Denoiser, NoiseFn, report, resolve_noise, sigma_list, step_range
from .heun import heun_step


@SAMPLERS.register("edm_stochastic", order=2, stochastic=True, nfe=lambda steps: 2 * steps - 1)
@torch.no_grad()
def sample_edm_stochastic(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Karras et al. 2022 Algorithm 2 with options S_churn, S_tmin, S_tmax, S_noise.

    ``x`` is the start at ``sigmas[0]``. For N = len(sigmas) - 1 steps on a grid ending in 0 this makes
    exactly 2N - 1 denoiser calls (as Heun). gamma_i = min(s_churn / N, sqrt(2) - 1) when
    s_tmin <= sigma_i <= s_tmax, else 0; a step with gamma_i = 0 draws no noise, so ``s_churn=0``
    reproduces ``heun`` bit for bit. Noise comes from ``noise(sigma_i, sigma_{i+1})`` if given, else
    from ``torch.randn`` with ``generator``. The callback's ``sigma``/``x`` are sigma_hat and x_hat.
    """
    if s_churn < 0 or s_noise < 0:
        raise ConfigError(f"s_churn/s_noise: must be >= 0, got {s_churn!r}/{s_noise!r}")
    s = sigma_list(x, sigmas)
    n = len(s) - 1
    draw = resolve_noise(noise, x, generator)
    gamma_max = min(s_churn / n, math.sqrt(2.0) - 1.0)
    for i in step_range(n, progress, "edm_stochastic"):
        sigma, sigma_next = s[i], s[i + 1]
        gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.0
        if gamma > 0 and sigma > 0:
            sigma_hat = sigma * (1.0 + gamma)
            eps = draw(sigma, sigma_next)
            x = x + eps * (s_noise * math.sqrt(sigma_hat**2 - sigma**2))
        else:
            sigma_hat = sigma
        x_next, denoised = heun_step(denoiser, x, sigma_hat, sigma_next, cond)
        report(callback, i, sigma_hat, sigma_next, x, denoised)
        x = x_next
    return x
