"""Denoising: Tweedie and posterior sampling against closed-form Gaussian / mixture posteriors, noise-level
estimation on synthetic and digit images, and the data-unit API on tiny models."""

import math

import pytest
import torch

from difflab.config import ExperimentCfg
from difflab.data import Normalizer
from difflab.data.synthetic import GaussianMixture
from difflab.model import DiffusionModel, build_denoiser
from difflab.tasks.denoise import (
    DenoiseResult,
    denoise,
    denoise_latent,
    estimate_sigma,
    estimate_sigma_ml,
    posterior_sigmas,
    sigma_to_data_units,
)

pytestmark = pytest.mark.usefixtures("one_thread")

M, S = 0.3, 0.5  # Gaussian prior N(M, S^2 I) per coordinate


def gauss_denoiser(x, sigma):
    """Exact E[x0 | x] for x0 ~ N(M, S^2 I): M + S^2 / (S^2 + sigma^2) (x - M)."""
    sig = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return M + S**2 / (S**2 + sig**2) * (x - M)


def gauss_pair(n, d, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = M + S * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x0, x0 + sigma * torch.randn(n, d, generator=g, dtype=torch.float64), g


def post_moments(y, sigma):
    shrink = S**2 / (S**2 + sigma**2)
    return M + shrink * (y - M), S**2 * sigma**2 / (S**2 + sigma**2)


# -- Tweedie ---------------------------------------------------------------------------------------------


def test_tweedie_is_the_closed_form_posterior_mean():
    _, y, _ = gauss_pair(64, 4, 0.7, 0)
    mean, _ = post_moments(y, 0.7)
    torch.testing.assert_close(denoise_latent(gauss_denoiser, y, 0.7), mean, rtol=0, atol=1e-12)
    sig = torch.linspace(0.1, 2.0, 64, dtype=torch.float64)  # one sigma per sample
    mean = M + (S**2 / (S**2 + sig**2))[:, None] * (y - M)
    torch.testing.assert_close(denoise_latent(gauss_denoiser, y, sig), mean, rtol=0, atol=1e-12)
    sig[:5] = 0.0  # sigma = 0: the input is already clean
    out = denoise_latent(gauss_denoiser, y, sig)
    assert torch.equal(out[:5], y[:5])


def test_tweedie_equals_mixture_denoiser():
    gm = GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.5, 1.0]], [0.3, 0.5])
    y = gm.sample(50, 1).double() + 0.8 * torch.randn(50, 2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(denoise_latent(gm.denoiser, y, 0.8), gm.denoiser(y, 0.8).to(y.dtype))


def test_tweedie_mse_is_the_mmse():
    n, d, sigma = 4000, 16, 0.5
    x0, y, _ = gauss_pair(n, d, sigma, 3)
    mse = float(((denoise_latent(gauss_denoiser, y, sigma) - x0) ** 2).mean())
    mmse = S**2 * sigma**2 / (S**2 + sigma**2)
    # (D - x0) per coordinate is N(0, MMSE), independent: the mean of n*d squares has relative std
    # sqrt(2 / (n d)) = 0.56%; 3% is > 5 standard errors.
    assert abs(mse / mmse - 1) < 0.03


# -- posterior sampling ----------------------------------------------------------------------------------


def test_posterior_draws_match_the_gaussian_posterior():
    n, d, sigma = 2000, 16, 0.5
    _, y, g = gauss_pair(n, d, sigma, 4)
    mean, var = post_moments(y, sigma)
    out = denoise_latent(gauss_denoiser, y, sigma, method="posterior", steps=32, generator=g)
    r = out - mean  # ~ N(0, var) per coordinate if the draws are exact
    # Standard errors over n*d = 32000 values: mean sqrt(var / 32000) ~ 0.002 (tolerance 5 of them),
    # variance sqrt(2 / 32000) = 0.8% relative; 5% also covers the 32-step discretisation (~1% measured).
    assert abs(float(r.mean())) < 5 * math.sqrt(var / r.numel())
    assert abs(float(r.var()) / var - 1) < 0.05


def test_posterior_without_noise_is_near_the_posterior_mean():
    # The sampler is affine in (y, noise), so with zero noise it returns its conditional mean E[out | y];
    # for the exact reverse SDE that is the posterior mean; the 64-step discretisation error is < 1e-2.
    _, y, _ = gauss_pair(32, 4, 0.8, 5)
    mean, _ = post_moments(y, 0.8)
    out = denoise_latent(gauss_denoiser, y, 0.8, method="posterior", steps=64, noise=lambda a, b: 0 * y)
    assert float((out - mean).abs().max()) < 1e-2


def test_averaging_draws_approaches_the_mmse():
    n, d, sigma = 1000, 16, 0.5
    x0, y, g = gauss_pair(n, d, sigma, 6)
    mmse = S**2 * sigma**2 / (S**2 + sigma**2)
    mses = {}
    for k in (1, 8):
        out = denoise_latent(gauss_denoiser, y, sigma, method="posterior", samples=k, steps=24, generator=g)
        mses[k] = float(((out - x0) ** 2).mean())
    # E||mean_K - x0||^2 = MMSE (1 + 1/K) per coordinate; relative standard errors ~1% over 16000 values.
    assert abs(mses[1] / (2 * mmse) - 1) < 0.06
    assert abs(mses[8] / (1.125 * mmse) - 1) < 0.06
    assert mses[8] < 0.6 * mses[1]


def test_posterior_matches_a_mixture_posterior():
    gm = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.4, 0.4])
    sigma, n = 0.6, 3000
    y = torch.tensor([[0.2, 0.3]], dtype=torch.float64).expand(n, 2).clone()
    out = denoise_latent(
        gm.denoiser, y, sigma, method="posterior", steps=48, generator=torch.Generator().manual_seed(7)
    )
    r = gm.responsibilities(y[:1], sigma)[0]
    shrink = gm.stds**2 / (gm.stds**2 + sigma**2)
    means = gm.means + shrink[:, None] * (y[0] - gm.means)
    var_k = gm.stds**2 * sigma**2 / (gm.stds**2 + sigma**2)
    mean = r @ means
    second = (r[:, None] * means).T @ means + torch.diag((r @ var_k).expand(2))
    cov = second - torch.outer(mean, mean)
    # Monte Carlo over 3000 draws: the mean's standard error is sqrt(cov / n) ~ 0.015; covariance entries
    # (bimodal posterior) have ~3% relative error; 48 steps add ~1%.
    assert torch.allclose(out.mean(0), mean, atol=5 * math.sqrt(float(cov.diag().max()) / n))
    torch.testing.assert_close(torch.cov(out.T), cov, rtol=0.1, atol=0.02)


def test_posterior_per_sample_sigma_and_grids():
    _, y, g = gauss_pair(6, 3, 1.0, 8)
    sig = torch.tensor([0.0, 0.5, 0.5, 1.0, 1.0, 0.001], dtype=torch.float64)
    out = denoise_latent(gauss_denoiser, y, sig, method="posterior", steps=8, generator=g)
    assert torch.equal(out[0], y[0]) and torch.isfinite(out).all()
    grid = posterior_sigmas(0.5, 8, 0.002)
    assert float(grid[0]) == 0.5 and float(grid[-1]) == 0.0 and grid.numel() == 9
    assert posterior_sigmas(0.001, 8, 0.002).tolist() == [0.001, 0.0]
    # One step to 0 is Tweedie.
    one = denoise_latent(gauss_denoiser, y, 0.5, method="posterior", sigmas=torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(one, gauss_denoiser(y, 0.5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": -0.1}, "^sigma:"),
        ({"sigma": float("nan")}, "^sigma:"),
        ({"sigma": 81.0, "sigma_max": 80.0}, "^sigma:"),
        ({"sigma": torch.ones(3)}, "^sigma:"),
        ({"sigma": 0.5, "method": "mean"}, "^method:"),
        ({"sigma": 0.5, "method": "posterior", "samples": 0}, "^samples:"),
        ({"sigma": 0.5, "method": "posterior", "samples": 2, "sampler": "heun"}, "^samples:"),
        ({"sigma": 0.5, "method": "posterior", "sigmas": torch.tensor([0.4, 0.0])}, "^sigmas:"),
        ({"sigma": 0.5, "method": "posterior", "steps": 0}, "^steps:"),
    ],
)
def test_denoise_latent_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        denoise_latent(gauss_denoiser, torch.zeros(2, 3, dtype=torch.float64), **kwargs)


# -- noise-level estimation ------------------------------------------------------------------------------


def smooth_images(n, size, seed):
    """Random smooth images in [0, 1]: a few low-frequency cosines (no pixel-scale detail)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linspace(0, 1, size, dtype=torch.float64)
    img = torch.zeros(n, 1, size, size, dtype=torch.float64)
    for _ in range(4):
        a, fx, fy, ph = torch.rand(4, n, generator=g, dtype=torch.float64)
        wave = torch.cos(
            2
            * math.pi
            * (
                2 * fx[:, None, None] * u[None, :, None]
                + 2 * fy[:, None, None] * u[None, None, :]
                + ph[:, None, None]
            )
        )
        img += (a / 8)[:, None, None, None] * wave[:, None]
    return img + 0.5


@pytest.mark.parametrize("method", ["mad", "immerkaer", "wavelet"])
def test_estimate_sigma_on_smooth_images(method):
    x = smooth_images(64, 32, 0)
    g = torch.Generator().manual_seed(1)
    for sigma in (0.02, 0.1, 0.4):
        est = estimate_sigma(x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype), method=method)
        rel = est / sigma - 1
        # Per image (900 overlapping responses, or 256 Haar coefficients) the relative std is <= 8%
        # (MAD of 256 values: 1.17 / sqrt(256) = 7%); the smooth content adds < 1% at sigma = 0.02.
        assert abs(float(rel.mean())) < 0.03, (sigma, float(rel.mean()))
        assert float(rel.abs().max()) < 0.35
    # Clean smooth images give ~0: Immerkaer's mask cancels planes (residual < 0.002 here); the Haar HH
    # filter cancels only constant and linear terms in each 2x2 block (the curvature gives up to ~0.01).
    assert float(estimate_sigma(x, method=method).max()) < 0.015


def test_estimate_sigma_on_digits_bias():
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:300], dtype=torch.float64)[:, None]  # 8x8, 0..16
    g = torch.Generator().manual_seed(2)
    bias = {}
    for unit in (0.1, 0.2, 0.4):  # of the [0, 1] range
        sigma = 16 * unit
        est = estimate_sigma(x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype))
        bias[unit] = float(est.mean() / sigma - 1)
    clean = float(estimate_sigma(x).mean()) / 16
    # Documented in estimate_sigma: clean 8x8 digits have pixel-scale detail of ~0.14 of the range, so the
    # estimate is biased up, strongly at 0.1 (measured ~+0.77), less at 0.4 (~+0.07); the bias falls with
    # sigma. Bounds leave room for the Monte Carlo error over 300 images (~2%).
    assert 0.08 < clean < 0.2
    assert bias[0.1] > bias[0.2] > bias[0.4] > -0.05
    assert bias[0.4] < 0.15 and bias[0.1] < 1.0


def test_estimate_sigma_rejects_bad_input():
    with pytest.raises(ValueError, match="^images:"):
        estimate_sigma(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="^images:"):
        estimate_sigma(torch.zeros(2, 1, 2, 8))
    with pytest.raises(ValueError, match="^method:"):
        estimate_sigma(torch.zeros(2, 1, 8, 8), method="bm3d")


def test_estimate_sigma_ml_is_the_gaussian_ml_estimate():
    g = torch.Generator().manual_seed(3)
    y = M + math.sqrt(S**2 + 0.4**2) * torch.randn(8, 64, generator=g, dtype=torch.float64)
    est = estimate_sigma_ml(gauss_denoiser, y, 1.0, generator=g, iters=200, probes=1)
    ref = (((y - M) ** 2).mean(1) - S**2).clamp_min(0.002**2).sqrt()  # closed-form ML
    # The fixed point is exact here (Hutchinson is exact for D linear with J = c I); tolerance is the
    # stopping rule (relative change < 1e-4 with contraction rate <= 0.9).
    torch.testing.assert_close(est, ref, rtol=2e-3, atol=1e-4)


def test_sigma_to_data_units():
    assert sigma_to_data_units(25.0, "data", (0, 255)) == 25.0
    assert sigma_to_data_units(0.1, "unit", (0, 255)) == pytest.approx(25.5)
    assert sigma_to_data_units(0.1, "unit", (0, 16)) == pytest.approx(1.6)
    assert sigma_to_data_units("auto", "unit", (0, 255)) == "auto"
    with pytest.raises(ValueError, match="^value_range:"):
        sigma_to_data_units(0.1, "unit", None)
    with pytest.raises(ValueError, match="^scale:"):
        sigma_to_data_units(0.1, "pixels", (0, 1))


# -- data units on tiny models ---------------------------------------------------------------------------


def tiny_model(kind="image"):
    if kind == "image":
        norm = Normalizer.for_range(0, 16)
        info = {"kind": "image", "shape": [1, 8, 8], "normalizer": norm.to_dict(), "sigma_data": 0.5}
    else:
        norm = Normalizer("tabular", [1.0, -2.0, 0.0], [2.0, 0.5, 1.0])
        info = {"kind": "tabular", "shape": [3], "normalizer": norm.to_dict(), "sigma_data": 1.0}
    info["num_classes"] = 0
    torch.manual_seed(0)
    cfg = ExperimentCfg()
    return DiffusionModel(build_denoiser(cfg, info), cfg, info)


def test_denoise_image_model_runs_in_data_units():
    model = tiny_model()
    y = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 16
    res = denoise(model, y, 1.6)
    assert isinstance(res, DenoiseResult) and res.x0.shape == y.shape and res.x0.dtype == torch.float32
    assert float(res.x0.min()) >= 0 and float(res.x0.max()) <= 16
    torch.testing.assert_close(res.sigma, torch.full((3,), 1.6))
    torch.testing.assert_close(res.sigma_model, torch.full((3,), 0.2))  # scale (16 - 0) / 2 = 8
    auto = denoise(model, y, "auto", method="posterior", steps=3, samples=2, sigma_estimator="mad")
    torch.testing.assert_close(auto.sigma, estimate_sigma(y).float())
    # Per-sample seeds: a sample's draws do not depend on the rest of the batch.
    part = denoise(model, y[:2], "auto", method="posterior", steps=3, samples=2, sigma_estimator="mad")
    torch.testing.assert_close(part.x0, auto.x0[:2], rtol=1e-4, atol=1e-4)
    # batch_size counts rows, draws included: batches of 3 rows hold one input with its 2 draws.
    rows3 = denoise(model, y, "auto", method="posterior", steps=3, samples=2, sigma_estimator="mad", batch_size=3)
    torch.testing.assert_close(rows3.x0, auto.x0, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="^samples: must be an integer >= 1"):
        denoise(model, y, 0.1, samples=0)


def test_denoise_maps_units_exactly():
    # With the exact Gaussian denoiser in model space, denoise in data units equals the closed form.
    model = tiny_model()
    model.denoiser = gauss_denoiser
    z = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model.denormalize(z)
    res = denoise(model, y, 4.0, clip=False)  # data sigma 4 on 0..16 = 0.5 in model space
    torch.testing.assert_close(res.x0, model.denormalize(gauss_denoiser(z, 0.5)), rtol=1e-5, atol=1e-5)
    res = denoise(model, y, 0.5, sigma_units="model", clip=False)
    torch.testing.assert_close(res.x0, model.denormalize(gauss_denoiser(z, 0.5)), rtol=1e-5, atol=1e-5)


def test_denoise_auto_ml_recovers_sigma_in_data_units():
    # Exact Gaussian prior in model space: the ML estimate has the closed form sqrt(||z - M||^2 / d - S^2).
    model = tiny_model()
    model.denoiser = gauss_denoiser
    g = torch.Generator().manual_seed(4)
    z = M + math.sqrt(S**2 + 0.6**2) * torch.randn(6, 1, 8, 8, generator=g)  # model-space sigma 0.6
    res = denoise(model, model.denormalize(z), "auto", clip=False)
    ref = (((z - M) ** 2).flatten(1).mean(1) - S**2).sqrt()
    assert float(ref.min()) > 0.3  # the ML estimate is interior for this seed
    # Stopping rule (relative change < 1e-4, contraction S^2 / (S^2 + ref^2) < 0.75) and float32: < 0.5%.
    torch.testing.assert_close(res.sigma_model, ref, rtol=5e-3, atol=0)
    torch.testing.assert_close(res.sigma, 8 * ref, rtol=5e-3, atol=0)  # data units: scale 8
    torch.testing.assert_close(
        res.x0, model.denormalize(gauss_denoiser(z, res.sigma_model)), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("sigma", [-1.0, float("nan"), 16 * 81.0, "loud"])
def test_denoise_rejects_bad_sigma(sigma):
    model = tiny_model()
    with pytest.raises(ValueError, match="^sigma:"):
        denoise(model, torch.zeros(2, 1, 8, 8), sigma)


def test_denoise_tabular():
    model = tiny_model("tabular")
    y = torch.randn(4, 3)
    with pytest.raises(ValueError, match="^sigma: 'auto' needs image data"):
        denoise(model, y, "auto")
    res = denoise(model, y, 0.5)  # column scales 2, 0.5, 1: model-space levels 0.25, 1, 0.5 -> top up to 1
    torch.testing.assert_close(res.sigma_model, torch.ones(4))
    assert res.x0.shape == y.shape and torch.isfinite(res.x0).all()
    res = denoise(model, y, 0.5, sigma_units="model")
    torch.testing.assert_close(res.sigma_model, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="^y:"):
        denoise(model, torch.zeros(4, 2), 0.5)
