"""The continuous-time ELBO (difflab.elbo) against closed forms, quadrature and the exact ODE likelihood."""

import math

import pytest
import torch

from difflab.data.synthetic import synthetic
from difflab.elbo import elbo
from difflab.likelihood import log_likelihood

pytestmark = pytest.mark.usefixtures("one_thread")

D, S, SMIN, SMAX = 3, 0.7, 0.002, 80.0
F64 = torch.float64


def gauss_denoiser(z, sigma):
    """Exact posterior mean for data N(0, S^2 I)."""
    return z * (S**2 / (S**2 + sigma**2))[:, None]


def gauss_x(n=16, seed=0):
    return S * torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_gaussian_exact_denoiser_matches_closed_form():
    x = gauss_x()
    var = S**2 + SMAX**2  # the exact marginal at sigma_max, so the prior term is exact too
    bound, info = elbo(gauss_denoiser, x, sigma_min=SMIN, sigma_max=SMAX, draws=64,
                       generator=torch.Generator().manual_seed(1), prior_var=var)
    v0 = S**2 + SMIN**2
    nll = 0.5 * D * math.log(2 * math.pi * v0) + 0.5 * x.pow(2).sum(1) / v0
    expected = nll + 0.5 * D * SMIN**2 / v0  # module docstring: E[L(x)] for every x
    se = info["stderr"]
    assert bool((se < 0.1).all())  # the check below is sharp: the estimator is precise here
    # 5 standard errors: per-sample z-scores of a conservative standard error, 16 samples
    assert bool(((bound - expected).abs() <= 5 * se + 1e-9).all())
    # the exact ODE NLL of the same model (same prior) agrees within the ODE tolerance and MC error
    logp, _ = log_likelihood(gauss_denoiser, x, sigma_min=SMIN, sigma_max=SMAX, prior_var=var, rtol=1e-7, atol=1e-7)
    assert abs(float(bound.mean() + logp.mean())) <= 3 * float(se.pow(2).sum().sqrt()) / len(x) + 1e-4


def test_linear_denoiser_matches_quadrature():
    """A linear D = a'(sigma) z that is the posterior mean of no distribution: E[L(x)] by quadrature."""

    def a_wrong(sig):
        return S**2 / (S**2 + sig**2) * (1 - 0.3 * sig**2 / (sig**2 + S**2))

    x = gauss_x(16, seed=2)
    bound, info = elbo(lambda z, sig: z * a_wrong(sig)[:, None], x, sigma_min=SMIN, sigma_max=SMAX, draws=64,
                       generator=torch.Generator().manual_seed(3))
    u = torch.linspace(math.log(SMIN), math.log(SMAX), 100_001, dtype=F64)
    sig, a = u.exp(), a_wrong(u.exp())
    # E||x - a (x + sigma eps)||^2 / sigma^2 = ||x||^2 (1 - a)^2 / sigma^2 + d a^2, integrated over u = ln sigma
    sq = x.pow(2).sum(1)
    diffusion = sq * torch.trapezoid((1 - a) ** 2 / sig**2, u) + D * torch.trapezoid(a**2, u)
    expected = 0.5 * D * (math.log(2 * math.pi * SMIN**2) + 1) + 0.5 * sq / SMAX**2 + diffusion
    assert bool(((bound - expected).abs() <= 5 * info["stderr"] + 1e-6).all())


@pytest.mark.parametrize("kind", ["shift", "shrink"])
def test_wrong_denoiser_elbo_above_exact_nll(kind):
    x = gauss_x(32, seed=4)
    if kind == "shift":  # a mean offset that vanishes as sigma -> 0
        def wrong(z, sig):
            return gauss_denoiser(z, sig) + 0.3 * (sig / (sig + S))[:, None]
    else:  # shrunk towards 0 at every level
        def wrong(z, sig):
            return 0.9 * gauss_denoiser(z, sig)
    bound, info = elbo(wrong, x, sigma_min=SMIN, sigma_max=SMAX, draws=64, generator=torch.Generator().manual_seed(5))
    logp, _ = log_likelihood(wrong, x, sigma_min=SMIN, sigma_max=SMAX)
    se_mean = float(info["stderr"].pow(2).sum().sqrt()) / len(x)
    gap = float(bound.mean() + logp.mean())
    assert gap > 5 * se_mean and gap > 0.1


def test_mixture_exact_denoiser_close_to_exact_nll():
    mix = synthetic("gmm2d")
    x = mix.sample(64, 0).to(F64)
    bound, info = elbo(mix.denoiser, x, sigma_min=SMIN, sigma_max=SMAX, draws=128,
                       generator=torch.Generator().manual_seed(6))
    nll = -mix.log_prob(x, SMIN)  # the law log_likelihood measures: data convolved with N(0, sigma_min^2 I)
    se_mean = float(info["stderr"].pow(2).sum().sqrt()) / len(x)
    gap = float(bound.mean() - nll.mean())
    # tight for the exact denoiser (true gap ~ d sigma_min^2 / (2 * 0.2^2) = 1e-4 nats), so the inequality
    # can only be seen within Monte Carlo error; 3 standard errors of the mean
    assert -3 * se_mean <= gap <= 3 * se_mean + 1e-3
    assert se_mean < 0.05


def test_stderr_shrinks_and_is_calibrated():
    mix = synthetic("gmm2d")
    x = mix.sample(8, 1).to(F64)

    def run(draws, seed):
        return elbo(mix.denoiser, x, sigma_min=SMIN, sigma_max=SMAX, draws=draws,
                    generator=torch.Generator().manual_seed(seed))

    se16 = torch.stack([run(16, s)[1]["stderr"] for s in range(4)]).mean()
    se256 = torch.stack([run(256, s)[1]["stderr"] for s in range(4)]).mean()
    assert float(se16 / se256) >= 0.75 * 4  # at least like 1/sqrt(draws) (sqrt(256 / 16) = 4)
    runs = [run(32, 100 + s) for s in range(16)]
    spread = torch.stack([r[0] for r in runs]).std(0).mean()
    reported = torch.stack([r[1]["stderr"] for r in runs]).mean()
    # the collapsed-strata estimate is conservative but of the right size
    assert 0.3 * float(reported) <= float(spread) <= 1.3 * float(reported)


def test_cond_is_forwarded_and_tiled():
    x = gauss_x(4)
    seen = []

    def cond_denoiser(z, sigma, class_labels=None):
        seen.append(class_labels.clone())
        return gauss_denoiser(z, sigma)

    labels = torch.tensor([0, 1, 2, 3])
    elbo(cond_denoiser, x, sigma_min=SMIN, sigma_max=SMAX, draws=4, cond={"class_labels": labels})
    assert len(seen) == 4 and torch.equal(seen[0], torch.cat([labels, labels]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"draws": 5}, "draws:"),
        ({"draws": 2}, "draws:"),
        ({"sigma_min": 1.0, "sigma_max": 0.5}, "sigma_min:"),
        ({"prior_var": -1.0}, "prior_var:"),
        ({"sigma_data": 0.0}, "sigma_data:"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"sigma_min": SMIN, "sigma_max": SMAX, **kwargs}
    with pytest.raises(ValueError, match=f"^{message}"):
        elbo(gauss_denoiser, gauss_x(2), **args)
