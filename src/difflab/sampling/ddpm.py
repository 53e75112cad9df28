"""Ancestral DDPM sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Algorithm 2).

Each step from sigma to sigma' samples the forward-process posterior q(x_{t-1} | x_t, x0 = D) of
Ho et al. 2020 eq. 6-7, with alpha_bar = 1 / (1 + sigma^2) and alpha_bar' = 1 / (1 + sigma'^2) for
the two levels, so it works on any grid (beta_t = 1 - alpha_bar / alpha_bar'). Its mean is DDIM's
with eta = 1 (Song et al. 2021, eq. 12 and 16), so the step is ``ddim_step`` with eta = 1. Two fixed
variances (Nichol & Dhariwal 2021, "Improved DDPM", Sec. 3.1; Ho et al. 2020 Sec. 3.2):

* ``"posterior"``: beta-tilde = (1 - ab') / (1 - ab) beta_t (DDIM eta = 1),
* ``"beta"``: beta_t itself.

The last step to sigma = 0 returns the denoised estimate (no noise).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ._core import (
    SAMPLERS,
    Callback,
    Denoiser,
    NoiseFn,
    call_denoiser,
    report,
    resolve_noise,
    sigma_list,
    step_range,
)
from .ddim import ddim_step

VARIANCES = ("posterior", "beta")


def _beta(sigma: float, sigma_next: float) -> float:
    """beta_t = 1 - ab / ab' = (sigma^2 - sigma'^2) / (1 + sigma^2)."""
    return (sigma**2 - sigma_next**2) / (1.0 + sigma**2)


@SAMPLERS.register("ddpm", order=1, stochastic=True, nfe=lambda steps: steps)
@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    variance: str = "posterior",
) -> Tensor:
    """Ho et al. 2020 Algorithm 2 in EDM coordinates on an arbitrary descending grid.

    ``x`` is the start at ``sigmas[0]``. Exactly N denoiser calls for N = len(sigmas) - 1 steps.
    ``variance`` is ``"posterior"`` (beta-tilde) or ``"beta"``. Noise comes from
    ``noise(sigma, sigma_next)`` if given, else ``torch.randn`` with ``generator``.
    """
    if variance not in VARIANCES:
        raise ConfigError(f"variance: must be one of {', '.join(VARIANCES)}, got {variance!r}")
    s = sigma_list(x, sigmas)
    noise_fn = resolve_noise(noise, x, generator)
    for i in step_range(len(s) - 1, progress, "ddpm"):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = call_denoiser(denoiser, x, sigma, cond)
        report(callback, i, sigma, sigma_next, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        var = None if variance == "posterior" else _beta(sigma, sigma_next)
        x = ddim_step(x, denoised, sigma, sigma_next, 1.0, noise_fn, noise_var=var)
    return x
