"""Anomaly detection with a diffusion model: likelihood, ELBO and reconstruction scores, AUROC/AUPRC, heat
maps, and a scikit-learn style detector for tabular arrays.

Scores (higher = more anomalous), all per sample:

* ``"nll"``: the exact negative log-likelihood through the probability-flow ODE (``likelihood.py``), in the
  data's units as ``likelihood.nll_in_data_units`` reports it (the normaliser's log-Jacobian shifts every
  score equally, so rankings are those of the model-space NLL).
* ``"elbo"``: the continuous-time variational bound on the NLL (``elbo.py``), same units; 2 x ``draws``
  denoiser calls per sample instead of an ODE solve with a divergence at every step.
* ``"recon"``: reconstruction error in the style of AnoDDPM (Wyatt et al. 2022, "AnoDDPM: Anomaly Detection
  with Denoising Diffusion Probabilistic Models using Simplex Noise", Sec. 3: partial diffusion to a level,
  denoise, measure the distance). For each level sigma_k, z = x + sigma_k eps in model space and
  x_hat = D(z, sigma_k) (one call: the posterior mean, the limit of many reverse runs), or, with
  ``reverse_steps`` > 0, a deterministic Heun run of that many steps from sigma_k down to 0 (AnoDDPM's
  full reverse). The squared error per element is averaged over ``draws`` noise draws, divided by the
  level's expected error and averaged over the elements; the levels are then combined (below). Levels
  are sigma_data x (0.1, 0.3, 1, 3, 10) by default: the small ones see local structure, the large ones the
  distance to the bulk of the data (on ADBench ``cardio`` the large ones rank best; bench/anomaly_quick.py).

  Normalisation per level: with ``reference`` data (normal samples, e.g. the training rows;
  ``DiffusionDetector`` passes its fit data, the CLI up to 512 training samples) the divisor is the median
  over the reference of the per-sample mean error at that level; without, the error a Gaussian
  N(0, sigma_data^2) would have, sigma_k^2 sigma_data^2 / (sigma_k^2 + sigma_data^2) per element. Either way
  every level contributes on the same scale, where the raw errors of the large levels would otherwise
  dominate.

  Combining the levels (``combine``):

  * ``"profile"``: the vector of log normalised errors across the levels is scored by its squared
    Mahalanobis distance to the reference's vectors (mean and Ledoit-Wolf shrunk covariance, Ledoit & Wolf
    2004), i.e. minus the log-density of a Gaussian fitted to the normal data's error profiles, up to
    constants. This is the multiscale idea of Mahmood, Oliva & Styner 2021 ("Multiscale Score Matching for
    Out-of-Distribution Detection", ICLR; they fit a Gaussian mixture to the score norms across levels): the
    *pattern* of errors across scales, learnt from normal data, separates classes where a fixed weighting
    fails. On 28x28 digits the fine levels rank anomalies *backwards*: a digit with less ink is easier to
    reconstruct at fine scales whatever its class, the input-complexity bias of likelihoods (Serra et al.
    2020, "Input complexity and out-of-distribution detection with likelihood-based generative models").
    An average of the levels inherits the bias; the profile, which is two-sided, uses it.
  * ``"mean"``: the average of the normalised errors over the levels. One-sided: only larger-than-normal
    errors raise it.
  * ``"auto"`` (default): "profile" for images with reference data, "mean" otherwise. Chosen on development
    data that the benchmark never scores (bench/anomaly_dev.py, docs/benchmarks.md): on a one-class split of
    the MNIST *training* digits the profile beat the mean clearly; on tabular sets (scikit-learn's
    breast_cancer and wine, a synthetic mixture against uniform outliers) neither won consistently. On a
    2-D Gaussian fitted together with 5% far outliers, the mean ranked every outlier first (AUROC 1.0) while
    the profile put inliers *nearer* the centre than average first (0.957): two-sided, it flags an unusual
    pattern as readily as a large error. Tables keep the one-sided mean.

  The fitted reference (per-level scale, profile mean and precision) is ``AnomalyResult.calibration``; pass
  it back as ``calibration`` to score new data on the same footing without the reference data.

  For images the per-pixel map (N, H, W) is the normalised error averaged over levels, draws and channels
  (``AnomalyResult.maps``), whichever way the scores combine the levels.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .elbo import elbo
from .generate import PerSampleNoise
from .likelihood import log_likelihood
from .model import check_class_labels

__all__ = ["AnomalyResult", "Calibration", "DiffusionDetector", "anomaly_scores", "auroc_auprc", "default_levels",
           "save_anomaly_maps"]

SCORES = ("recon", "nll", "elbo")
COMBINES = ("auto", "profile", "mean")
LEVEL_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)
#: DiffusionDetector(steps="auto"): at least MIN_STEPS optimiser steps and EPOCHS passes over the training rows,
#: at most MAX_STEPS (docs/benchmarks.md: a fixed 600 steps underfits tables of a thousand rows and more).
MIN_STEPS, EPOCHS, MAX_STEPS = 600, 600, 20_000


@dataclass
class Calibration:
    """What normal reference data tells the recon score (module docstring), fitted by ``Calibration.fit``.

    Attributes:
        levels: the noise levels (model space) it was fitted at.
        scale: (L,) float64, the divisor of each level's squared error (median of the reference's errors).
        center: (L,) mean of the reference's log normalised errors (None without reference data).
        precision: (L, L) inverse of their Ledoit-Wolf shrunk covariance (None without reference data).
    """

    levels: tuple[float, ...]
    scale: Tensor
    center: Tensor | None = None
    precision: Tensor | None = None

    @classmethod
    def fit(cls, levels, errors: Tensor) -> Calibration:
        """From the reference's raw per-level errors ``errors`` (N_ref, L): per-sample mean squared error."""
        from sklearn.covariance import LedoitWolf

        errors = errors.double()
        scale = errors.median(0).values.clamp_min(1e-12)
        feats = torch.log((errors / scale).clamp_min(1e-12))
        if feats.shape[0] < 2:
            return cls(tuple(levels), scale)
        lw = LedoitWolf().fit(feats.numpy())
        return cls(tuple(levels), scale, torch.from_numpy(lw.location_).double(),
                   torch.from_numpy(lw.precision_).double())

    def profile_distance(self, normalised: Tensor) -> Tensor:
        """Squared Mahalanobis distance (N,) of log ``normalised`` errors (N, L) to the reference profile."""
        d = torch.log(normalised.double().clamp_min(1e-12)) - self.center
        return torch.einsum("ni,ij,nj->n", d, self.precision, d)


@dataclass
class AnomalyResult:
    """Per-sample anomaly scores (higher = more anomalous) and what produced them.

    Attributes:
        scores: (N,) float64.
        score: "recon", "nll" or "elbo".
        maps: recon on images: (N, H, W) per-pixel normalised error (mean over levels, draws, channels).
        per_level: recon: (N, L) normalised error per level; levels: the sigmas used (model space).
        stderr: elbo: (N,) Monte Carlo standard error of the scores.
        calibration: recon: the per-level scale and, with reference data, the reference's error profile
            (pass it back as ``calibration`` to score new data the same way without the reference data).
        combine: recon: how the levels were combined, "profile" or "mean".
    """

    scores: Tensor
    score: str
    maps: Tensor | None = None
    per_level: Tensor | None = None
    levels: tuple[float, ...] | None = None
    stderr: Tensor | None = None
    calibration: Calibration | None = None
    combine: str | None = None


def default_levels(model) -> tuple[float, ...]:
    """sigma_data x (0.1, 0.3, 1, 3, 10), clipped to the model's [sigma_min, sigma_max]."""
    sd = float(getattr(model.denoiser, "sigma_data", 1.0))
    return tuple(min(max(f * sd, model.sigma_min), model.sigma_max) for f in LEVEL_FACTORS)


def _cond(model, labels: Tensor | None, n: int) -> dict:
    if not getattr(model, "num_classes", 0):
        return {}
    if labels is None:  # the unconditional branch the model learnt through label dropout
        labels = torch.full((n,), model.num_classes, dtype=torch.long)
    return {"class_labels": labels.to(model.device)}


def _recon_errors(model, z: Tensor, levels, draws: int, reverse_steps: int, noise: PerSampleNoise,
                  cond: dict) -> Tensor:
    """Squared reconstruction error per element, mean over draws: (L, N, *shape), model space. ``noise``
    holds one generator per sample, so a sample's draws do not depend on the batch it is scored in."""
    from .sampling import get_sampler, get_sigmas

    out = []
    for sigma in levels:
        total = torch.zeros_like(z)
        for _ in range(draws):
            eps = noise.randn()
            noisy = z + sigma * eps
            if reverse_steps > 0:
                grid = get_sigmas("karras", reverse_steps, sigma_min=min(model.sigma_min, sigma / 2),
                                  sigma_max=sigma).to(z.device)
                x_hat = get_sampler("heun")(model.denoiser, noisy, grid, cond=cond)
            else:
                x_hat = model.denoiser(noisy, torch.full((z.shape[0],), float(sigma), device=z.device), **cond)
            total += (z - x_hat).pow(2)
        out.append(total / draws)
    return torch.stack(out)


def _recon_batches(model, x: Tensor, labels: Tensor | None, levels, draws: int, reverse_steps: int, seed: int,
                   batch_size: int, progress: bool):
    """Yield the raw squared errors (L, B, *shape) (float64, CPU, model space) of ``x`` (data units) batch by
    batch; sample i draws its noise from a generator seeded ``seed + i``, whatever the batching."""
    from tqdm.auto import tqdm

    for start in tqdm(range(0, x.shape[0], batch_size), desc="anomaly (recon)", disable=not progress, leave=False):
        sl = slice(start, start + batch_size)
        z = model.normalize(x[sl]).to(model.device)
        cond = _cond(model, None if labels is None else labels[sl], z.shape[0])
        noise = PerSampleNoise(range(seed + start, seed + start + z.shape[0]), model.shape, z.device, z.dtype)
        with torch.no_grad():
            yield _recon_errors(model, z, levels, draws, reverse_steps, noise, cond).double().cpu()


def _gaussian_scale(model, levels) -> Tensor:
    """Expected error per element at each level (L,) for data N(0, sigma_data^2)."""
    sd = float(getattr(model.denoiser, "sigma_data", 1.0))
    return torch.tensor([s**2 * sd**2 / (s**2 + sd**2) for s in levels], dtype=torch.float64)


def anomaly_scores(
    model,
    x,
    *,
    score: str = "recon",
    levels: tuple[float, ...] | list[float] | None = None,
    draws: int | None = None,
    reverse_steps: int = 0,
    reference=None,
    calibration: Calibration | None = None,
    combine: str = "auto",
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    class_labels=None,
    trace: str = "auto",
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> AnomalyResult:
    """Anomaly scores of ``x`` (data units, (N, *model.shape)) under a loaded ``DiffusionModel``.

    Args:
        score: "recon", "nll" or "elbo" (module docstring).
        levels: recon noise levels in model space; default ``default_levels(model)``.
        draws: noise draws per level for recon (default 4), or noise levels for elbo (default 64, even).
        reverse_steps: recon: 0 = one denoiser call per level, n > 0 = an n-step Heun run down to 0. A
            run from a level far above the data scale draws a fresh sample and forgets x, so pass
            ``levels`` of at most ~sigma_data with it (AnoDDPM's partial diffusion).
        reference: recon: normal data in data units; fits the per-level scale and error profile.
        calibration: recon: a fitted ``Calibration`` (e.g. ``AnomalyResult.calibration`` of an earlier call
            with ``reference``) at the same ``levels``; overrides ``reference``.
        combine: recon: "profile" (Mahalanobis distance of the log error profile to the reference's; needs
            ``reference`` or a fitted ``calibration``), "mean" (average of the normalised errors), or
            "auto": "profile" for images with reference data, else "mean" (module docstring).
        seed: seeds every random draw. recon: sample i's noise comes from its own generator seeded
            ``seed + i`` (``generate.PerSampleNoise``), so its score does not depend on ``batch_size`` or on
            the samples scored with it; elbo / nll draw from one generator seeded ``seed`` (noise levels,
            Hutchinson probes), so their Monte Carlo draws do depend on the batching.
        batch_size: samples per denoiser batch.
        class_labels: for a class-conditional model, one label or one per sample; default the
            unconditional branch (label ``num_classes``).
        trace, rtol, atol: nll: divergence ("auto" = exact up to 64 dimensions, else Hutchinson with one
            Rademacher probe) and ODE tolerances.
    """
    from tqdm.auto import tqdm

    if score not in SCORES:
        raise ValueError(f"score: must be one of {', '.join(SCORES)}, got {score!r}")
    x = _as_samples(model, x, "x")
    n = x.shape[0]
    labels = check_class_labels(model, class_labels, n)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if draws is not None and (isinstance(draws, bool) or not isinstance(draws, int) or draws < 1):
        raise ValueError(f"draws: must be a positive integer, got {draws!r}")
    if isinstance(reverse_steps, bool) or not isinstance(reverse_steps, int) or reverse_steps < 0:
        raise ValueError(f"reverse_steps: must be an integer >= 0, got {reverse_steps!r}")
    if levels is None:
        levels = default_levels(model)
    levels = tuple(float(s) for s in levels)
    if not levels or not all(math.isfinite(s) and s > 0 for s in levels):
        raise ValueError(f"levels: need one or more finite noise levels > 0, got {levels}")
    if trace not in ("auto", "exact", "hutchinson"):
        raise ValueError(f"trace: must be 'auto', 'exact' or 'hutchinson', got {trace!r}")
    dims = math.prod(model.shape)
    g = torch.Generator().manual_seed(seed)
    logdet = model.normalizer.log_det_jacobian(model.shape)
    if combine not in COMBINES:
        raise ValueError(f"combine: must be one of {', '.join(COMBINES)}, got {combine!r}")
    cal = None
    if score == "recon" and calibration is not None:
        if not isinstance(calibration, Calibration):
            raise ValueError(f"calibration: need a difflab.anomaly.Calibration, got {type(calibration).__name__}")
        if len(calibration.levels) != len(levels) or not all(
                math.isclose(a, b, rel_tol=1e-6) for a, b in zip(calibration.levels, levels)):
            raise ValueError(f"calibration: fitted at levels {calibration.levels}, not the requested {levels}")
        cal = calibration
    elif score == "recon" and reference is not None:  # the reference's raw errors, then their statistics
        ref = _as_samples(model, reference, "reference")
        raw = [err.flatten(2).mean(2).T for err in _recon_batches(
            model, ref, None, levels, draws or 4, reverse_steps, seed + 1, batch_size, progress=False)]
        cal = Calibration.fit(levels, torch.cat(raw))
    elif score == "recon":
        cal = Calibration(levels, _gaussian_scale(model, levels))
    if score == "recon":
        if combine == "auto":
            combine = "profile" if cal.center is not None and model.kind == "image" else "mean"
        if combine == "profile" and cal.center is None:
            raise ValueError("combine: 'profile' needs reference data (2 or more samples) or a fitted calibration")
        scale = cal.scale

    scores, maps, per_level, stderr = [], [], [], []
    if score == "recon":
        for err in _recon_batches(model, x, labels, levels, draws or 4, reverse_steps, seed, batch_size, progress):
            err = err / scale.reshape(-1, *([1] * (err.ndim - 1)))
            per_level.append(err.flatten(2).mean(2).T)
            scores.append(cal.profile_distance(per_level[-1]) if combine == "profile" else per_level[-1].mean(1))
            if model.kind == "image":
                maps.append(err.mean((0, 2)))
    else:  # elbo / nll
        for start in tqdm(range(0, n, batch_size), desc=f"anomaly ({score})", disable=not progress, leave=False):
            sl = slice(start, start + batch_size)
            z = model.normalize(x[sl]).to(model.device)
            cond = _cond(model, None if labels is None else labels[sl], z.shape[0])
            if score == "elbo":
                bound, info = elbo(model.denoiser, z, sigma_min=model.sigma_min, sigma_max=model.sigma_max,
                                   draws=draws or 64, generator=g, cond=cond)
                scores.append(bound.double().cpu() - logdet)
                stderr.append(info["stderr"].double().cpu())
            else:
                mode = ("exact" if dims <= 64 else "hutchinson") if trace == "auto" else trace
                logp, _ = log_likelihood(model.denoiser, z, sigma_min=model.sigma_min, sigma_max=model.sigma_max,
                                         trace=mode, rtol=rtol, atol=atol, generator=g, cond=cond)
                scores.append(-(logp.detach().double().cpu() + logdet))
    return AnomalyResult(
        scores=torch.cat(scores), score=score,
        maps=torch.cat(maps) if maps else None,
        per_level=torch.cat(per_level) if per_level else None,
        levels=levels if score == "recon" else None,
        stderr=torch.cat(stderr) if stderr else None,
        calibration=cal,
        combine=combine if score == "recon" else None,
    )


def _as_samples(model, x, name: str) -> Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, dtype=torch.float32)
    if x.ndim != len(model.shape) + 1 or tuple(x.shape[1:]) != tuple(model.shape):
        raise ValueError(f"{name}: shape {tuple(x.shape)} does not match the model's samples (N, "
                         f"{', '.join(map(str, model.shape))})")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no samples")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def auroc_auprc(scores, labels) -> tuple[float, float]:
    """(AUROC, AUPRC) of anomaly ``scores`` (higher = more anomalous) against ``labels`` (1 = anomaly, 0 =
    normal), via scikit-learn's ``roc_auc_score`` and ``average_precision_score``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"labels: {y.shape[0]} labels for {s.shape[0]} scores")
    if not np.isfinite(s).all():
        raise ValueError("scores: contain NaN or infinite values")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels: must be 0 (normal) or 1 (anomaly)")
    if len(np.unique(y)) < 2:
        raise ValueError(f"labels: need both normal (0) and anomalous (1) samples, got only {int(y[0])}")
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB (..., 3) along a black-purple-red-orange-yellow ramp (inferno-like)."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_HEAT) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_HEAT) - 2)
    frac = (v - lo)[..., None]
    return np.rint(_HEAT[lo] * (1 - frac) + _HEAT[lo + 1] * frac).astype(np.uint8)


def save_anomaly_maps(maps, images, path, *, value_range: tuple[float, float] | None = None,
                      nrow: int = 4, quantile: float = 0.99) -> Path:
    """PNG grid of (input, heat map) pairs, ``nrow`` pairs per row; returns the path.

    ``maps`` (N, H, W); ``images`` (N, C, H, W) or (N, H, W) in data units, shown over ``value_range``
    (default their min..max). All maps share one colour scale, 0 to the ``quantile`` of all values, so
    maps are comparable across images.
    """
    from .data.export import save_image_grid, to_display_uint8

    m = np.asarray(maps.detach().cpu() if isinstance(maps, Tensor) else maps, dtype=np.float64)
    im = np.asarray(images.detach().cpu() if isinstance(images, Tensor) else images, dtype=np.float64)
    if im.ndim == 3:
        im = im[:, None]
    if m.ndim != 3 or im.ndim != 4 or m.shape[0] != im.shape[0] or m.shape[1:] != im.shape[2:]:
        raise ValueError(f"maps: shape {m.shape} does not match images {im.shape} (need (N, H, W) and (N, C, H, W))")
    if im.shape[1] not in (1, 3):
        raise ValueError(f"images: need 1 or 3 channels, got {im.shape[1]}")
    if value_range is None:
        value_range = (float(im.min()), float(im.max()))
    shown = to_display_uint8(im, value_range)  # (N, H, W, C)
    if shown.shape[-1] == 1:
        shown = np.repeat(shown, 3, axis=-1)
    top = float(np.quantile(m, quantile)) if m.size else 1.0
    heat = heat_colors(m / (top if top > 0 else 1.0))
    pairs = np.stack([shown, heat], axis=1).reshape(-1, *shown.shape[1:])
    return save_image_grid(pairs, path, nrow=2 * max(1, int(nrow)))


class DiffusionDetector:
    """Unsupervised outlier detector for tabular arrays, in the scikit-learn / PyOD style.

    ``fit(X)`` trains a difflab model (residual MLP) on the rows of X, ``score_samples(X)`` returns minus the
    anomaly score (higher = more normal, as scikit-learn's IsolationForest), ``decision_function(X)`` is
    ``score_samples(X) - offset_`` (negative = outlier), ``predict(X)`` gives +1 (inlier) / -1 (outlier).
    ``offset_`` is the ``contamination`` quantile of the training rows' ``score_samples``, so about that
    fraction of the training rows is flagged; ``threshold_ = -offset_`` is the same cut on the anomaly score.

    Args:
        contamination: expected fraction of outliers in the training data, in (0, 0.5].
        score: "recon" (default), "elbo" or "nll" (module docstring).
        combine: recon: how the noise levels combine, "auto" (= "mean" for tables), "mean" or "profile"
            (module docstring).
        steps, batch_size, preset: training length, batch and MLP preset ("small", "base", "large").
            ``steps="auto"`` (default) trains for at least :data:`MIN_STEPS` (600) steps and :data:`EPOCHS`
            (600) passes over the rows, at most :data:`MAX_STEPS`: 600 steps of 256 rows for up to 256 rows,
            about 2,700 for a thousand rows. A fixed 600 steps underfitted larger tables: on a development
            table of 1,130 rows (bench/anomaly_dev.py --data digits-loo) 600 / 1,500 / 3,000 steps gave AUROC
            0.74 / 0.80 / 0.86 (IsolationForest 0.75). The "small" MLP has 0.24 M parameters; one thread is
            faster than two on a shared 2-core machine (bench/anomaly_quick.py --threads 1).
        seed: seeds training and scoring.
        model_params: MLP keyword arguments over the preset, e.g. ``{"hidden": 64, "depth": 2}``.
        run_dir: keep the trained run there (default: a temporary folder, deleted after loading).
        device: "cpu", "cuda" or "auto".
        **train_overrides: other ``config.TrainCfg`` fields (lr, warmup, ema_decay, ...). Columns whose values
            are all integers (counts, ratings, 8-bit bands) are trained dequantised, x + U(-1/2, 1/2), as for
            every table (``dequantize``, default "auto"; ``dequantize="off"`` trains on the lattice as given).

    Attributes after fit: ``model_`` (DiffusionModel), ``offset_``, ``threshold_``, ``n_features_in_``,
    ``steps_`` (the steps trained), ``calibration_`` (recon: the training rows' ``Calibration``, else None).
    """

    def __init__(self, contamination: float = 0.1, score: str = "recon", steps: int | str = "auto",
                 preset: str = "small", seed: int = 0, run_dir=None, device: str = "cpu", batch_size: int = 256, model_params=None,
                 combine: str = "auto", **train_overrides):
        self.contamination = contamination
        self.score = score
        self.combine = combine
        self.steps = steps
        self.preset = preset
        self.seed = seed
        self.run_dir = run_dir
        self.device = device
        self.batch_size = batch_size
        self.model_params = model_params
        self.train_overrides = dict(train_overrides)

    # scikit-learn's clone() / GridSearchCV use these
    def get_params(self, deep: bool = True) -> dict:
        keys = ("contamination", "score", "steps", "preset", "seed", "run_dir", "device", "batch_size", "model_params",
                "combine")
        return {**{k: getattr(self, k) for k in keys}, **self.train_overrides}

    def set_params(self, **params) -> DiffusionDetector:
        for key, value in params.items():
            if key in self.get_params() and key not in self.train_overrides:
                setattr(self, key, value)
            else:
                self.train_overrides[key] = value
        return self

    def _steps(self, n_rows: int) -> int:
        """``steps``, or for "auto" at least MIN_STEPS and EPOCHS passes over the rows (at most MAX_STEPS)."""
        if self.steps == "auto":
            return min(MAX_STEPS, max(MIN_STEPS, math.ceil(EPOCHS * n_rows / self.batch_size)))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps: must be 'auto' or an integer >= 1, got {self.steps!r}")
        return self.steps

    def _config(self, steps: int):
        from dataclasses import fields

        from .config import ExperimentCfg, TrainCfg, config_from_dict

        known = {f.name for f in fields(TrainCfg)}
        unknown = sorted(set(self.train_overrides) - known)
        if unknown:
            raise ValueError(f"train_overrides: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        train = {"steps": steps, "batch_size": self.batch_size, "seed": self.seed, "device": self.device,
                 "warmup": min(100, max(1, steps // 10)), "checkpoint_every": max(1, steps),
                 "keep_checkpoints": 1, "sample_grid": 0, "log_every": max(1, steps // 20),
                 **self.train_overrides}
        model = {"backbone": "mlp", "preset": self.preset, "params": dict(self.model_params or {})}
        return config_from_dict({"model": model, "train": train},
                                ExperimentCfg())

    def _check_X(self, X, fitted: bool) -> Tensor:
        try:
            arr = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"X: cannot convert to a float array ({err})") from None
        if arr.ndim != 2:
            raise ValueError(f"X: expected a 2-D array (n_samples, n_features), got shape {arr.shape}")
        if arr.shape[0] < (2 if not fitted else 1) or arr.shape[1] < 1:
            raise ValueError(f"X: too few rows or columns, shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("X: contains NaN or infinite values")
        if fitted and arr.shape[1] != self.n_features_in_:
            raise ValueError(f"X: has {arr.shape[1]} features, but the detector was fitted with {self.n_features_in_}")
        return torch.from_numpy(np.ascontiguousarray(arr))

    def fit(self, X, y=None) -> DiffusionDetector:
        """Train on the rows of X (y is ignored) and set the threshold from ``contamination``."""
        from . import model as model_mod
        from .data import Dataset
        from .training import pick_device, train

        if not 0 < self.contamination <= 0.5:
            raise ValueError(f"contamination: must be in (0, 0.5], got {self.contamination}")
        if self.score not in SCORES:
            raise ValueError(f"score: must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine: must be one of {', '.join(COMBINES)}, got {self.combine!r}")
        x = self._check_X(X, fitted=False)
        self.steps_ = self._steps(x.shape[0])
        cfg = self._config(self.steps_)
        data = Dataset(x=x, labels=None, kind="tabular", name="array")
        tmp = None
        run_dir = self.run_dir
        if run_dir is None:
            tmp = tempfile.mkdtemp(prefix="difflab-detector-")
            run_dir = tmp
        try:
            train(cfg, data, run_dir, progress=False)
            self.model_ = model_mod.load(run_dir, device=pick_device(self.device))
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        self.n_features_in_ = int(x.shape[1])
        self.calibration_ = None
        if self.score == "recon":  # the training rows' per-level scale and error profile
            res = anomaly_scores(self.model_, x, score="recon", reference=x, combine=self.combine, seed=self.seed,
                                 batch_size=1024)
            self.calibration_ = res.calibration
            train_scores = -res.scores.numpy()  # what score_samples(x) returns (same seed and batches)
        else:
            train_scores = self.score_samples(x)
        self.offset_ = float(np.quantile(train_scores, self.contamination))
        self.threshold_ = -self.offset_
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ValueError("X: this DiffusionDetector is not fitted yet; call fit(X) first")

    def score_samples(self, X) -> np.ndarray:
        """Minus the anomaly score, (n_samples,) float64: higher = more normal."""
        self._check_fitted()
        x = self._check_X(X, fitted=True)
        res = anomaly_scores(self.model_, x, score=self.score, seed=self.seed, batch_size=1024,
                             calibration=self.calibration_, combine=self.combine)
        return -res.scores.numpy()

    def decision_function(self, X) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """+1 for inliers, -1 for outliers (decision_function < 0)."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).predict(X)
