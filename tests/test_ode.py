"""Tests for difflab.ode.solve_ivp (Dormand-Prince 5(4)) and the ``rk45`` PF-ODE sampler."""

from __future__ import annotations

import math

import pytest
import torch

import difflab.sampling as S
from difflab.ode import ODEStats, solve_ivp


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("t0,t1", [(0.0, 2.0), (2.0, -1.0)])
def test_exponential_decay_both_directions_stays_in_interval(t0, t1):
    y0 = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    seen: list[float] = []

    def f(t, y):
        seen.append(t)
        return -y

    y1, stats = solve_ivp(f, y0, t0, t1, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(y1, y0 * math.exp(-(t1 - t0)), rtol=1e-6, atol=1e-9)
    assert isinstance(stats, ODEStats) and stats.nfev == len(seen) and stats.steps > 0
    assert stats.nfev == 1 + 1 + 6 * (stats.steps + stats.rejected)  # f0, starting-step trial, FSAL stages
    assert min(seen) >= min(t0, t1) and max(seen) <= max(t0, t1)
    assert seen[-1] == t1  # the last step lands exactly on t1


@pytest.mark.parametrize("tol", [1e-4, 1e-8])
def test_rotation_matches_analytic_solution(tol):
    theta0 = torch.tensor([0.0, 1.0, 2.5], dtype=torch.float64)
    y0 = torch.stack([theta0.cos(), theta0.sin()], 1)
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    t1 = 10.0
    y1, stats = solve_ivp(lambda t, y: y @ rot.T, y0, 0.0, t1, rtol=tol, atol=tol)
    exact = torch.stack([(theta0 + t1).cos(), (theta0 + t1).sin()], 1)
    # Global error ~ (number of steps) * local tolerance, which stays well under 100 * tol here.
    assert float((y1 - exact).abs().max()) < 100 * tol
    assert stats.steps > (20 if tol < 1e-6 else 5)


def test_singular_endpoint_is_never_evaluated_past_and_errors():
    # dy/dt = -y / t is singular at t = 0: integrating from 1 down to 1e-3 must not step past 1e-3.
    y0 = torch.ones(2, 1, dtype=torch.float64)
    ts: list[float] = []
    y1, _ = solve_ivp(lambda t, y: ts.append(t) or -y / t, y0, 1.0, 1e-3, rtol=1e-9, atol=1e-9, first_step=0.5)
    torch.testing.assert_close(y1, y0 * 1e3, rtol=1e-6, atol=0)  # y = 1 / t
    assert min(ts) >= 1e-3
    same, stats = solve_ivp(lambda t, y: -y, y0, 1.0, 1.0)
    assert same is y0 and stats.nfev == 0
    with pytest.raises(RuntimeError, match="max_steps"):
        solve_ivp(lambda t, y: -y, y0, 0.0, 100.0, rtol=1e-10, atol=1e-10, max_steps=3)
    with pytest.raises(ValueError):
        solve_ivp(lambda t, y: -y, y0, 0.0, 1.0, rtol=0.0)


def test_step_shared_by_batch_uses_worst_sample():
    # A stiff-ish sample forces small steps; the easy sample is solved on the same grid, still accurate.
    rates = torch.tensor([[1.0], [30.0]], dtype=torch.float64)
    y1, stats = solve_ivp(lambda t, y: -rates * y, torch.ones(2, 1, dtype=torch.float64), 0.0, 1.0,
                          rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(y1, torch.exp(-rates), rtol=1e-5, atol=1e-9)
    _, alone = solve_ivp(lambda t, y: -y, torch.ones(1, 1, dtype=torch.float64), 0.0, 1.0, rtol=1e-7, atol=1e-9)
    assert stats.steps > alone.steps


def test_rk45_sampler_hits_exact_pf_ode_endpoint():
    s, smin, smax = 0.7, 0.002, 80.0

    def den(x, sigma):
        return x * (s**2 / (s**2 + S.append_dims(sigma, x.ndim) ** 2))

    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.hypot(s, smax)
    sigmas = S.karras_sigmas(10, smin, smax)
    exact_last = x_T * math.sqrt(s**2 + smin**2) / math.sqrt(s**2 + smax**2)
    ref = exact_last * (s**2 / (s**2 + smin**2))
    out = S.sample(den, x_T, sigmas, sampler="rk45")
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert rel < 1e-5, rel
    # Tighter tolerances: closer; a grid without the trailing 0 stops at its last level (no denoising).
    tight = S.sample(den, x_T, sigmas, sampler="rk45", rtol=1e-9, atol=1e-9)
    assert float((tight - ref).abs().max() / ref.abs().max()) < 1e-8
    no_zero = S.sample(den, x_T, sigmas[:-1], sampler="rk45", rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(no_zero, exact_last, rtol=1e-7, atol=1e-7)
    meta = S.SAMPLERS.meta("rk45")
    assert meta["adaptive"] and meta["nfe"] is None and meta["order"] == 5 and not meta["stochastic"]


def test_rk45_sampler_matches_scipy_on_gmm2d_and_one_step_grid():
    from scipy.integrate import solve_ivp as scipy_solve_ivp

    from difflab.data import synthetic

    g = synthetic("gmm2d")
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    smin, smax = 0.002, 80.0

    def rhs(u, y):
        x = torch.from_numpy(y.reshape(x_T.shape))
        return (x - g.denoiser(x, math.exp(u))).numpy().ravel()

    sol = scipy_solve_ivp(rhs, (math.log(smax), math.log(smin)), x_T.numpy().ravel(), rtol=1e-10, atol=1e-10)
    ref = g.denoiser(torch.from_numpy(sol.y[:, -1].reshape(x_T.shape)), smin)
    out = S.sample(lambda x, s: g.denoiser(x, s), x_T, S.karras_sigmas(5, smin, smax), sampler="rk45")
    assert float((out - ref).abs().max()) < 1e-4
    # A grid [sigma, 0] has no ODE part: exactly one denoiser call.
    calls = []
    one = S.sample(lambda x, s: calls.append(s) or g.denoiser(x, s), x_T, torch.tensor([smax, 0.0]), sampler="rk45")
    assert len(calls) == 1 and torch.equal(one, g.denoiser(x_T, smax))
