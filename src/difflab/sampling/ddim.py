"""DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12) in EDM coordinates.

DDIM works on the variance-preserving iterate x_vp = sqrt(alpha_bar) (x0 + sigma eps) with
alpha_bar = 1 / (1 + sigma^2). With eps_hat = (x - D) / sigma, eq. 12 reads

    x_vp' = sqrt(ab') D + sqrt(1 - ab' - s_eta^2) eps_hat + s_eta z,
    s_eta^2 = eta^2 (1 - ab') / (1 - ab) (1 - ab / ab')                      (eq. 16),

and dividing by sqrt(ab') brings it back to EDM coordinates x = x_vp / sqrt(alpha_bar):

    x' = D + sqrt((1 - ab' - s_eta^2) / ab') eps_hat + (s_eta / sqrt(ab')) z.

(In sigma alone the noise std is s_eta / sqrt(ab') = eta sigma' sqrt(sigma^2 - sigma'^2) / sigma.)
With eta = 0 this is x' = D + sigma' eps_hat, which is exactly the Euler step in sigma.
"""

from __future__ import annotations

import math
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
    to_d,
)


def _one_minus_alpha_bar(sigma: float) -> float:
    """1 - alpha_bar = sigma^2 / (1 + sigma^2), without the cancellation of 1 - 1/(1 + sigma^2)."""
    return sigma * sigma / (1.0 + sigma * sigma)


def ddim_variance(sigma: float, sigma_next: float, eta: float = 1.0) -> float:
    """DDIM eq. 16 in VP units: s_eta^2 = eta^2 (1 - ab') / (1 - ab) (1 - ab / ab').

    With eta = 1 this is the DDPM posterior variance beta-tilde (Ho et al. 2020, eq. 7).
    """
    if sigma_next == 0:
        return 0.0
    ab_ratio = (1.0 + sigma_next**2) / (1.0 + sigma**2)  # ab / ab'
    return eta**2 * _one_minus_alpha_bar(sigma_next) / _one_minus_alpha_bar(sigma) * (1.0 - ab_ratio)


def ddim_step(
    x: Tensor,
    denoised: Tensor,
    sigma: float,
    sigma_next: float,
    eta: float,
    noise: NoiseFn,
    noise_var: float | None = None,
) -> Tensor:
    """One DDIM step (Song et al. 2021, eq. 12) from ``sigma`` to ``sigma_next`` in EDM coordinates.

    The mean uses s_eta^2 from ``eta`` (eq. 16). ``noise_var`` (VP units, optional) replaces the
    variance of the added noise while keeping that mean; DDPM uses it for the beta choice.
    ``noise(sigma, sigma_next)`` is called only when noise is added.
    """
    ab_next = 1.0 / (1.0 + sigma_next**2)
    var_eta = ddim_variance(sigma, sigma_next, eta)
    var = var_eta if noise_var is None else noise_var
    c_eps = math.sqrt(max(_one_minus_alpha_bar(sigma_next) - var_eta, 0.0) / ab_next)
    x_next = denoised + to_d(x, sigma, denoised) * c_eps
    if var > 0:
        x_next = x_next + noise(sigma, sigma_next) * math.sqrt(var / ab_next)
    return x_next


@SAMPLERS.register("ddim", order=1, stochastic=False, nfe=lambda steps: steps)
@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    eta: float = 0.0,
) -> Tensor:
    """DDIM sampler (Song et al. 2021, eq. 12) with alpha_bar = 1 / (1 + sigma^2) at every level.

    ``x`` is the start at ``sigmas[0]``. Exactly N denoiser calls for N = len(sigmas) - 1 steps.
    ``eta = 0`` (default) is deterministic and equals Euler in sigma; ``eta > 0`` adds noise (``eta = 1``
    is ancestral DDPM sampling with the posterior variance) drawn from ``noise(sigma, sigma_next)`` or
    ``torch.randn`` with ``generator``. Registered ``stochastic=False`` because of the default.
    """
    if not (math.isfinite(eta) and 0.0 <= eta <= 1.0):
        raise ConfigError(f"eta: must be in [0, 1], got {eta!r}")
    s = sigma_list(x, sigmas)
    noise_fn = resolve_noise(noise, x, generator)
    for i in step_range(len(s) - 1, progress, "ddim"):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = call_denoiser(denoiser, x, sigma, cond)
        report(callback, i, sigma, sigma_next, x, denoised)
        x = ddim_step(x, denoised, sigma, sigma_next, eta, noise_fn)
    return x
