"""Inpainting: RePaint and DDNM against the closed-form Gaussian conditional, masks, seeding, data units."""

import itertools
import math

import numpy as np
import pytest
import torch

from difflab.config import ExperimentCfg
from difflab.data import Normalizer
from difflab.model import DiffusionModel, build_denoiser
from difflab.sampling import get_sampler, get_sigmas
from difflab.tasks.inpaint import (
    broadcast_mask,
    inpaint,
    inpaint_latent,
    jump_schedule,
    mask_values,
    nfe,
    nfe_repaint,
)

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


class Gaussian:
    """Data N(mu, Sigma); exact denoiser D(x, s) = mu + Sigma (Sigma + s^2 I)^{-1} (x - mu)."""

    def __init__(self, mu, cov):
        self.mu, self.cov = torch.as_tensor(mu, dtype=F64), torch.as_tensor(cov, dtype=F64)
        self.lam, self.u = torch.linalg.eigh(self.cov)

    def __call__(self, x, sigma):
        s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1) ** 2
        return self.mu + (((x - self.mu) @ self.u) * (self.lam / (self.lam + s2))) @ self.u.T

    def conditional(self, fill, x_known):
        """Mean and covariance of x[fill] given x[~fill] = x_known[~fill] (Schur complement)."""
        f, k = fill, ~fill
        s_fk, s_kk = self.cov[f][:, k], self.cov[k][:, k]
        mean = self.mu[f] + s_fk @ torch.linalg.solve(s_kk, x_known[k] - self.mu[k])
        return mean, self.cov[f][:, f] - s_fk @ torch.linalg.solve(s_kk, s_fk.T)


def correlated_gaussian():
    """D = 4, equicorrelation 0.5 with unequal scales: conditioning on coords 1 and 3 moves the mean of
    coords 0 and 2 by ~0.25 and shrinks their variances by a third."""
    scale = torch.tensor([1.0, 0.8, 1.2, 0.6], dtype=F64).sqrt()
    corr = torch.full((4, 4), 0.5, dtype=F64) + 0.5 * torch.eye(4, dtype=F64)
    return Gaussian([0.3, -0.2, 0.1, 0.0], corr * scale.outer(scale))


FILL = torch.tensor([True, False, True, False])
X_KNOWN = torch.tensor([0.0, 1.0, 0.0, -0.5], dtype=F64)


def run_oracle(oracle, method, steps, n, seed=0, **kw):
    sigmas = get_sigmas("karras", steps, sigma_min=0.002, sigma_max=80.0)
    g = torch.Generator().manual_seed(seed)
    return inpaint_latent(
        oracle, X_KNOWN.expand(n, 4).clone(), FILL, sigmas, method=method, generator=g, **kw
    )


def errors(oracle, out):
    """(max |mean error| / its Monte Carlo standard error, max |mean error|, max |covariance error|)."""
    mean, cov = oracle.conditional(FILL, X_KNOWN)
    y = out[:, FILL]
    err = (y.mean(0) - mean).abs()
    return (
        float((err / (cov.diagonal() / y.shape[0]).sqrt()).max()),
        float(err.max()),
        float((torch.cov(y.T) - cov).abs().max()),
    )


# ---------------------------------------------------------------------------------------------- schedule


def test_jump_schedule_small_case_by_hand():
    # steps=5, j=2, r=2: RePaint jumps at t = 0 and 2 (t = steps - 1 - i), once each, two levels up.
    assert jump_schedule(5, 2, 2) == [0, 1, 2, 1, 0, 1, 2, 3, 4, 3, 2, 3, 4, 5]
    assert jump_schedule(5, 2, 1) == list(range(6))
    assert jump_schedule(3, 5, 10) == [0, 1, 2, 3]  # jump longer than the grid: no resampling


@pytest.mark.parametrize("steps,j,r", [(250, 10, 10), (100, 10, 10), (37, 4, 3), (10, 1, 5)])
def test_nfe_formula_and_schedule_shape(steps, j, r):
    path = jump_schedule(steps, j, r)
    assert path[0] == 0 and path[-1] == steps
    assert all(abs(b - a) == 1 for a, b in itertools.pairwise(path))
    assert min(path) >= 0 and max(path) <= steps
    assert nfe_repaint(steps, j, r) == steps + len(range(0, steps - j, j)) * (r - 1) * j


def test_nfe_defaults_and_counted_calls():
    assert nfe_repaint(250, 10, 10) == 2410  # the paper's setting: 250 steps, j = r = 10
    assert nfe("ddnm", 100) == 100
    oracle, calls = correlated_gaussian(), []
    counting = lambda x, s: calls.append(1) or oracle(x, s)
    for method, r in (("repaint", 3), ("ddnm", None), ("ddnm", 2)):
        calls.clear()
        run_oracle(counting, method, 12, 2, jump_length=3, resamplings=r)
        assert len(calls) == nfe(method, 12, 3, r)


# ------------------------------------------------------------------------------- consistency with samplers


def test_all_fill_equals_unconditional_samplers():
    """With nothing to keep, RePaint (r=1) is ancestral DDPM (same noise, same bits) and DDNM with eta = 0 is
    deterministic DDIM (the same map, computed in another order: equal to float64 rounding)."""
    oracle, n = correlated_gaussian(), 16
    sigmas = get_sigmas("karras", 10, sigma_min=0.002, sigma_max=80.0)
    for method, sampler, eta in (("repaint", "ddpm", None), ("ddnm", "ddim", 0.0)):
        g = torch.Generator().manual_seed(3)
        x = torch.randn(n, 4, dtype=F64, generator=g) * float(sigmas[0])
        ref = get_sampler(sampler)(oracle, x, sigmas, generator=g, **({} if eta is None else {"eta": eta}))
        out = inpaint_latent(
            oracle,
            torch.zeros(n, 4, dtype=F64),
            torch.ones(4),
            sigmas,
            method=method,
            resamplings=1,
            eta=eta,
            generator=torch.Generator().manual_seed(3),
        )
        if method == "repaint":
            assert torch.equal(out, ref)
        else:
            torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------- Gaussian oracle


def test_repaint_resampling_matches_gaussian_conditional():
    """RePaint at the default 250 steps, j = 10: r = 10 reaches the exact conditional, r = 1 does not.

    r = 10, n = 2000 samples: the mean's Monte Carlo standard error (se) is ~0.02 per coordinate, so
    |error| < 4 se is a 4-sigma test (measured 0.3-2.0 se over seeds 0-3). The covariance of 2000 samples
    has standard error sqrt((C_ii C_jj + C_ij^2)/n) <= 0.026; the DDPM step's first-order variance deficit
    (~ the log-sigma step 0.04, ~0.03 on these variances, amplified by the resampling) adds to it, so the
    bound is 0.085 (~2 se + that deficit; measured 0.026-0.057).
    r = 1 (plain replacement, 250 calls) with n = 8000 (se ~0.01): biased by ~0.11 (~10 se) in the mean
    and ~0.12 in the covariance (bench over seeds 0-3 at n = 2000: 0.08-0.14 and 0.10-0.15).
    """
    oracle = correlated_gaussian()
    se_10, mean_10, cov_10 = errors(oracle, run_oracle(oracle, "repaint", 250, 2000, resamplings=10))
    se_1, mean_1, cov_1 = errors(oracle, run_oracle(oracle, "repaint", 250, 8000, resamplings=1))
    assert se_10 < 4.0 and cov_10 < 0.085, (se_10, cov_10)
    assert se_1 > 4.0 and mean_1 > 2 * mean_10 and cov_1 > 0.085, (se_1, mean_1, mean_10, cov_1)


def test_ddnm_what_it_guarantees():
    """DDNM with the authors' step (eta = 0.85, 100 steps) on the Gaussian oracle, n = 2000 per seed.

    Means: independent coordinates give the conditional (= marginal) mean within 4 Monte Carlo se (measured
    0.1-1.6 se over seeds 0-3); correlated ones land on the conditional mean (measured error 0.009-0.046,
    against 0.344 between the marginal and conditional means), asserted below a quarter of that distance.
    Variances: the step redraws only part of the noise around D's estimate, whose spread is below the data's,
    so the fill is under-dispersed: measured 0.70-0.78 of the conditional variances; asserted in [0.6, 0.9].
    """
    indep = Gaussian([0.3, -0.2, 0.1, 0.0], torch.diag(torch.tensor([1.0, 0.8, 1.2, 0.6], dtype=F64)))
    oracle = correlated_gaussian()
    for case in (indep, oracle):
        mean, cov = case.conditional(FILL, X_KNOWN)
        y = run_oracle(case, "ddnm", 100, 2000)[:, FILL]
        if case is indep:
            assert errors(case, run_oracle(case, "ddnm", 100, 2000))[0] < 4.0
        else:
            assert float((y.mean(0) - mean).norm()) < 0.25 * float((case.mu[FILL] - mean).norm())
        ratio = y.var(0) / cov.diagonal()
        assert bool(((ratio > 0.6) & (ratio < 0.9)).all()), ratio


def test_pigdm_guidance_on_the_gaussian_oracle():
    """PiGDM's guided estimate D + (1 + s^2 / sd^2) J^T (keep * (y - D)), kept entries then replaced.

    With independent coordinates J is diagonal, so the guidance touches only kept entries, which are
    replaced: the run equals DDNM's with the same noise. With the correlated oracle the Jacobian carries
    the kept residual into the fill: one step from sigma = 1 moves the fill estimate exactly to
    D + c Sigma (Sigma + I)^-1 [0, r1, 0, r3]. Over whole runs (n = 2000, seeds 0-1) the fill mean lands on
    the conditional mean (measured error 0.047-0.051 against the 0.344 marginal-to-conditional distance)
    with variances 0.69-0.71 of the conditional ones (as DDNM's step, 0.70-0.78)."""
    from difflab.tasks.inpaint import pigdm_estimate

    indep = Gaussian([0.3, -0.2, 0.1, 0.0], torch.diag(torch.tensor([1.0, 0.8, 1.2, 0.6], dtype=F64)))
    torch.testing.assert_close(run_oracle(indep, "pigdm", 30, 64), run_oracle(indep, "ddnm", 30, 64))
    oracle = correlated_gaussian()
    x = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    known = torch.where(FILL, 0.0, X_KNOWN).expand(3, 4)
    d, guided = pigdm_estimate(oracle, x, 1.0, known, FILL.expand(3, 4), 0.5)
    jac = oracle.cov @ torch.linalg.inv(oracle.cov + torch.eye(4, dtype=F64))  # dD/dx, symmetric
    expected = d + (1 + 1.0 / 0.25) * (torch.where(FILL, 0.0, known - d) @ jac)
    torch.testing.assert_close(d, oracle(x, 1.0))
    torch.testing.assert_close(guided, expected)
    mean, cov = oracle.conditional(FILL, X_KNOWN)
    y = run_oracle(oracle, "pigdm", 100, 2000)[:, FILL]
    assert float((y.mean(0) - mean).norm()) < 0.25 * float((oracle.mu[FILL] - mean).norm())
    ratio = y.var(0) / cov.diagonal()
    assert bool(((ratio > 0.6) & (ratio < 0.9)).all()), ratio


@pytest.mark.parametrize("method", ["repaint"])
def test_denoiser_sees_known_region_forward_noised(method):
    """Every denoiser input has x_keep ~ N(x_known, sigma^2) at its level (RePaint Alg. 1 line 5). (Not
    DDNM's property: its kept part carries the network's noise estimate, std 0.84-1.0 sigma on this oracle.) 4000 pooled residuals per call: the std of
    (x - x_known) / sigma has standard error 1/sqrt(2 * 4000) = 0.011, the mean 0.016; bounds are ~5 se."""
    oracle, seen = correlated_gaussian(), []
    keep = ~FILL
    run_oracle(
        oracle,
        method,
        30,
        2000,
        jump_length=5,
        resamplings=3,
        callback=lambda info: seen.append((info.x[:, keep] - X_KNOWN[keep]) / info.sigma),
    )
    assert len(seen) == nfe(method, 30, 5, 3)
    stds = torch.stack([r.std() for r in seen])
    means = torch.stack([r.mean() for r in seen])
    assert float((stds - 1).abs().max()) < 0.06 and float(means.abs().max()) < 0.08, (stds, means)


# --------------------------------------------------------------------------------- exactness and seeding


@pytest.mark.parametrize("method", ["repaint", "ddnm", "pigdm"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_kept_entries_bit_identical_and_nan_ignored(method, dtype):
    oracle = correlated_gaussian()
    d = lambda x, s: oracle(x.to(F64), s).to(x.dtype)
    x_known = torch.randn(5, 4, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 1.37
    mask = torch.tensor([[1, 0, 0, 1]] * 3 + [[0, 1, 1, 0]] * 2)
    x_known[mask.bool()] = float("nan")  # ignored under the mask
    sigmas = get_sigmas("karras", 8, sigma_min=0.002, sigma_max=80.0)
    out = inpaint_latent(
        d,
        x_known,
        mask,
        sigmas,
        method=method,
        jump_length=2,
        resamplings=2,
        generator=torch.Generator().manual_seed(1),
    )
    keep = ~mask.bool()
    assert out.dtype == dtype and torch.equal(out[keep], x_known[keep])
    assert bool(torch.isfinite(out).all())


def test_determinism_and_noise_fn():
    oracle = correlated_gaussian()
    a = run_oracle(oracle, "repaint", 12, 8, seed=4, jump_length=3, resamplings=2)
    b = run_oracle(oracle, "repaint", 12, 8, seed=4, jump_length=3, resamplings=2)
    c = run_oracle(oracle, "repaint", 12, 8, seed=5, jump_length=3, resamplings=2)
    assert torch.equal(a, b) and not torch.equal(a[:, FILL], c[:, FILL])


# ---------------------------------------------------------------------------------------------- masks


def test_mask_values_and_shapes():
    assert torch.equal(mask_values(np.array([0, 255], dtype=np.uint8)), torch.tensor([False, True]))
    assert torch.equal(mask_values([0.0, 1.0]), torch.tensor([False, True]))
    for bad in ([0.0, 0.5], np.array([0, 255], dtype=np.int64), [float("nan"), 1.0], [0, 2]):
        with pytest.raises(ValueError, match="^mask: values must be 0/1"):
            mask_values(bad)
    # one channel broadcasts over channels; one mask for all; per-batch
    m = broadcast_mask(torch.ones(1, 8, 8), (2, 3, 8, 8))
    assert m.shape == (2, 3, 8, 8) and bool(m.all())
    assert broadcast_mask(torch.zeros(2, 1, 8, 8), (2, 3, 8, 8)).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"^mask: shape \(1, 8, 8\) does not match images \(1, 1, 8, 9\)$"):
        broadcast_mask(torch.ones(1, 8, 8), (1, 1, 8, 9), "images")
    with pytest.raises(ValueError, match=r"^mask: shape \(3, 4\) does not match x_known \(2, 4\)$"):
        broadcast_mask(torch.ones(3, 4), (2, 4))
    assert broadcast_mask(torch.ones(8, 8), (2, 3, 8, 8)).shape == (2, 3, 8, 8)  # (H, W): all samples
    with pytest.raises(ValueError, match=r"^mask: shape \(1,\) does not match"):
        broadcast_mask(torch.ones(1), (2, 4))  # tables do not broadcast over columns


def test_argument_errors():
    oracle, x = correlated_gaussian(), torch.zeros(2, 4, dtype=F64)
    sigmas = get_sigmas("karras", 4, sigma_min=0.002, sigma_max=80.0)
    for kw, start in (
        ({"method": "dps"}, "method:"),
        ({"jump_length": 0}, "jump_length:"),
        ({"resamplings": 0}, "resamplings:"),
        ({"eta": 1.5}, "eta:"),
    ):
        with pytest.raises(ValueError, match=f"^{start}"):
            inpaint_latent(oracle, x, FILL, sigmas, **kw)
    with pytest.raises(ValueError, match="^sigmas: must end in 0"):
        inpaint_latent(oracle, x, FILL, sigmas[:-1])


# ------------------------------------------------------------------------------------------ data units


def tiny_model(kind, num_classes=0):
    if kind == "image":
        info = {"kind": "image", "shape": [1, 8, 8], "normalizer": Normalizer.for_range(0, 16).to_dict()}
    else:
        info = {
            "kind": "tabular",
            "shape": [3],
            "normalizer": Normalizer("tabular", [1, -2, 5], [2, 3, 0.5]).to_dict(),
        }
    info.update(num_classes=num_classes, sigma_data=0.5)
    torch.manual_seed(0)
    cfg = ExperimentCfg().replace("model", class_conditional=num_classes > 0)
    return DiffusionModel(build_denoiser(cfg, info), cfg, info)


FAST = {"steps": 4, "jump_length": 2, "resamplings": 2}


@pytest.mark.parametrize("method", ["repaint", "ddnm", "pigdm"])
def test_inpaint_image_data_units_and_per_sample_seeds(method):
    model = tiny_model("image")
    images = torch.randint(0, 17, (3, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(8, 8, dtype=torch.uint8)
    mask[2:6, 3:7] = 255  # an 8-bit mask image, one for all samples and channels
    out = inpaint(model, images, mask, method=method, seed=10, **FAST)
    keep = (mask == 0).expand(3, 1, 8, 8)
    assert out.shape == (3, 1, 8, 8) and out.dtype == torch.float32
    assert torch.equal(out[keep], images[keep].float())
    assert bool(torch.isfinite(out).all()) and not torch.equal(out[~keep], images[~keep].float())
    alone = inpaint(model, images[1], mask, method=method, seed=11, **FAST)  # sample 1 = seed 10 + 1
    # Same noise; only the UNet's batch-size-dependent float summation order may differ (data units ~16).
    torch.testing.assert_close(alone, out[1], rtol=0, atol=1e-4)
    assert torch.equal(inpaint(model, images, mask, method=method, seed=10, **FAST), out)


def test_averaged_fills_approach_the_conditional_mean():
    """samples=K averages K fills per input: on the Gaussian oracle its squared error to the exact conditional
    mean E[x_fill | x_keep] falls from bias^2 + var (one draw) towards bias^2 + var / K."""
    oracle = correlated_gaussian()

    class Exact(torch.nn.Module):
        def forward(self, x, sigma, **cond):
            return oracle(x.double(), sigma).to(x.dtype)

    info = {"kind": "tabular", "shape": [4], "normalizer": Normalizer("tabular", [0.0] * 4, [1.0] * 4).to_dict(),
            "num_classes": 0, "sigma_data": 1.0}
    model = DiffusionModel(Exact(), ExperimentCfg(), info)
    table = X_KNOWN.expand(300, 4).clone()
    mean, cov = oracle.conditional(FILL, X_KNOWN)
    one = inpaint(model, table, FILL, method="ddnm", steps=20, seed=0)
    avg = inpaint(model, table, FILL, method="ddnm", steps=20, seed=0, samples=16)
    assert torch.equal(avg[:, ~FILL], table[:, ~FILL])
    mse_one, mse_avg = (float(((x[:, FILL] - mean) ** 2).mean()) for x in (one, avg))
    assert mse_one > 0.5 * float(cov.diagonal().mean())  # one draw scatters like the posterior
    assert mse_avg < mse_one / 4
    with pytest.raises(ValueError, match="^samples: must be an integer >= 1"):
        inpaint(model, table, FILL, samples=0)


def test_inpaint_tabular_imputes_nan_cells():
    model = tiny_model("tabular")
    table = torch.tensor([[1.5, float("nan"), 4.75], [float("nan"), -2.0, float("nan")]], dtype=F64)
    out = inpaint(model, table, method="ddnm", steps=6)
    assert out.shape == (2, 3) and out.dtype == F64 and bool(torch.isfinite(out).all())
    known = ~torch.isnan(table)
    assert torch.equal(out[known], table[known])


def test_inpaint_batches_and_guidance():
    """Splitting into batches changes nothing (per-sample seeds); class labels with CFG run and keep cells."""
    model = tiny_model("tabular", num_classes=2)
    table = torch.tensor([[1.0, 0.0, 5.0], [2.0, -1.0, 4.5], [0.5, -3.0, 5.5]])
    mask = torch.tensor([0, 1, 0])
    whole = inpaint(model, table, mask, method="repaint", class_labels=[0, 1, 1], guidance=2.0, **FAST)
    split = inpaint(
        model, table, mask, method="repaint", class_labels=[0, 1, 1], guidance=2.0, batch_size=2, **FAST
    )
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)  # same noise; MLP summation order only
    assert torch.equal(whole[:, [0, 2]], table[:, [0, 2]])
    # batch_size counts rows, draws included: 3 draws in batches of 4 rows = one input a batch, same fills.
    avg = inpaint(model, table, mask, method="ddnm", steps=6, samples=3, class_labels=[0, 1, 1])
    one_each = inpaint(model, table, mask, method="ddnm", steps=6, samples=3, class_labels=[0, 1, 1], batch_size=4)
    torch.testing.assert_close(one_each, avg, rtol=0, atol=1e-5)
    assert not torch.allclose(avg, whole)
    # pigdm differentiates through the guided (CFG) denoiser, batch by batch
    guided = inpaint(model, table, mask, method="pigdm", steps=6, class_labels=[0, 1, 1], guidance=2.0)
    torch.testing.assert_close(
        inpaint(model, table, mask, method="pigdm", steps=6, class_labels=[0, 1, 1], guidance=2.0, batch_size=1),
        guided, rtol=0, atol=1e-5)
    assert torch.equal(guided[:, [0, 2]], table[:, [0, 2]]) and bool(torch.isfinite(guided).all())


def test_inpaint_validation():
    model = tiny_model("image")
    images = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"^images: shape \(2, 1, 8, 9\) does not match the model"):
        inpaint(model, torch.zeros(2, 1, 8, 9), torch.ones(8, 9))
    with pytest.raises(ValueError, match=r"^mask: shape \(8, 9\) does not match images \(2, 1, 8, 8\)"):
        inpaint(model, images, torch.ones(8, 9))
    with pytest.raises(ValueError, match="^images: non-finite"):
        inpaint(model, torch.full((1, 1, 8, 8), math.nan), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="^class_labels:"):
        inpaint(model, images, torch.ones(8, 8), class_labels=1)
