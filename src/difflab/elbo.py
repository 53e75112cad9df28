"""The continuous-time variational bound (ELBO) on -log p(x): a cheaper likelihood score than the exact ODE.

Derivation in EDM/VE coordinates (Kingma et al. 2021, "Variational Diffusion Models", eq. 11-17 and the
continuous-time limit T -> inf of Sec. 3.3; Song et al. 2021, "Maximum Likelihood Training of Score-Based
Diffusion Models", Thm 1; Kingma & Gao 2023, "Understanding Diffusion Objectives", Sec. 4). The latents are
z_sigma = x + sigma * eps for sigma in [sigma_min, sigma_max], SNR(sigma) = 1 / sigma^2. The model is: a
Gaussian prior p(z_max) = N(0, prior_var I), the reverse-time SDE driven by D (the T -> inf limit of VDM's
ancestral chain) from sigma_max down to sigma_min, and the Gaussian decoder p(x | z_min) = N(x; z_min,
sigma_min^2 I). For every x,

    -log p_SDE(x) <= L(x) = E[-log p(x | z_min)] + KL(q(z_max | x) || p(z_max))
                            + 1/2 int_{sigma_min}^{sigma_max} E||x - D(x + sigma eps, sigma)||^2 (-dSNR/dsigma) dsigma

with -dSNR/dsigma = 2 / sigma^3, so the diffusion term is int E||x - D||^2 / sigma^3 dsigma
= int E||x - D||^2 / sigma^2 du in u = ln sigma. The first two terms are closed form:

    E[-log p(x | z_min)] = d/2 (ln(2 pi sigma_min^2) + 1),
    KL = 1/2 (d sigma_max^2 / v + ||x||^2 / v - d + d ln(v / sigma_max^2)),   v = prior_var.

What the bound is comparable with. ``likelihood.log_likelihood`` gives the density of x as a sample at
sigma_min under the probability-flow ODE. When D is the exact posterior mean of a data law p0, the ODE and
the SDE share their marginals, and for Gaussian data N(0, s^2 I) (with the exact prior v = s^2 + sigma_max^2)

    E_eps,sigma[L(x)] = -log N(x; 0, (s^2 + sigma_min^2) I) + d/2 sigma_min^2 / (s^2 + sigma_min^2)

for every x (``tests/test_elbo.py`` checks this), i.e. the bound is tight up to d sigma_min^2 / (2 s^2)
(~2e-6 nats per dimension for s = 1, sigma_min = 0.002); averaged over x ~ N(0, s^2 I) it is the entropy
d/2 ln(2 pi e (s^2 + sigma_min^2)). For an imperfect D the statement is the one above, about the SDE model;
the ODE density of the same D is a different model and no theorem orders the two. Denoisers that are wrong
as sigma -> 0 (shrunk, shifted) raise L far above the ODE NLL (tested), but a D that is only wrong at mid
noise levels can give L slightly below it: D = a'(sigma) z with a' = s^2/(s^2+sigma^2) (1 - 0.3 sigma^2 /
(sigma^2+s^2)), s = 0.7, d = 3, averages L = 3.232 nats by quadrature against an ODE NLL of 3.239.

Monte Carlo estimate of the diffusion term, per sample, with ``draws`` = K noise levels:

* importance sampling in u = ln sigma with density q(u) proportional to a(sigma) = sd^2 / (sd^2 + sigma^2),
  the shape of E||x - D||^2 / sigma^2 for data of scale sd (closed-form inverse CDF;
  sd = ``sigma_data``). Uniform-in-ln-sigma, the likelihood-weighting proposal of Song et al. for VE, would
  waste the half of the draws that land where the integrand has decayed;
* stratification: level k uses the quantile (k + U_k) / K of q;
* antithetic noise: each level evaluates D at x + sigma eps and x - sigma eps (2 K denoiser calls), which
  cancels the term linear in eps;
* a control variate c (||eps||^2 - d), whose mean is 0 because c is computed from other, independent draws:
  for D ~ a z the eps-quadratic part of ||x - D||^2 / sigma^2 is a^2 ||eps||^2, and c = a_eff(sigma)^2 with
  a_eff = r / (r + sigma^2), where r = a_hat sigma'^2 / (1 - a_hat) is the data scale implied by the slope
  a_hat = eps'^T (D(x + sigma' eps') - D(x - sigma' eps')) / (2 sigma' ||eps'||^2) measured two strata away.
  For Gaussian data with the exact denoiser this removes almost all eps-noise, whatever ``sigma_data``.

The standard error uses the collapsed-strata estimator (Cochran 1977, "Sampling Techniques", Sec. 5A.12):
strata are paired and Var = sum over pairs (r_a - r_b)^2 / K^2, which is conservative (it also counts the
difference between neighbouring strata's means) and shrinks at least like 1 / sqrt(K).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .sampling._core import Denoiser

__all__ = ["elbo"]


def _repeat_cond(cond: Mapping[str, Any] | None, n: int, times: int) -> dict[str, Any]:
    """Tile per-sample conditioning tensors (leading dim n) ``times`` times along the batch."""
    out = {}
    for key, value in (cond or {}).items():
        if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == n:
            value = value.repeat(times, *([1] * (value.ndim - 1)))
        out[key] = value
    return out


def _log_sigma_quantile(p: Tensor, sigma_min: float, sigma_max: float, sd: float) -> Tensor:
    """Inverse CDF of q(u) proportional to sd^2 / (sd^2 + e^{2u}) on [ln sigma_min, ln sigma_max].

    The CDF is (G(sigma) - G(sigma_min)) / Z with G(sigma) = 1/2 ln(sigma^2 / (sd^2 + sigma^2)).
    Returns u = ln sigma, float64.
    """
    g0 = 0.5 * math.log(sigma_min**2 / (sd**2 + sigma_min**2))
    g1 = 0.5 * math.log(sigma_max**2 / (sd**2 + sigma_max**2))
    two_g = 2.0 * (g0 + p * (g1 - g0))  # ln w with w = sigma^2 / (sd^2 + sigma^2)
    u = 0.5 * (2 * math.log(sd) + two_g - torch.log(-torch.expm1(two_g)))  # sigma^2 = sd^2 w / (1 - w)
    return u.clamp(math.log(sigma_min), math.log(sigma_max))


def elbo(
    denoiser: Denoiser,
    x: Tensor,
    *,
    sigma_min: float,
    sigma_max: float,
    draws: int = 64,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    prior_var: float | None = None,
    sigma_data: float | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Per-sample upper bound on -log p(x) (nats) from the continuous-time ELBO (module docstring).

    Args:
        denoiser: ``D(x, sigma_vec, **cond) -> x0`` estimate (EDM coordinates, model space).
        x: data (N, ...) in model space, treated as in ``likelihood.log_likelihood``. Use float64 for
            comparisons at the 1e-3 nats level.
        sigma_min, sigma_max: the noise range, 0 < sigma_min < sigma_max.
        draws: noise levels K per sample (even, >= 2); each costs two denoiser calls (antithetic pair).
        generator: RNG for the levels and the noise.
        cond: keyword arguments forwarded to the denoiser (per-sample tensors with leading dim N).
        prior_var: variance of the Gaussian prior at sigma_max; default ``sigma_max**2`` (as
            ``log_likelihood``). ``sigma_max**2 + sigma_data**2`` is closer to the true marginal.
        sigma_data: scale of the data for the importance-sampling proposal and the control variate
            (only the variance depends on it, never the mean); default the denoiser's ``sigma_data``
            attribute when it has one (``difflab.Denoiser``), else 1.

    Returns:
        ``(nll_bound, info)``: ``nll_bound`` (N,) in x's dtype; ``info`` holds ``stderr`` (N,) the Monte
        Carlo standard error of ``nll_bound``, and its parts ``recon``, ``prior`` (floats or (N,)) and
        ``diffusion`` (N,), plus ``nfev`` (denoiser calls per sample).
    """
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 4 or draws % 2:
        raise ValueError(f"draws: must be an even integer >= 4, got {draws!r}")
    if x.ndim < 1 or not x.dtype.is_floating_point or x.shape[0] == 0:
        raise ValueError("x: needs a non-empty leading batch dimension and a floating dtype")
    if prior_var is not None and not prior_var > 0:
        raise ValueError(f"prior_var: must be > 0, got {prior_var}")
    if sigma_data is None:
        sigma_data = float(getattr(denoiser, "sigma_data", 1.0))
    if not sigma_data > 0:
        raise ValueError(f"sigma_data: must be > 0, got {sigma_data}")
    n, dim = x.shape[0], x[0].numel()
    x = x.detach()
    sd, k = float(sigma_data), draws
    var = sigma_max**2 if prior_var is None else float(prior_var)
    sq = x.reshape(n, dim).double().pow(2).sum(1)
    recon = 0.5 * dim * (math.log(2 * math.pi * sigma_min**2) + 1.0)
    prior = 0.5 * (dim * sigma_max**2 / var + sq / var - dim + dim * math.log(var / sigma_max**2))
    z_norm = 0.5 * math.log(sigma_max**2 / (sd**2 + sigma_max**2)) - 0.5 * math.log(sigma_min**2 / (sd**2 + sigma_min**2))

    offsets = torch.rand(k, n, generator=generator, dtype=torch.float64)
    p = (torch.arange(k, dtype=torch.float64)[:, None] + offsets) / k  # stratified quantiles (K, N)
    sigmas = _log_sigma_quantile(p, sigma_min, sigma_max, sd).exp().to(x.device)
    big_cond = _repeat_cond(cond, n, 2)
    sq_err = torch.empty(k, n, dtype=torch.float64, device=x.device)  # antithetic mean ||x - D||^2 / sigma^2
    slope = torch.empty_like(sq_err)  # eps^T (D(x + s eps) - D(x - s eps)) / (2 s ||eps||^2)
    chi = torch.empty_like(sq_err)  # ||eps||^2 - dim, mean 0
    with torch.no_grad():
        for j in range(k):
            sigma = sigmas[j]
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            s = sigma.to(x.dtype).reshape(n, *([1] * (x.ndim - 1)))
            z = torch.cat([x + s * eps, x - s * eps])
            denoised = denoiser(z, torch.cat([sigma, sigma]).to(x.dtype), **big_cond)
            if denoised.shape != z.shape:
                raise ValueError(f"denoiser: returned shape {tuple(denoised.shape)}, expected {tuple(z.shape)}")
            err = (torch.cat([x, x]) - denoised).reshape(2 * n, dim).double().pow(2).sum(1)
            e64 = eps.reshape(n, dim).double()
            norm2 = e64.pow(2).sum(1)
            diff = (denoised[:n] - denoised[n:]).reshape(n, dim).double()
            sq_err[j] = 0.5 * (err[:n] + err[n:]) / sigma**2
            slope[j] = (diff * e64).sum(1) / (2 * sigma * norm2.clamp_min(1e-300))
            chi[j] = norm2 - dim
    # control variate: the eps-quadratic part of sq_err is ~ slope^2 ||eps||^2; its coefficient comes from
    # the level two strata up (two down for the last pair): independent noise, so the correction has mean 0
    partner = torch.cat([torch.arange(2, k), torch.arange(k - 4, k - 2)]).to(x.device)
    a_hat = slope[partner].clamp(1e-12, 1 - 1e-12)
    sd2 = a_hat / (1 - a_hat) * sigmas[partner] ** 2  # a = sd^2 / (sd^2 + sigma^2) solved for sd^2
    coef = (sd2 / (sd2 + sigmas**2)).pow(2)
    a = sd**2 / (sd**2 + sigmas**2)
    ratios = (sq_err - coef * chi) * z_norm / a  # y / q(u), q(u) = a / z_norm
    diffusion = ratios.mean(0)
    pair_diff = ratios[0::2] - ratios[1::2]
    stderr = pair_diff.pow(2).sum(0).sqrt() / k
    bound = recon + prior + diffusion
    info = {"stderr": stderr.to(x.dtype), "recon": recon, "prior": prior.to(x.dtype),
            "diffusion": diffusion.to(x.dtype), "nfev": 2 * k}
    return bound.to(x.dtype), info
