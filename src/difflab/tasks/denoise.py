"""Denoising with a diffusion model: the posterior mean (Tweedie) and posterior sampling.

A noisy observation y = x0 + sigma * n (n ~ N(0, I), sigma known) is exactly a sample of the model's noisy
marginal p_sigma in EDM coordinates (Karras et al. 2022, eq. 1-3), so a trained denoiser answers it directly:

* ``"tweedie"``: E[x0 | y] = y + sigma^2 grad log p_sigma(y) = D(y, sigma) (Tweedie's formula; Robbins 1956,
  "An Empirical Bayes Approach to Statistics"; Efron 2011, "Tweedie's Formula and Selection Bias", eq. 1.4).
  The posterior mean is the MMSE estimate, so with a good model it maximises the expected PSNR.
* ``"posterior"``: run the reverse SDE from sigma down to 0 starting at y (Song et al. 2021, "Score-Based
  Generative Modeling through SDEs", eq. 6). The forward and reverse processes share their joint law, so
  started at y the reverse SDE ends in a draw from p(x0 | y). The default sampler is SDE-DPM-Solver++(2M)
  (``dpmpp_2m_sde``, eta = 1; Lu et al. 2022), a second-order-in-the-drift discretisation of that SDE with
  one denoiser call per step. A deterministic sampler (an ODE) gives a deterministic map of y instead, not a
  posterior draw. Averaging K draws (``samples=K``) approaches the posterior mean: for independent draws
  E||mean_K - x0||^2 = MMSE + tr Cov(x0 | y) / K.

Measured (8x8 digits, a digits model trained 4 minutes on an H100, 500 training images, PSNR on the 0..16
range at sigma 0.1 / 0.2 / 0.4 of the range): tweedie 28.70 / 23.65 / 18.52 dB; posterior K=1 (18 steps)
26.38 / 22.25 / 16.72; posterior K=8 (18 steps) 29.01 / 24.46 / 18.71; K=8 with ``ddpm`` and 32 steps
29.14 / 24.55 / 18.84. An imperfect D(y, sigma) is not the exact posterior mean, and averaging draws (which
use D at every lower level) beat it here by 0.3-0.9 dB; with the exact denoiser Tweedie is optimal.

Noise levels are given in the data's own units at the high level (:func:`denoise`) and converted with the
model's normaliser; :func:`estimate_sigma` estimates an unknown Gaussian noise level from images.

The model assumes additive Gaussian noise that was not clipped: an input that was clipped to the value range
(e.g. saved as an 8-bit PNG after adding noise) has non-Gaussian noise at saturated pixels, and both the
noise-level estimate and the denoiser are then misspecified there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import sampling
from ..generate import PerSampleNoise
from ..model import check_class_labels
from ..sampling import NoiseFn

METHODS = ("tweedie", "posterior")
ESTIMATORS = ("mad", "immerkaer", "wavelet")
SIGMA_SCALES = ("data", "unit")
SIGMA_UNITS = ("data", "model")

# Immerkaer 1996, eq. 3: the difference of two Laplacians, orthogonal to planes; response to white noise
# of std sigma has std sqrt(36) sigma = 6 sigma.
_IMMERKAER_MASK = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
_MAD_TO_STD = 0.6744897501960817  # median(|z|) for z ~ N(0, 1): Phi^-1(3/4)


@dataclass(frozen=True)
class DenoiseResult:
    """What :func:`denoise` returns.

    Attributes:
        x0: the denoised samples in data units, shape (N, *model.shape), float32.
        sigma: (N,) the noise level used, in data units (the estimate when sigma was ``"auto"``).
        sigma_model: (N,) the noise level in model space that the denoiser was run at.
    """

    x0: Tensor
    sigma: Tensor
    sigma_model: Tensor


def _sigma_vector(sigma: float | Tensor, n: int) -> Tensor:
    """``sigma`` as a float64 CPU tensor of shape (n,); must be finite and >= 0."""
    try:
        s = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"sigma: expected a number or a tensor, got {sigma!r}") from None
    if s.numel() == 1:
        s = s.expand(n).clone()
    if s.numel() != n:
        raise ValueError(f"sigma: needs one value or one per sample ({n}), got {s.numel()}")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"sigma: must be finite and >= 0, got {s.tolist()[:4]}")
    return s


def posterior_sigmas(sigma: float, steps: int, sigma_min: float, rho: float = 7.0) -> Tensor:
    """The Karras grid (Karras et al. 2022, eq. 5) from ``sigma`` exactly down to ``sigma_min``, then 0.

    ``steps`` noise levels; for ``sigma <= sigma_min`` (or ``steps == 1``) the grid is [sigma, 0], a single
    step to 0, which every sampler here takes as x = D(y, sigma), i.e. Tweedie.
    """
    if sigma <= 0:
        raise ValueError(f"sigma: must be > 0 for a posterior grid, got {sigma!r}")
    if sigma <= sigma_min or steps == 1:
        return torch.tensor([float(sigma), 0.0], dtype=torch.float64)
    return sampling.karras_sigmas(steps, sigma_min, float(sigma), rho=rho)


def _select_cond(cond: Mapping[str, Any] | None, idx: Tensor, n: int) -> dict[str, Any] | None:
    """Rows ``idx`` of every per-sample tensor in ``cond`` (leading dim n); other entries unchanged."""
    if cond is None:
        return None
    return {
        k: v[idx.to(v.device)] if isinstance(v, Tensor) and v.ndim and v.shape[0] == n else v
        for k, v in cond.items()
    }


@torch.no_grad()
def denoise_latent(
    denoiser,
    y: Tensor,
    sigma: float | Tensor,
    *,
    method: str = "tweedie",
    sigmas: Tensor | None = None,
    steps: int = 32,
    samples: int = 1,
    sampler: str = "dpmpp_2m_sde",
    sigma_min: float = 0.002,
    sigma_max: float | None = None,
    cond: Mapping[str, Any] | None = None,
    noise: NoiseFn | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **options: Any,
) -> Tensor:
    """Denoise y = x0 + sigma * n in model space; returns a tensor shaped like ``y``.

    Args:
        denoiser: D(x, sigma, **cond) -> x0 estimate (EDM coordinates).
        y: (N, ...) noisy samples. sigma: one noise level or one per sample, shape (N,); 0 returns y.
        method: ``"tweedie"``: D(y, sigma), the posterior mean (one call). ``"posterior"``: run ``sampler``
            over a grid that starts at sigma (``sigmas``, scalar sigma only, or else
            :func:`posterior_sigmas` with ``steps`` and ``sigma_min``), averaging ``samples`` draws.
        sigma_max: if given, a sigma above it raises ``ValueError`` (the model never saw such noise).
        cond: keyword conditioning for the denoiser (tensors with leading dim N are split per sample).
        noise / generator: the sampler's noise source for ``"posterior"``; ``noise(sigma, sigma_next)`` must
            return a standard normal tensor of shape (N * samples, ...), rows i*samples..(i+1)*samples-1
            belonging to sample i.
        options: passed on to the sampler (e.g. ``eta`` for ``dpmpp_2m_sde``, ``s_churn`` for
            ``edm_stochastic``).
    """
    if method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    if y.ndim < 1 or y.shape[0] < 1:
        raise ValueError(f"y: needs a leading batch dimension, got shape {tuple(y.shape)}")
    n = y.shape[0]
    s = _sigma_vector(sigma, n)
    if sigma_max is not None and bool((s > sigma_max * (1 + 1e-6)).any()):
        raise ValueError(f"sigma: {float(s.max()):.4g} is above the model's sigma_max {sigma_max:.4g}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: must be an integer >= 1, got {samples!r}")
    out = y.clone()
    if method == "tweedie":
        active = s > 0
        if bool(active.any()):
            idx = active.nonzero().reshape(-1)
            sig = s[idx].to(device=y.device, dtype=y.dtype)
            out[idx.to(y.device)] = denoiser(y[idx.to(y.device)], sig, **(_select_cond(cond, idx, n) or {}))
        return out
    meta = sampling.SAMPLERS.meta(sampler)
    if samples > 1 and not meta.get("stochastic"):
        raise ValueError(f"samples: {sampler!r} is deterministic, so all {samples} draws would be equal")
    if sigmas is not None and bool((s != s[0]).any()):
        raise ValueError("sigmas: an explicit grid needs one sigma shared by all samples")
    fn = sampling.get_sampler(sampler)
    k = samples
    y_rep = y.repeat_interleave(k, 0)
    idx_rep = torch.arange(n).repeat_interleave(k)
    full_noise = noise if noise is not None else sampling.default_noise(y_rep, generator)
    draws = torch.empty_like(y_rep)
    for level in torch.unique(s).tolist():
        group = (s == level).nonzero().reshape(-1)
        rows = (s[idx_rep] == level).nonzero().reshape(-1).to(y.device)
        if level == 0:
            draws[rows] = y_rep[rows]
            continue
        grid = sigmas if sigmas is not None else posterior_sigmas(level, steps, sigma_min)
        grid = torch.as_tensor(grid, dtype=torch.float64)
        if not math.isclose(float(grid[0]), level, rel_tol=1e-6):
            raise ValueError(f"sigmas: the grid must start at sigma={level:.6g}, got {float(grid[0]):.6g}")
        if float(grid[-1]) != 0.0:
            raise ValueError("sigmas: the grid must end in 0")
        cond_g = _select_cond(cond, group.repeat_interleave(k), n)
        if isinstance(full_noise, PerSampleNoise):  # only this group's generators advance
            group_noise = full_noise.subset(group.tolist())
        else:

            def group_noise(a: float, b: float, rows: Tensor = rows) -> Tensor:
                return full_noise(a, b)[rows]

        draws[rows] = fn(
            denoiser, y_rep[rows], grid, cond=cond_g, noise=group_noise, progress=progress, **options
        )
    return draws.reshape(n, k, *y.shape[1:]).mean(1)


def estimate_sigma(images: Tensor, *, method: str = "mad") -> Tensor:
    """Estimate the std of additive white Gaussian noise in each image; returns (N,) float64, data units.

    ``images``: (N, C, H, W) with H, W >= 3, in data units (the estimate is in the same units). Methods:

    * ``"mad"`` (default): Immerkaer's mask (Immerkaer 1996, "Fast Noise Variance Estimation", CVIU 64(2),
      eq. 3: the difference of two 3x3 Laplacians, which annihilates constant and linear intensity) applied
      at every interior pixel of every channel; its response to noise is N(0, 36 sigma^2), and sigma is the
      median absolute response / (6 * 0.6745). The median (instead of the paper's mean absolute value, eq. 4)
      ignores the minority of strong responses at edges, which is what matters on sparse images such as
      digits (mostly flat background with sharp strokes).
    * ``"immerkaer"``: the paper's estimator, sqrt(pi/2) mean|response| / 6 (eq. 4).
    * ``"wavelet"``: Donoho & Johnstone 1994 ("Ideal spatial adaptation by wavelet shrinkage", Sec. 4.2):
      median(|HH|) / 0.6745 of the finest diagonal Haar subband (as scikit-image's ``estimate_sigma``).

    Bias: every method estimates sigma_noise plus the clean image's own response to the filter. On images
    whose detail lives at the pixel scale the clean part is not small: on scikit-learn's 8x8 digits (range
    0..16) the clean images alone give ~0.14 of the [0,1] range and ``"mad"`` overestimates sigma = 0.1 of
    the range by ~+75% (+25% at 0.2, +7% at 0.4); on smoother 28x28 digit-like images the bias is < 3% for
    sigma >= 0.1 of the range. No fixed correction is applied: the clean part depends on the image. Pixels
    clipped at the ends of the value range (noise added before clipping) bias the estimate low.
    """
    if method not in ESTIMATORS:
        raise ValueError(f"method: must be one of {', '.join(ESTIMATORS)}, got {method!r}")
    x = torch.as_tensor(images).detach()
    if x.ndim != 4 or x.shape[-1] < 3 or x.shape[-2] < 3 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"images: need shape (N, C, H, W) with H, W >= 3, got {tuple(x.shape)}")
    x = x.to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images: must be finite")
    n = x.shape[0]
    if method == "wavelet":
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        x = x[..., :h, :w]
        hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
        return hh.reshape(n, -1).abs().median(1).values / _MAD_TO_STD
    mask = torch.tensor(_IMMERKAER_MASK, dtype=torch.float64)[None, None]
    resp = F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), mask).reshape(n, -1).abs()
    if method == "immerkaer":
        return resp.mean(1) * math.sqrt(math.pi / 2) / 6
    return resp.median(1).values / (6 * _MAD_TO_STD)


def sigma_to_data_units(
    sigma: float | Tensor, scale: str = "data", value_range: tuple[float, float] | None = None
) -> float | Tensor:
    """Convert a user's noise level to data units.

    ``scale="data"``: sigma is already in the data's units (e.g. 25 for 8-bit images on 0..255).
    ``scale="unit"``: sigma is a fraction of the value range [lo, hi] (e.g. 0.1 on the 0..1 scale), so the
    result is sigma * (hi - lo); needs ``value_range``. ``"auto"`` passes through unchanged.
    """
    if scale not in SIGMA_SCALES:
        raise ValueError(f"scale: must be one of {', '.join(SIGMA_SCALES)}, got {scale!r}")
    if isinstance(sigma, str):
        if sigma != "auto":
            raise ValueError(f"sigma: must be a number or 'auto', got {sigma!r}")
        return sigma
    if scale == "data":
        return sigma
    if value_range is None:
        raise ValueError("value_range: needed for scale='unit' (this data has no fixed value range)")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range: must have hi > lo, got {value_range!r}")
    return sigma * (hi - lo)


def estimate_sigma_ml(
    denoiser,
    y: Tensor,
    sigma_init: float | Tensor,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    iters: int = 50,
    probes: int = 4,
    rtol: float = 1e-4,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Maximum-likelihood noise level of each sample under the model, in model space; returns (N,) float64.

    The noisy marginal obeys the heat equation dp_sigma/dsigma = sigma Lap p_sigma, so with Tweedie's
    s = (D - y) / sigma^2 the stationarity condition d log p_sigma(y) / dsigma = 0 reads
    ||y - D(y, sigma)||^2 = sigma^2 (d - div_y D(y, sigma)) (d = dimension of one sample). It is solved by
    the fixed-point iteration sigma^2 <- ||y - D||^2 / (d - div D), with the divergence from ``probes``
    Rademacher vectors (Hutchinson 1989) held fixed over iterations; sigma stays in [sigma_min, sigma_max].
    For a Gaussian prior N(m, s^2 I) the fixed point is the closed-form ML estimate ||y - m||^2 / d - s^2.
    The estimate is only as good as the model; it removes the bias that image-only estimators have on tiny
    images (see :func:`estimate_sigma`).
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters: must be an integer >= 1, got {iters!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes: must be an integer >= 1, got {probes!r}")
    n = y.shape[0]
    d = y[0].numel()
    s = _sigma_vector(sigma_init, n).clamp(sigma_min, sigma_max)
    kw = dict(cond or {})
    v = torch.randint(0, 2, (probes, *y.shape), generator=generator).to(y) * 2 - 1
    for _ in range(iters):
        sig = s.to(device=y.device, dtype=y.dtype)
        with torch.enable_grad():
            x = y.detach().clone().requires_grad_(True)
            den = denoiser(x, sig, **kw)
            div = torch.zeros(n, dtype=torch.float64, device=y.device)
            for j in range(probes):
                (g,) = torch.autograd.grad(den, x, v[j], retain_graph=j < probes - 1)
                div += (g * v[j]).reshape(n, -1).sum(1).double() / probes
        resid = (y - den.detach()).reshape(n, -1).double().pow(2).sum(1)
        new = (resid / (d - div).clamp_min(1e-3 * d)).sqrt().cpu().clamp(sigma_min, sigma_max)
        done = bool(((new - s).abs() <= rtol * s).all())
        s = new
        if done:
            break
    return s


def _check_images(model, y: Tensor) -> Tensor:
    y = torch.as_tensor(y, dtype=torch.float32)
    if y.ndim != len(model.shape) + 1 or tuple(y.shape[1:]) != tuple(model.shape):
        want = ", ".join(map(str, model.shape))
        raise ValueError(f"y: shape {tuple(y.shape)} does not match the model's (N, {want})")
    if y.shape[0] < 1 or not bool(torch.isfinite(y).all()):
        raise ValueError("y: needs at least one sample and finite values")
    return y


def _to_model_space(model, y: Tensor, sigma, sigma_units: str, estimator: str, seed: int):
    """(z, sigma as given or estimated (N,), isotropic model-space sigma (N,)); see :func:`denoise`."""
    n = y.shape[0]
    scales = torch.tensor(model.normalizer.scale, dtype=torch.float64)
    z = model.normalize(y)
    if isinstance(sigma, str):
        if sigma != "auto":
            raise ValueError(f"sigma: must be a number, a tensor or 'auto', got {sigma!r}")
        if model.kind != "image":
            raise ValueError("sigma: 'auto' needs image data; give the noise level of a table explicitly")
        s_given = estimate_sigma(y, method="mad" if estimator == "ml" else estimator)
        sigma_units = "data"
    else:
        s_given = _sigma_vector(sigma, n)
    if sigma_units == "model":
        s_model = s_given.clone()
    elif model.kind == "image" or bool(torch.allclose(scales, scales[0].expand_as(scales), rtol=1e-6)):
        s_model = s_given / scales[0]
    else:  # per-column levels: top each column up to the largest (see denoise's docstring)
        per_col = s_given[:, None] / scales[None, :]
        s_model = per_col.max(1).values
        extra = (s_model[:, None] ** 2 - per_col**2).clamp_min(0).sqrt().to(z)
        # Seeds offset by 2^40 so the top-up noise never shares a stream with the posterior draws.
        z = z + PerSampleNoise([seed + i + (1 << 40) for i in range(n)], model.shape).randn() * extra
    if bool((s_model > model.sigma_max * (1 + 1e-6)).any()):
        raise ValueError(
            f"sigma: {float(s_given.max()):.4g} ({sigma_units} units) is {float(s_model.max()):.4g} in model "
            f"space, above the model's sigma_max {model.sigma_max:.4g}"
        )
    return z, s_given, s_model


def denoise(
    model,
    y: Tensor,
    sigma: float | Tensor | str,
    *,
    method: str = "tweedie",
    steps: int | None = None,
    samples: int = 1,
    sampler: str = "dpmpp_2m_sde",
    sigma_units: str = "data",
    sigma_estimator: str = "ml",
    seed: int = 0,
    clip: bool = True,
    class_labels: Tensor | list[int] | int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> DenoiseResult:
    """Denoise data-unit samples ``y`` (N, *model.shape) of a :class:`difflab.model.DiffusionModel`.

    ``sigma``: the noise std in data units (a float or one per sample), or ``"auto"`` (images only) to
    estimate it per image: ``sigma_estimator="ml"`` (default) runs :func:`estimate_sigma_ml` under the
    model's prior, started from the ``"mad"`` estimate; the other names use :func:`estimate_sigma` alone
    (model-free, but biased high on tiny images). Measured on 8x8 digits with a digits model trained for
    4 minutes (H100), at sigma 0.1 / 0.2 / 0.4 of the range: "ml" bias -0.3% / +0.1% / +0.1%, relative
    RMSE ~10%; "mad" bias +69% / +26% / +6%. Use :func:`sigma_to_data_units` for a sigma stated as a
    fraction of the value range.

    Mapping to model space: images divide by the normaliser's scalar scale. Tables are standardised per
    column, so isotropic data-unit noise is s_j = sigma / scale_j in column j; when the column scales differ,
    the model (trained on isotropic noise) cannot use that directly, so each column gets independent extra
    noise of std sqrt(max_j s_j^2 - s_j^2), which makes the input exactly x0 + s_max n in model space (some
    information in low-noise columns is given up; the result is exact for that input).
    ``sigma_units="model"`` instead takes sigma as an isotropic level in model space (for tables: in units
    of each column's standard deviation).

    ``batch_size`` counts denoiser rows: with ``method="posterior"`` each input brings its ``samples`` draws,
    so a batch holds ``batch_size // samples`` inputs (at least one).

    ``method``, ``samples``, ``sampler``: see :func:`denoise_latent`; ``steps`` defaults to the run's
    ``sample.steps``. Randomness (posterior draws, tabular top-up noise) is seeded per sample with
    ``seed + i``, so results do not depend on the batch; only the ``"ml"`` estimate's divergence probes
    come from one generator per batch (seeded ``seed`` + the batch's first index). ``clip`` clamps images to
    the value range.
    Returns a :class:`DenoiseResult` (float32, on the CPU); its ``sigma`` is in ``sigma_units``.
    """
    if sigma_units not in SIGMA_UNITS:
        raise ValueError(f"sigma_units: must be one of {', '.join(SIGMA_UNITS)}, got {sigma_units!r}")
    if sigma_estimator not in (*ESTIMATORS, "ml"):
        names = ", ".join((*ESTIMATORS, "ml"))
        raise ValueError(f"sigma_estimator: must be one of {names}, got {sigma_estimator!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: must be an integer >= 1, got {samples!r}")
    y = _check_images(model, y)
    n = y.shape[0]
    labels = check_class_labels(model, class_labels, n)
    z, s_given, s_model = _to_model_space(model, y, sigma, sigma_units, sigma_estimator, seed)
    refine = isinstance(sigma, str) and sigma_estimator == "ml"
    kw = {
        "steps": steps or model.cfg.sample.steps,
        "samples": samples,
        "sampler": sampler,
        "progress": progress,
        "sigma_min": model.sigma_min,
        "sigma_max": model.sigma_max,
    }
    per_batch = max(1, batch_size // samples) if method == "posterior" else batch_size  # rows = inputs x samples
    dev, out = model.device, []
    for start in range(0, n, per_batch):
        stop = min(n, start + per_batch)
        zb, sb = z[start:stop].to(dev), s_model[start:stop]
        cond = None if labels is None else {"class_labels": labels[start:stop].to(dev)}
        if refine:
            gen = torch.Generator().manual_seed(seed + start)
            sb = estimate_sigma_ml(
                model.denoiser,
                zb,
                sb,
                sigma_min=model.sigma_min,
                sigma_max=model.sigma_max,
                cond=cond,
                generator=gen,
            )
            s_model[start:stop] = sb
        noise = None
        if method == "posterior":
            noise = PerSampleNoise(list(range(seed + start, seed + stop)), model.shape, device=dev, draws=samples)

        x0 = denoise_latent(model.denoiser, zb, sb, method=method, cond=cond, noise=noise, **kw)
        out.append(x0.float().cpu())
    x0 = model.denormalize(torch.cat(out))
    if refine:
        s_given = s_model * model.normalizer.scale[0]
    if clip and model.kind == "image" and model.normalizer.value_range is not None:
        x0 = x0.clamp(*model.normalizer.value_range)
    return DenoiseResult(x0=x0, sigma=s_given.float(), sigma_model=s_model.float())
