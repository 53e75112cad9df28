"""DPM-Solver++ in data-prediction form, in EDM coordinates.

Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models". With alpha = 1 and sigma as in EDM (x = x0 + sigma n), the half-log-SNR is
lambda = -log sigma, and a step from sigma to sigma' has h = lambda' - lambda = log(sigma / sigma') > 0.
The exact solution of the probability-flow ODE written for the data prediction D (paper eq. 9) is

    x' = (sigma' / sigma) x + sigma' * integral_lambda^lambda' e^l D(x_l, sigma_l) dl,

and expanding D in lambda around the current point gives, with D^(k) = d^k D / d lambda^k,

    x' = e^-h x + (1 - e^-h) D + h phi_2(h) D' - h^2 phi_3(h) D'' + O(h^4),
    phi_2(h) = 1 - (1 - e^-h) / h,        phi_3(h) = phi_2(h) / h - 1/2.

The first-order truncation, x' = e^-h x + (1 - e^-h) D, is DDIM / Euler in sigma. The derivatives are
replaced by divided differences of earlier denoiser outputs (multistep, Alg. 2) or by an extra
evaluation at an intermediate level (single-step, Alg. 1). A step to sigma' = 0 has h = inf and is
x' = D, the first-order limit, for every solver here.

The SDE variant (the paper's SDE-DPM-Solver++(2M), as in the authors' reference implementation) with
a parameter eta >= 0 interpolating between the ODE (eta = 0) and the reverse SDE (eta = 1) is

    x' = (sigma' / sigma) e^(-eta h) x + (1 - e^-H) D + (1 - e^-H) / (2 r) (D - D_prev)
         + sigma' sqrt(1 - e^(-2 eta h)) z,        H = (1 + eta) h,

which preserves the marginals exactly when D is exact and x0 is a point mass, and with eta = 0 is
literally the 2M update (both go through ``_multistep_update``).
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
)

# Denoiser outputs of the current and earlier steps with their lambda, newest first.
_History = list[tuple[Tensor, float]]


def _lambda(sigma: float) -> float:
    """Half-log-SNR of an EDM level: lambda = -log sigma (alpha = 1)."""
    return -math.log(sigma)


def _multistep_update(
    x: Tensor,
    sigma: float,
    sigma_next: float,
    history: _History,
    order: int,
    eta: float = 0.0,
    noise: NoiseFn | None = None,
) -> Tensor:
    """One DPM-Solver++ multistep update from ``sigma`` to ``sigma_next`` (no denoiser call).

    ``history`` holds (D, lambda) of this step (first) and earlier steps; the update uses order
    ``min(order, len(history))``: 1 is DPM-Solver++(1) (= DDIM), 2 is Alg. 2 (divided difference with
    r = h_prev / h, weight 1 / (2r)), 3 is the third-order multistep update with the exact phi_2, phi_3
    coefficients and the second divided difference. ``eta > 0`` adds the SDE noise of SDE-DPM-Solver++
    drawn from ``noise(sigma, sigma_next)``. A step to 0 returns D.
    """
    den0, lam0 = history[0]
    if sigma_next == 0:
        return den0
    h = _lambda(sigma_next) - lam0
    big_h = h * (1.0 + eta)
    em = -math.expm1(-big_h)  # 1 - e^-H
    x_next = x * ((sigma_next / sigma) * math.exp(-eta * h)) + den0 * em
    k = min(order, len(history))
    if k == 2:
        den1, lam1 = history[1]
        r = (lam0 - lam1) / h
        x_next = x_next + (den0 - den1) * (0.5 * em / r)
    elif k >= 3:
        (den1, lam1), (den2, lam2) = history[1], history[2]
        r0, r1 = (lam0 - lam1) / h, (lam1 - lam2) / h
        d1_0 = (den0 - den1) / r0  # ~ h D' - (h h_1 / 2) D''
        d1_1 = (den1 - den2) / r1  # ~ h D' - h (h_1 + h_2 / 2) D''
        d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))  # ~ h D' + O(h^3)
        d2 = (d1_0 - d1_1) * (2.0 / (r0 + r1))  # ~ h^2 D'' + O(h^3)
        phi_2 = 1.0 - em / big_h
        phi_3 = phi_2 / big_h - 0.5
        x_next = x_next + d1 * phi_2 - d2 * phi_3
    if eta > 0:
        assert noise is not None
        x_next = x_next + noise(sigma, sigma_next) * (sigma_next * math.sqrt(-math.expm1(-2.0 * eta * h)))
    return x_next


def _run_multistep(
    name: str,
    order: int,
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Mapping[str, Any] | None,
    callback: Callback | None,
    progress: bool,
    eta: float = 0.0,
    noise: NoiseFn | None = None,
) -> Tensor:
    """The loop shared by the multistep samplers: one denoiser call per step, a history of ``order``."""
    s = sigma_list(x, sigmas)
    history: _History = []
    for i in step_range(len(s) - 1, progress, name):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = call_denoiser(denoiser, x, sigma, cond)
        report(callback, i, sigma, sigma_next, x, denoised)
        history = [(denoised, _lambda(sigma))] + history[: order - 1]
        x = _multistep_update(x, sigma, sigma_next, history, order, eta, noise)
    return x


@SAMPLERS.register("dpmpp_2m", order=2, stochastic=False, nfe=lambda steps: steps)
@torch.no_grad()
def sample_dpmpp_2m(
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
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2 (multistep second order, data prediction).

    ``x`` is the start at ``sigmas[0]``. The first step (no history) and a final step to sigma = 0 are
    first order. Exactly N denoiser calls for N = len(sigmas) - 1 steps. ``noise``/``generator`` are
    accepted and ignored (deterministic).
    """
    return _run_multistep("dpmpp_2m", 2, denoiser, x, sigmas, cond, callback, progress)


@SAMPLERS.register("dpmpp_3m", order=3, stochastic=False, nfe=lambda steps: steps)
@torch.no_grad()
def sample_dpmpp_3m(
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
    """DPM-Solver++(3M), the third-order multistep data-prediction solver of Lu et al. 2022 (Sec. 4.2,
    the multistep scheme of Alg. 2 extended with a second divided difference; see the module docstring).

    ``x`` is the start at ``sigmas[0]``. Step 1 is first order, step 2 second order (Alg. 2), later
    steps third order; a final step to sigma = 0 is first order (x = D). Exactly N denoiser calls for
    N = len(sigmas) - 1 steps. ``noise``/``generator`` are accepted and ignored (deterministic).
    """
    return _run_multistep("dpmpp_3m", 3, denoiser, x, sigmas, cond, callback, progress)


@SAMPLERS.register("dpmpp_2m_sde", order=2, stochastic=True, nfe=lambda steps: steps)
@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    eta: float = 1.0,
) -> Tensor:
    """SDE-DPM-Solver++(2M), Lu et al. 2022 (the multistep solver of the reverse SDE in data-prediction
    form, midpoint-type second-order term as in Alg. 2); update in the module docstring.

    ``x`` is the start at ``sigmas[0]``. ``eta = 1`` (default) solves the reverse SDE, ``eta = 0`` is
    exactly ``dpmpp_2m``. Noise comes from ``noise(sigma, sigma_next)`` or ``torch.randn`` with
    ``generator``, once per step except a step to sigma = 0 (which is x = D). Exactly N denoiser calls
    for N = len(sigmas) - 1 steps. Its deterministic version (eta = 0) is second order; with eta > 0 it
    converges weakly.
    """
    if not (math.isfinite(eta) and eta >= 0.0):
        raise ConfigError(f"eta: must be finite and >= 0, got {eta!r}")
    noise_fn = resolve_noise(noise, x, generator) if eta > 0 else None
    return _run_multistep("dpmpp_2m_sde", 2, denoiser, x, sigmas, cond, callback, progress, eta, noise_fn)


@SAMPLERS.register("dpmpp_2s", order=2, stochastic=False, nfe=lambda steps: 2 * steps - 1)
@torch.no_grad()
def sample_dpmpp_2s(
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
    """DPM-Solver++(2S), Lu et al. 2022 Algorithm 1 with r = 1/2 (deterministic, not ancestral).

    Per step: u = e^(-h/2) x + (1 - e^(-h/2)) D(x, sigma) at the lambda-midpoint sigma_mid =
    sqrt(sigma sigma'), then x' = e^-h x + (1 - e^-h) D(u, sigma_mid). ``x`` is the start at
    ``sigmas[0]``. Exactly 2N - 1 denoiser calls for N = len(sigmas) - 1 steps on a grid ending in 0 (two
    per step, one on the final step to sigma = 0, which is x = D); 2N on a grid not ending in 0.
    ``noise``/``generator`` are accepted and ignored.
    """
    s = sigma_list(x, sigmas)
    for i in step_range(len(s) - 1, progress, "dpmpp_2s"):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = call_denoiser(denoiser, x, sigma, cond)
        report(callback, i, sigma, sigma_next, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = _lambda(sigma_next) - _lambda(sigma)
        sigma_mid = math.sqrt(sigma * sigma_next)
        u = x * (sigma_mid / sigma) + denoised * (-math.expm1(-0.5 * h))
        den_mid = call_denoiser(denoiser, u, sigma_mid, cond)
        x = x * (sigma_next / sigma) + den_mid * (-math.expm1(-h))
    return x
