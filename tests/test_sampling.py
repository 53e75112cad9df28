"""Tests for difflab.sampling against analytic oracles.

Oracles:
* Gaussian data x0 ~ N(0, s^2 I): the exact denoiser is D(x, sigma) = x s^2 / (s^2 + sigma^2), the PF-ODE
  dx/dsigma = (x - D)/sigma has the solution x(sigma) = x_T sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2),
  and the marginal at sigma is N(0, (s^2 + sigma^2) I).
* An isotropic Gaussian mixture, whose exact denoiser is the posterior-weighted component mean; the ODE
  reference is scipy's RK45.
* Ho et al. 2020 eq. 7 (DDPM posterior mean/variance), written in VP coordinates.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import difflab.sampling as S
from difflab.process import DDPM, EDM, VE, VP

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
ALL = S.SAMPLERS.names()
# Options that make each sampler draw noise (samplers not listed use their defaults).
NOISY_OPTIONS = {"edm_stochastic": {"s_churn": 10.0}, "ddim": {"eta": 1.0}}


def is_adaptive(name: str) -> bool:
    """Adaptive samplers (metadata adaptive=True) have no fixed nfe and no step-size order slope."""
    return bool(S.SAMPLERS.meta(name).get("adaptive", False))


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_denoiser(s: float):
    def denoise(x, sigma, **cond):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype
        sig = S.append_dims(sigma, x.ndim)
        return x * (s**2 / (s**2 + sig**2))

    return denoise


def mixture_denoiser(means: torch.Tensor, weights: torch.Tensor, c: float):
    """E[x0 | x] for x0 ~ sum_k w_k N(mu_k, c^2 I), x = x0 + sigma n: posterior-weighted component means."""

    def denoise(x, sigma, **cond):
        var = (c**2 + sigma**2)[:, None]  # [N, 1]
        d2 = ((x[:, None, :] - means[None]) ** 2).sum(-1)  # [N, K]
        logr = torch.log(weights)[None] - d2 / (2 * var) - 0.5 * x.shape[1] * torch.log(var)
        r = torch.softmax(logr, dim=1)
        shrink = c**2 / var
        return shrink * x + (1 - shrink) * (r @ means)

    return denoise


class Counter:
    """Wraps a denoiser, counting calls and recording sigmas and cond kwargs."""

    def __init__(self, fn):
        self.fn, self.calls, self.conds = fn, 0, []

    def __call__(self, x, sigma, **cond):
        self.calls += 1
        self.conds.append(cond)
        return self.fn(x, sigma, **cond)


def start(n, dim, sigma_max, seed, dtype=torch.float64, var0=None):
    g = torch.Generator().manual_seed(seed)
    std = sigma_max if var0 is None else math.sqrt(var0)
    return torch.randn(n, dim, generator=g, dtype=dtype) * std


# --------------------------------------------------------------------------------------------
# Deterministic samplers: convergence order on the Gaussian oracle
# --------------------------------------------------------------------------------------------

DETERMINISTIC = [("euler", {}), ("heun", {}), ("ddim", {"eta": 0.0}), ("edm_stochastic", {"s_churn": 0.0})]
# Relative error bounds at 64 steps (observed: 1st order ~0.042, 2nd order ~0.0033).
ABS_BOUND = {1: 0.06, 2: 0.005}


@pytest.mark.parametrize("name,opts", DETERMINISTIC)
def test_ode_convergence_order_gaussian(name, opts):
    s = 0.7
    den = gaussian_denoiser(s)
    x_T = start(256, 4, SIGMA_MAX, seed=0, var0=s**2 + SIGMA_MAX**2)
    order = S.SAMPLERS.meta(name)["order"]
    steps_list = [8, 16, 32, 64]
    errs = []
    for steps in steps_list:
        sigmas = S.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
        out = S.sample(den, x_T, sigmas, sampler=name, **opts)
        # Every sampler's last step (sigma_last -> 0) is the denoiser itself, a fixed linear map whose own
        # error does not shrink with steps. So the oracle is the exact ODE flow to sigma_last followed by
        # that same denoising: the remaining error is the ODE discretisation error only.
        last = float(sigmas[-2])
        exact = x_T * math.sqrt(s**2 + last**2) / math.sqrt(s**2 + SIGMA_MAX**2)
        ref = exact * (s**2 / (s**2 + last**2))
        errs.append(float((out - ref).abs().max() / ref.abs().max()))
    # The Karras grid with `steps` levels is uniform in sigma^(1/rho) with spacing 1/(steps - 1).
    slope = np.polyfit(np.log(np.array(steps_list) - 1.0), np.log(errs), 1)[0]
    assert abs(slope + order) < 0.25, (slope, errs)
    assert errs[-1] < ABS_BOUND[order], errs


def test_ddim_eta0_is_euler_and_edm_churn0_is_heun():
    den = gaussian_denoiser(0.7)
    x_T = start(64, 3, SIGMA_MAX, seed=1)
    sigmas = S.karras_sigmas(12, SIGMA_MIN, SIGMA_MAX)
    euler = S.sample(den, x_T, sigmas, sampler="euler")
    ddim = S.sample(den, x_T, sigmas, sampler="ddim", eta=0.0)
    torch.testing.assert_close(ddim, euler, rtol=1e-12, atol=1e-12)
    heun = S.sample(den, x_T, sigmas, sampler="heun")
    assert torch.equal(S.sample(den, x_T, sigmas, sampler="edm_stochastic"), heun)
    assert not torch.allclose(heun, euler)  # the comparisons above are not vacuous


def test_heun_matches_rk45_on_gaussian_mixture():
    means = torch.tensor([[-2.0, 0.0], [1.5, 1.5], [0.5, -2.0]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    c = 0.3
    den = mixture_denoiser(means, weights, c)
    x_T = start(200, 2, SIGMA_MAX, seed=2)

    # Reference: dx/dlog(sigma) = x - D(x, sigma) from sigma_max to sigma_min (every Karras grid's last
    # nonzero level) with RK45, then the same final denoising step to sigma = 0.
    def rhs(u, y):
        x = torch.from_numpy(y.reshape(x_T.shape))
        sig = torch.full((x.shape[0],), math.exp(u), dtype=torch.float64)
        return (x - den(x, sig)).numpy().ravel()

    span = (math.log(SIGMA_MAX), math.log(SIGMA_MIN))
    sol = solve_ivp(rhs, span, x_T.numpy().ravel(), method="RK45", rtol=1e-9, atol=1e-9)
    assert sol.success
    x_last = torch.from_numpy(sol.y[:, -1].reshape(x_T.shape))
    ref = den(x_last, torch.full((x_T.shape[0],), SIGMA_MIN, dtype=torch.float64))
    errs = []
    for steps in (128, 256):
        out = S.sample(den, x_T, S.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), sampler="heun")
        errs.append(float((out - ref).abs().max()))
    assert errs[1] < 2e-3, errs  # observed ~1.3e-3 (max over samples; mean ~1e-4)
    assert errs[0] / errs[1] > 3.0, errs  # second order: halving the step quarters the error
    # Samples land near the mixture's means (the denoiser is not trivially contracting to 0).
    assert (torch.cdist(ref, means).min(dim=1).values < 4 * c).float().mean() > 0.9


# --------------------------------------------------------------------------------------------
# Stochastic samplers: Monte-Carlo moments on the Gaussian oracle
# --------------------------------------------------------------------------------------------

STOCHASTIC = [
    ("ddpm", {"variance": "posterior"}, 1000),
    ("ddpm", {"variance": "beta"}, 1000),
    ("ddim", {"eta": 1.0}, 1000),
    ("edm_stochastic", {"s_churn": 40.0}, 256),
]


def _assert_moments(out: torch.Tensor, s: float, z: float = 5.0):
    n = out.numel()
    # SE of the mean: s / sqrt(n); SE of the sample variance of a Gaussian: s^2 sqrt(2 / (n - 1)).
    assert abs(float(out.mean())) < z * s / math.sqrt(n)
    assert abs(float(out.var()) - s**2) < z * s**2 * math.sqrt(2.0 / (n - 1))


@pytest.mark.parametrize("name,opts,steps", STOCHASTIC)
def test_stochastic_samplers_reproduce_gaussian_moments(name, opts, steps):
    # The variance has an O(1/steps) discretisation bias (the posterior-variance choice under-disperses,
    # ~ -9/steps relative, i.e. about -1.3 SE here; the others are well below 1 SE at these step counts).
    s, sigma_max = 0.7, 20.0
    sigmas = S.log_snr_sigmas(steps, SIGMA_MIN, sigma_max)
    x_T = start(20000, 2, sigma_max, seed=3, var0=s**2 + sigma_max**2)  # exact marginal at sigma_max
    g = torch.Generator().manual_seed(4)
    out = S.sample(gaussian_denoiser(s), x_T, sigmas, sampler=name, generator=g, **opts)
    _assert_moments(out, s)


def test_ddpm_beta_variance_is_exact_for_unit_gaussian_at_few_steps():
    # For x0 ~ N(0, I) (VP data variance 1) the reverse transition is exactly Gaussian with variance beta_t
    # (Ho et al. 2020, Sec. 3.2), so even 6 steps reproduce N(0, 1); the posterior choice under-disperses.
    sigmas = S.karras_sigmas(6, SIGMA_MIN, SIGMA_MAX)
    x_T = start(20000, 2, SIGMA_MAX, seed=5, var0=1 + SIGMA_MAX**2)
    g = torch.Generator().manual_seed(6)
    out = S.sample(gaussian_denoiser(1.0), x_T, sigmas, sampler="ddpm", variance="beta", generator=g)
    _assert_moments(out, 1.0)
    post = S.sample(gaussian_denoiser(1.0), x_T, sigmas, sampler="ddpm", generator=g)
    assert float(post.var()) < 1 - 5 * math.sqrt(2.0 / (post.numel() - 1))


def test_ddpm_step_matches_ho_posterior_eq7():
    sigma, sigma_next = 3.0, 1.2
    x = start(8, 3, sigma, seed=7)
    den = gaussian_denoiser(0.7)
    x0 = den(x, torch.full((8,), sigma, dtype=torch.float64))
    ab, ab_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    alpha_t = ab / ab_next
    beta_t = 1 - alpha_t
    x_vp = math.sqrt(ab) * x
    mu_vp = math.sqrt(ab_next) * beta_t / (1 - ab) * x0 + math.sqrt(alpha_t) * (1 - ab_next) / (1 - ab) * x_vp
    mu = mu_vp / math.sqrt(ab_next)
    beta_tilde = (1 - ab_next) / (1 - ab) * beta_t
    sigmas = torch.tensor([sigma, sigma_next], dtype=torch.float64)

    def run(fill, **kw):
        return S.sample(den, x, sigmas, noise=lambda a, b: torch.full_like(x, fill), **kw)

    for variance, var in [("posterior", beta_tilde), ("beta", beta_t)]:
        torch.testing.assert_close(run(0.0, sampler="ddpm", variance=variance), mu, rtol=1e-12, atol=1e-12)
        std = run(1.0, sampler="ddpm", variance=variance) - mu
        torch.testing.assert_close(std, torch.full_like(x, math.sqrt(var / ab_next)), rtol=1e-10, atol=1e-12)
    # DDIM eta = 1 is the same step; its noise std scales linearly with eta (eq. 16).
    torch.testing.assert_close(run(0.0, sampler="ddim", eta=1.0), mu, rtol=1e-12, atol=1e-12)
    for eta in (0.3, 1.0):
        std = run(1.0, sampler="ddim", eta=eta) - run(0.0, sampler="ddim", eta=eta)
        torch.testing.assert_close(std, torch.full_like(x, eta * math.sqrt(beta_tilde / ab_next)))


def test_ddim_eta1_equals_ddpm_posterior_with_same_seed():
    den = gaussian_denoiser(0.7)
    x_T = start(32, 2, SIGMA_MAX, seed=8)
    sigmas = S.karras_sigmas(10, SIGMA_MIN, SIGMA_MAX)
    a = S.sample(den, x_T, sigmas, sampler="ddim", eta=1.0, generator=torch.Generator().manual_seed(9))
    b = S.sample(den, x_T, sigmas, sampler="ddpm", generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("churn", [2.0, 100.0])  # gamma = churn / N, and clamped at sqrt(2) - 1
def test_edm_churn_gamma_and_tmin_tmax(churn):
    den = gaussian_denoiser(0.7)
    x_T = start(16, 2, SIGMA_MAX, seed=10)
    steps = 10
    sigmas = S.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    seen, draws = [], []
    S.sample(den, x_T, sigmas, sampler="edm_stochastic", s_churn=churn, callback=seen.append,
             noise=lambda a, b: draws.append((a, b)) or torch.zeros_like(x_T))
    gamma = min(churn / steps, math.sqrt(2) - 1)
    assert [info.sigma for info in seen] == pytest.approx([float(v) * (1 + gamma) for v in sigmas[:-1]])
    assert draws == [(float(a), float(b)) for a, b in zip(sigmas[:-1], sigmas[1:])]
    # Churn restricted to levels above every sigma: no noise drawn, identical to heun.
    draws.clear()
    out = S.sample(den, x_T, sigmas, sampler="edm_stochastic", s_churn=churn, s_tmin=2 * SIGMA_MAX,
                   noise=lambda a, b: draws.append(a) or torch.ones_like(x_T))
    assert draws == [] and torch.equal(out, S.sample(den, x_T, sigmas, sampler="heun"))


# --------------------------------------------------------------------------------------------
# Contracts, parametrised over every registered sampler
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_preserved(name, dtype):
    x = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(0), dtype=dtype) * SIGMA_MAX
    sigmas = S.karras_sigmas(6, SIGMA_MIN, SIGMA_MAX)
    out = S.sample(Counter(gaussian_denoiser(0.7)), x, sigmas, sampler=name,
                   generator=torch.Generator().manual_seed(1), **NOISY_OPTIONS.get(name, {}))
    assert out.shape == x.shape and out.dtype == dtype and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", ALL)
def test_seed_reproducibility(name):
    den = gaussian_denoiser(0.7)
    x = start(16, 2, SIGMA_MAX, seed=11)
    sigmas = S.karras_sigmas(8, SIGMA_MIN, SIGMA_MAX)
    opts = NOISY_OPTIONS.get(name, {})

    def run(seed):
        return S.sample(den, x, sigmas, sampler=name, generator=torch.Generator().manual_seed(seed), **opts)

    assert torch.equal(run(3), run(3))
    if S.SAMPLERS.meta(name)["stochastic"] or opts:
        assert not torch.allclose(run(3), run(4))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_nfe_metadata_counts_denoiser_calls(name, steps):
    if is_adaptive(name):
        pytest.skip("adaptive sampler: no fixed denoiser-call count")
    counter = Counter(gaussian_denoiser(0.7))
    sigmas = S.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    S.sample(counter, start(4, 2, SIGMA_MAX, seed=12), sigmas, sampler=name, **NOISY_OPTIONS.get(name, {}))
    assert counter.calls == S.nfe(name, steps) == S.SAMPLERS.meta(name)["nfe"](steps)


@pytest.mark.parametrize("name", ALL)
def test_callback_gets_one_stepinfo_per_step(name):
    sigmas = S.karras_sigmas(5, SIGMA_MIN, SIGMA_MAX)
    x = start(4, 2, SIGMA_MAX, seed=13)
    seen: list[S.StepInfo] = []
    S.sample(gaussian_denoiser(0.7), x, sigmas, sampler=name, callback=seen.append)
    assert all(isinstance(info, S.StepInfo) for info in seen)
    if is_adaptive(name):
        # One StepInfo per accepted adaptive step, then the final denoising step to 0: the levels run
        # from sigmas[0] through sigma_last to 0, contiguous and decreasing.
        assert [info.i for info in seen] == list(range(len(seen))) and len(seen) >= 2
        assert seen[0].sigma == pytest.approx(float(sigmas[0]))
        assert seen[-1].sigma == pytest.approx(float(sigmas[-2])) and seen[-1].sigma_next == 0.0
        assert all(a.sigma_next == b.sigma and a.sigma > a.sigma_next for a, b in itertools.pairwise(seen))
    else:
        assert [info.i for info in seen] == list(range(5))
        assert [info.sigma for info in seen] == pytest.approx(sigmas[:-1].tolist())
        assert [info.sigma_next for info in seen] == sigmas[1:].tolist()
    assert torch.equal(seen[0].x, x)
    for info in seen:
        torch.testing.assert_close(info.denoised, info.x * (0.49 / (0.49 + info.sigma**2)))


@pytest.mark.parametrize("name", ALL)
def test_cond_reaches_denoiser(name):
    label = torch.arange(4)

    def den(x, sigma, *, label, scale):
        assert torch.equal(label, torch.arange(4)) and scale == 2.0
        return x / (1 + sigma[:, None] ** 2)

    counter = Counter(den)
    S.sample(counter, start(4, 2, SIGMA_MAX, seed=14), S.karras_sigmas(3, SIGMA_MIN, SIGMA_MAX),
             sampler=name, cond={"label": label, "scale": 2.0})
    assert counter.calls > 0 if is_adaptive(name) else counter.calls == S.nfe(name, 3)
    assert all(c["label"] is label for c in counter.conds)


@pytest.mark.parametrize("name", ALL)
def test_noise_fn_is_used_when_noisy(name):
    opts = NOISY_OPTIONS.get(name, {})
    if not (S.SAMPLERS.meta(name)["stochastic"] or opts):
        pytest.skip("deterministic sampler")
    calls = []
    x = start(4, 2, SIGMA_MAX, seed=15)
    sigmas = S.karras_sigmas(4, SIGMA_MIN, SIGMA_MAX)
    S.sample(gaussian_denoiser(0.7), x, sigmas, sampler=name,
             noise=lambda a, b: calls.append((a, b)) or torch.zeros_like(x), **opts)
    assert calls and all(a > b for a, b in calls)


def test_sampler_api_errors_and_progress():
    den = gaussian_denoiser(0.7)
    x = start(4, 2, SIGMA_MAX, seed=16)
    with pytest.raises(ValueError, match="heun"):
        S.get_sampler("nope")
    with pytest.raises(ValueError, match="sigmas"):
        S.sample(den, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="variance"):
        S.sample(den, x, S.karras_sigmas(2, SIGMA_MIN, SIGMA_MAX), sampler="ddpm", variance="learned")
    out = S.sample(den, x, S.karras_sigmas(2, SIGMA_MIN, SIGMA_MAX), sampler="euler", progress=True)
    assert out.shape == x.shape


@pytest.mark.parametrize("name", ALL)
def test_steps_for_nfe_inverts_nfe(name):
    if is_adaptive(name):
        with pytest.raises(ValueError, match="adaptive"):
            S.nfe(name, 3)
        with pytest.raises(ValueError, match="adaptive"):
            S.steps_for_nfe(name, 10)
        return
    for steps in range(1, 30):
        assert S.steps_for_nfe(name, S.nfe(name, steps)) == steps
    for budget in range(S.nfe(name, 1), 60):
        k = S.steps_for_nfe(name, budget)
        assert S.nfe(name, k) <= budget < S.nfe(name, k + 1)
    with pytest.raises(ValueError):
        S.steps_for_nfe(name, S.nfe(name, 1) - 1)


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


def _check_grid(sig: torch.Tensor, steps: int):
    assert sig.dtype == torch.float64 and sig.shape == (steps + 1,)
    assert sig[-1] == 0 and bool((sig[1:] < sig[:-1]).all())


@pytest.mark.parametrize("name", ["karras", "log_snr"])
@pytest.mark.parametrize("steps", [1, 2, 10])
def test_sigma_range_schedules(name, steps):
    sig = S.get_sigmas(name, steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    _check_grid(sig, steps)
    assert sig[0] == SIGMA_MAX
    if steps > 1:
        assert sig[-2] == SIGMA_MIN
        # Defining spacing: Karras eq. 5 is linear in sigma^(1/rho); log_snr is linear in log sigma.
        f = sig[:-1] ** (1 / 7.0) if name == "karras" else sig[:-1].log()
        torch.testing.assert_close(f.diff(), f.diff()[:1].expand(steps - 1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("process", [EDM(), VE(), VP(), DDPM(), DDPM(schedule="cosine")], ids=repr)
def test_uniform_t_schedule(process):
    sig = S.uniform_t_sigmas(12, process)
    _check_grid(sig, 12)
    torch.testing.assert_close(sig[0].item(), process.sigma_max, rtol=1e-9, atol=0)
    torch.testing.assert_close(sig[-2].item(), process.sigma_min, rtol=1e-9, atol=0)
    ts = process.t_of_sigma(sig[:-1])
    torch.testing.assert_close(ts.diff(), ts.diff()[:1].expand(11), rtol=1e-6, atol=1e-9)
    # Through get_sigmas: the process range by default, or a sub-range picked via t_of_sigma.
    torch.testing.assert_close(S.get_sigmas("uniform_t", 12, process=process), sig)
    lo, hi = process.sigma_min * 2, process.sigma_max / 2
    sub = S.get_sigmas("uniform_t", 5, sigma_min=lo, sigma_max=hi, process=process)
    torch.testing.assert_close(sub[[0, -2]], torch.tensor([hi, lo], dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("process", [DDPM(), DDPM(schedule="cosine", timesteps=50)], ids=repr)
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_native_schedule(process, steps):
    table = process.native_sigmas()
    sig = S.get_sigmas("native", steps, process=process)
    _check_grid(sig, steps)
    assert all(bool((table == v).any()) for v in sig[:-1])
    assert sig[0] == table[0]
    if steps > 1:
        assert sig[-2] == table[-1]
    with pytest.raises(ValueError, match="steps"):
        S.native_sigmas(table.numel() + 1, process)


def test_schedule_errors():
    good = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    with pytest.raises(ValueError, match="steps"):
        S.get_sigmas("karras", 0, **good)
    with pytest.raises(ValueError, match="sigma_min"):
        S.get_sigmas("karras", 5, sigma_min=0.0, sigma_max=SIGMA_MAX)
    with pytest.raises(ValueError, match="sigma_max"):
        S.get_sigmas("log_snr", 5, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="karras"):
        S.get_sigmas("cosine", 5, **good)
    with pytest.raises(ValueError, match="process"):
        S.get_sigmas("uniform_t", 5, **good)
    with pytest.raises(ValueError, match="process"):
        S.get_sigmas("native", 5, process=EDM())
    with pytest.raises(ValueError, match="steps"):
        S.karras_sigmas(-1, SIGMA_MIN, SIGMA_MAX)


def test_per_sample_noise_draws_rows_come_from_each_inputs_own_generator():
    """PerSampleNoise(draws=k): generator i fills rows i*k .. i*k+k-1, so an input's k draws are the same
    alone or in any batch, and draws=1 is the plain one-row-per-seed stream."""
    from difflab.generate import PerSampleNoise

    batch = PerSampleNoise([5, 9], (2, 3), draws=4)
    first, second = batch.randn(), batch.randn()
    assert first.shape == (8, 2, 3)
    alone = PerSampleNoise([9], (2, 3), draws=4)
    assert torch.equal(alone.randn(), first[4:]) and torch.equal(alone.randn(), second[4:])
    g = torch.Generator().manual_seed(5)
    assert torch.equal(PerSampleNoise([5], (2, 3)).randn()[0], torch.randn((2, 3), generator=g))
    assert not torch.equal(first[0], first[1])
