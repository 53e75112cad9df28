"""Tests for difflab.likelihood against closed-form densities.

Oracles: for Gaussian data x0 ~ N(0, C) the exact denoiser is D(x, sigma) = C (C + sigma^2 I)^-1 x and
the sigma-smoothed density is N(0, C + sigma^2 I); for ``synthetic("gmm2d")`` both are exact methods.
"""

from __future__ import annotations

import math

import pytest
import torch

from difflab import likelihood as L
from difflab.data import synthetic
from difflab.likelihood import bits_per_dim, dequantize, log_likelihood

SMIN, SMAX = 0.002, 80.0


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(cov: torch.Tensor):
    """(denoiser, smoothed log-density) for data N(0, cov)."""
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)

    def denoise(x, sigma):
        gain = cov @ torch.linalg.inv(cov + sigma[:, None, None] ** 2 * eye)  # (N, D, D)
        return (gain @ x[:, :, None])[:, :, 0]

    def log_prob(x, sigma):
        dist = torch.distributions.MultivariateNormal(torch.zeros(cov.shape[0], dtype=cov.dtype), cov + sigma**2 * eye)
        return dist.log_prob(x)

    return denoise, log_prob


def points(n, d, seed, scale=1.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def correlated_cov(seed: int) -> torch.Tensor:
    """A well-conditioned positive-definite 3x3 covariance with sizeable off-diagonal terms."""
    a = points(3, 3, seed, 0.6)
    return a @ a.T + 0.3 * torch.eye(3, dtype=torch.float64)


def data_points(cov: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return points(n, cov.shape[0], seed) @ torch.linalg.cholesky(cov).T


def test_exact_trace_matches_isotropic_gaussian():
    s, d = 1.0, 3
    den, log_prob = gaussian(torch.eye(d, dtype=torch.float64) * s**2)
    x = points(16, d, 0, s)
    true = log_prob(x, SMIN)
    logp, info = log_likelihood(den, x, sigma_min=SMIN, sigma_max=SMAX, rtol=1e-7, atol=1e-7)
    # Default prior N(0, SMAX^2) vs the true marginal N(0, s^2 + SMAX^2): per dimension the error is
    # 0.5 |log(1 + s^2/SMAX^2) - x_T^2 s^2 / (SMAX^2 (SMAX^2 + s^2))| <= ~ s^2 / SMAX^2 ~ 1.6e-4 nats here.
    assert float((logp - true).abs().max()) / d < 1e-3
    assert float((logp - true).abs().max()) / d < 2 * s**2 / SMAX**2
    assert info["stderr"] is None and info["nfev"] > 0 and logp.shape == (16,) and logp.dtype == x.dtype
    torch.testing.assert_close(logp, info["prior_logp"] + info["delta_logp"])
    # With the exact marginal as prior only the ODE error remains.
    exact, _ = log_likelihood(den, x, sigma_min=SMIN, sigma_max=SMAX, rtol=1e-7, atol=1e-7, prior_var=s**2 + SMAX**2)
    assert float((exact - true).abs().max()) / d < 1e-5


def test_exact_trace_matches_correlated_gaussian_in_any_shape():
    cov = correlated_cov(10)
    den, log_prob = gaussian(cov)
    x = data_points(cov, 8, 1)
    prior_var = SMAX**2 + float(cov.trace()) / 3
    logp, _ = log_likelihood(den, x, sigma_min=SMIN, sigma_max=SMAX, rtol=1e-7, atol=1e-7, prior_var=prior_var)
    assert float((logp - log_prob(x, SMIN)).abs().max()) / 3 < 1e-4
    # Trailing shape (N, 3, 1) and cond forwarding.
    seen = []

    def den3(x, sigma, *, tag):
        seen.append(tag)
        return den(x[..., 0], sigma)[..., None]

    logp3, _ = log_likelihood(den3, x[..., None], sigma_min=SMIN, sigma_max=SMAX, rtol=1e-7, atol=1e-7,
                              prior_var=prior_var, cond={"tag": "t"})
    torch.testing.assert_close(logp3, logp)
    assert seen and set(seen) == {"t"}


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    # Correlated data: the Jacobian of D has off-diagonal terms, so Rademacher probes have nonzero variance.
    cov = correlated_cov(11)
    den, _ = gaussian(cov)
    x = data_points(cov, 6, 2)
    kw = {"sigma_min": SMIN, "sigma_max": SMAX, "rtol": 1e-6, "atol": 1e-6}
    exact, _ = log_likelihood(den, x, **kw)
    est, info = log_likelihood(den, x, trace="hutchinson", probes=200, probe=probe,
                               generator=torch.Generator().manual_seed(3), **kw)
    se = info["stderr"]
    assert se.shape == (6,) and bool((se > 1e-3).all())  # a genuine stochastic estimate
    z = (est - exact) / se
    assert float(z.abs().max()) < 4.0, z
    # Seeded: reproducible; one probe gives no standard error.
    again, _ = log_likelihood(den, x, trace="hutchinson", probes=200, probe=probe,
                              generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(again, est)
    _, one = log_likelihood(den, x, trace="hutchinson", probe=probe, **kw)
    assert one["stderr"] is None


def test_gmm2d_exact_trace_matches_smoothed_density():
    g = synthetic("gmm2d")
    x = torch.cat([g.sample(5, 0).double(), torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.5, 0.3]], dtype=torch.float64)])
    sigma_min = 0.01
    # Prior variance: the data's per-dim variance (2 + 0.04) added to SMAX^2 (mean 0, isotropic).
    logp, _ = log_likelihood(lambda x, s: g.denoiser(x, s), x, sigma_min=sigma_min, sigma_max=SMAX,
                             rtol=1e-7, atol=1e-7, prior_var=SMAX**2 + 2.04)
    err = (logp - g.log_prob(x, sigma=sigma_min)).abs()
    assert float(err.max()) < 1e-2, err


def test_argument_errors():
    den, _ = gaussian(torch.eye(2, dtype=torch.float64))
    x = points(2, 2, 4)
    for kw, match in [({"trace": "svd"}, "trace"), ({"probe": "sphere", "trace": "hutchinson"}, "probe"),
                      ({"probes": 0, "trace": "hutchinson"}, "probes"), ({"sigma_min": 0.0}, "sigma_min")]:
        args = {"sigma_min": SMIN, "sigma_max": SMAX, **kw}
        with pytest.raises(ValueError, match=match):
            log_likelihood(den, x, **args)


def test_bits_per_dim_and_dequantize():
    assert bits_per_dim(math.log(2.0) * 12, 3) == pytest.approx(4.0)
    k = torch.randint(0, 256, (1000, 3, 2, 2), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    x, offset = dequantize(k, torch.Generator().manual_seed(6))
    assert x.shape == k.shape and x.dtype == torch.float32
    assert bool((x >= 0).all() and (x < 1).all()) and bool((torch.floor(x.double() * 256) == k).all())
    assert offset == pytest.approx(12 * math.log(256.0))
    # Uniform 8-bit data under the uniform density on [0,1)^D (continuous NLL 0): the bound is tight, 8 bits/dim.
    assert bits_per_dim(0.0, 12, offset=offset) == pytest.approx(8.0)
    # On [-1, 1) the cells are twice as wide: 7 extra bits/dim.
    y, off2 = dequantize(k, torch.Generator().manual_seed(6), value_range=(-1.0, 1.0))
    assert bool((y >= -1).all() and (y < 1).all()) and bits_per_dim(0.0, 12, offset=off2) == pytest.approx(7.0)
    with pytest.raises(ValueError):
        dequantize(torch.rand(2, 3))


def test_divergence_matches_jacobian_trace_and_loop_fallback(monkeypatch):
    w = points(3, 3, 7)
    x = points(5, 3, 8).requires_grad_(True)
    g = torch.tanh(x @ w.T)
    jac = torch.func.vmap(torch.func.jacrev(lambda z: torch.tanh(z @ w.T)))(x.detach())  # (N, 3, 3)
    eps = points(4 * 5, 3, 9).reshape(4, 5, 3)
    want_exact = jac.diagonal(dim1=1, dim2=2).sum(1)[:, None]
    want_hutch = torch.einsum("pni,nij,pnj->np", eps, jac, eps)
    torch.testing.assert_close(L._divergence(g, x, "exact", None), want_exact)
    torch.testing.assert_close(L._divergence(g, x, "hutchinson", eps), want_hutch)
    # Without vmap support (an op lacking a batching rule) the per-vector loop gives the same values.
    grad = torch.autograd.grad

    def no_batching(*args, **kw):
        if kw.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return grad(*args, **kw)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    torch.testing.assert_close(L._divergence(g, x, "exact", None), want_exact)
    torch.testing.assert_close(L._divergence(g, x, "hutchinson", eps), want_hutch)
