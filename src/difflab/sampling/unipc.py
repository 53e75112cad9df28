"""UniPC: the unified predictor-corrector multistep solver, data-prediction form, in EDM coordinates.

Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models" (NeurIPS 2023), Algorithms 2-3 with x0-prediction ("UniP-p + UniC-p", multistep predictor).

With x = x0 + sigma * n (alpha = 1) and lambda = -log sigma, the exact PF-ODE solution from sigma_s to
sigma_t in data-prediction form is x_t = e^{-h} x_s + int_{lambda_s}^{lambda_t} e^{lambda - lambda_t}
x0(lambda) dlambda, h = lambda_t - lambda_s. UniP-p expands x0(lambda) around the current point with
p - 1 past model outputs; UniC-p adds the output at the new point (which the next step needs anyway),
raising the order of accuracy by one at no extra denoiser call. With B(h) = h ("bh1") or e^h - 1
("bh2"), for the past points r_k = (lambda_k - lambda_s) / h and D_k = (x0_k - x0_s) / r_k:

    x_t^pred = e^{-h} x_s + (1 - e^{-h}) x0_s - B(-h) sum_{k < p} a_k D_k       (UniP-p)
    x_t^corr = e^{-h} x_s + (1 - e^{-h}) x0_s - B(-h) sum_{k <= p} c_k D_k      (UniC-p, r_p = 1,
                                                                              D_p = x0(x_t^pred) - x0_s)

where the coefficients solve the Vandermonde systems sum_k r_k^{i-1} a_k = phi_{i+1}(-h) i! / B(-h)
(the paper's R_p(h) a = phi_p(h) / B(h), written here with negated h for data prediction).
"""

from __future__ import annotations

import math
import numbers
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
    sigma_list,
    step_range,
)

VARIANTS = ("bh1", "bh2")
ORDERS = (1, 2, 3)


def _coefficients(rks: list[float], h: float, variant: str) -> tuple[float, list[float]]:
    """B(-h) and the UniPC weights for difference points at ratios ``rks`` (solve R a = b).

    ``rks`` are r_k = (lambda_k - lambda_s) / h for the points whose differences enter the update; the
    returned list has one weight per entry of ``rks`` (empty when ``rks`` is empty).
    """
    hh = -h  # data prediction integrates e^{lambda - lambda_t}: the paper's phi functions at -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    if not rks:
        return b_h, []
    if len(rks) == 1:
        # One difference (UniP-2, UniC-1): the paper fixes a_1 = 1/2, which meets the order condition
        # a_1 = phi_2(-h) / B(-h) + O(h) for either B; this is the only place where B(h) matters,
        # since solving R a = b exactly makes B(-h) * a independent of B.
        return b_h, [0.5]
    # Scaled Taylor remainders of e^{hh}: phi_k = (e^{hh} - sum_{j<k} hh^j / j!) / hh^(k-1), k >= 2,
    # by the recursion phi_2 = expm1(hh) / hh - 1, phi_{k+1} = phi_k / hh - 1 / k!; b_k = phi_{k+1} k! / B.
    phi = math.expm1(hh) / hh - 1.0
    fact = 1.0
    b = []
    for i in range(1, len(rks) + 1):
        b.append(phi * fact / b_h)
        fact *= i + 1
        phi = phi / hh - 1.0 / fact
    r = torch.tensor(rks, dtype=torch.float64)
    mat = torch.stack([r**k for k in range(len(rks))])  # row k: r^k
    a = torch.linalg.solve(mat, torch.tensor(b, dtype=torch.float64))
    return b_h, [float(v) for v in a]


def _check_options(order: Any, variant: Any) -> None:
    if not isinstance(order, numbers.Integral) or isinstance(order, bool) or order not in ORDERS:
        raise ConfigError(f"order: must be one of {list(ORDERS)}, got {order!r}")
    if variant not in VARIANTS:
        raise ConfigError(f"variant: must be one of {list(VARIANTS)}, got {variant!r}")


# ``order`` metadata is the convergence order of the default configuration (predictor order p = 2 plus
# the corrector's one), measured on the Gaussian oracle; see tests/test_unipc.py.
@SAMPLERS.register("unipc", order=3, stochastic=False, nfe=lambda steps: steps)
@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    order: int = 2,
    variant: str = "bh2",
) -> Tensor:
    """UniPC multistep sampler, data prediction (Zhao et al. 2023, UniP-p + UniC-p).

    ``order`` is the predictor order p in {1, 2, 3} (p points of history); the corrector raises the
    accuracy of each step by one, so the sampler converges with order p + 1 in the step size (as the
    paper proves; observed slopes on a Gaussian oracle: 2, 3, 4). For p = 3 the first step (taken
    with p = 1) leaves an O(h^3) term that dominates only on very fine grids. ``variant`` picks B(h):
    "bh1" (B(h) = h) or "bh2" (B(h) = e^h - 1); it changes only the one-difference updates (see
    ``_coefficients``), so for p = 3 the two differ only through the warm-up steps.
    Defaults: p = 2 with "bh2", the authors' and diffusers' default and their choice for guided
    sampling (they suggest p = 3 with "bh1" for unconditional sampling with very few steps).

    Per step i (sigma_i -> sigma_{i+1}): evaluate x0_i = D(x_i, sigma_i) once; if i > 0, correct x_i
    with UniC (reusing x0_i, no extra call); then predict x_{i+1} with UniP of order min(p, i + 1)
    (not enough history on the first steps). The corrector is not applied after the final step (there
    is no evaluation there). A step to sigma = 0 (lambda = +inf, where e^{-h} = 0 and every higher-
    order term is an extrapolation of x0 to lambda = inf) is taken with order 1 and returns the last
    denoised estimate D(x_{N-1}, sigma_{N-1}) exactly.

    ``x`` is the start at ``sigmas[0]``. Exactly N denoiser calls for N = len(sigmas) - 1 steps, whether
    or not the grid ends in 0. ``noise``/``generator`` are accepted and ignored (deterministic).
    """
    _check_options(order, variant)
    s = sigma_list(x, sigmas)
    lams: list[float] = []  # lambda of each evaluated point, oldest first
    outs: list[Tensor] = []  # x0 estimate at each evaluated point
    prev: tuple | None = None  # (x_s, lambda_s, x0_s, rks, D_ks) of the last predictor step
    for i in step_range(len(s) - 1, progress, "unipc"):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = call_denoiser(denoiser, x, sigma, cond)
        report(callback, i, sigma, sigma_next, x, denoised)
        if sigma_next == 0:  # lambda_next = +inf: the first-order update's limit is x0 itself
            x = denoised  # (correcting x first would be wasted: e^{-h} = 0 drops it)
            break
        lam = -math.log(sigma)
        if prev is not None:  # UniC-p for the previous step, with the output at its endpoint
            x_s, lam_s, x0_s, rks, dks = prev
            h = lam - lam_s
            b_h, c = _coefficients(rks + [1.0], h, variant)
            res = sum(ck * dk for ck, dk in zip(c, dks + [denoised - x0_s]))
            x = math.exp(-h) * x_s - math.expm1(-h) * x0_s - b_h * res
        lams.append(lam)
        outs.append(denoised)
        lam_next = -math.log(sigma_next)
        h = lam_next - lam
        p = min(order, len(outs))
        rks = [(lams[-1 - k] - lam) / h for k in range(1, p)]
        dks = [(outs[-1 - k] - denoised) / r for k, r in zip(range(1, p), rks)]
        b_h, a = _coefficients(rks, h, variant)
        x_next = math.exp(-h) * x - math.expm1(-h) * denoised
        if a:
            x_next = x_next - b_h * sum(ak * dk for ak, dk in zip(a, dks))
        prev = (x, lam, denoised, rks, dks)
        x = x_next
        del outs[:-order]  # only the last p outputs are ever used
        del lams[:-order]
    return x
