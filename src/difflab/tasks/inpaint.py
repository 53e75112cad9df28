"""Inpainting (and missing-value imputation): fill the masked entries of a sample, keep the rest exactly.

Three methods, all plain functions of a denoiser D(x, sigma) in EDM coordinates x = x0 + sigma * n over a
descending sigma grid s_0 > ... > s_N = 0:

* ``"repaint"``: Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic Models",
  Alg. 1 with the resampling ("jump") schedule of Sec. 4.2. Each reverse step from s to s' combines

      known part:    x_known + s' z                         (Alg. 1 line 5, q(x_{t-1} | x0) in EDM form),
      unknown part:  one ancestral DDPM step from x at s      (Alg. 1 lines 6-7, Ho et al. 2020 eq. 6-7,
                     ``sampling.ddim.ddim_step`` with eta = 1),

  and a jump back up from s to s_up > s re-noises the whole sample with N(0, s_up^2 - s^2) (Alg. 1 line 10,
  q(x_t | x_{t-1}) in EDM coordinates). A jump of ``jump_length`` j levels is taken ``resamplings - 1``
  times at every j-th level counted from the least noisy one (RePaint's ``get_schedule_jump``), so the
  denoiser is called N + n_jumps (r - 1) j times (:func:`nfe`).
* ``"ddnm"``: Wang, Yu & Zhang 2023, "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space
  Model", Alg. 1 / eq. 13 for the inpainting operator A = A^+ = diag(keep): the x0 estimate is projected
  onto the data-consistent set, x0' = A^+ y + (I - A^+ A) D(x, s) = keep * x_known + fill * D(x, s), and the
  step to s' is the one of the authors' code (their ``efficient_generalized_steps``), in EDM coordinates

      x' = x0' + s' (eta z + sqrt(1 - eta^2) eps),   eps = (x - D(x, s)) / s   (the network's noise estimate),

  so ``eta`` is the fraction of the next level's noise std that is fresh (default 0.85, the authors'
  setting: 72% of the variance is redrawn every step, which lets the fill re-harmonise with the kept part
  at every level), not DDIM's eq. 16 eta; eta = 0 is deterministic DDIM. One denoiser call per step.
  DDNM+'s time-travel (Sec. 3.3) reuses the jump schedule above with ``resamplings > 1`` (default 1: off).
  On held-out MNIST digits with 80% of the pixels missing and the same model, this step gave 15.6 dB on the
  filled pixels against 11.3 dB for a DDIM eq. 16 step with the same eta (32 digits; bench/tasks.py, with
  a 4,000-step model, reports 16.0 dB on 100, docs/benchmarks.md).

* ``"pigdm"``: Song, Vahdat, Mardani & Kautz 2023, "Pseudoinverse-Guided Diffusion Models for Inverse
  Problems" (ICLR), its guidance for a linear operator, here the noiseless inpainting one (H = H^+ =
  diag(keep), sigma_y = 0). It approximates p(x0 | x) by N(D(x, s), r_s^2 I), so the measurement score is
  J^T H^T (y - H D) / r_s^2 with J = dD/dx, and the guided x0 estimate is

      x0_g = D + (s^2 / r_s^2) J^T (keep * (x_known - D)),   r_s^2 = s^2 sd^2 / (s^2 + sd^2),

  where sd = ``sigma_data`` (r_s^2 is the posterior variance of x0 for data N(0, sd^2 I): the paper's
  choice, written for its unit-variance VP data). J^T is one vector-Jacobian product (a backward pass
  through the network), so a step costs about three plain calls (2.3-2.5x a DDNM step measured on the
  MNIST UNet on one CPU core, docs/benchmarks.md). Unlike DDNM's projection, which changes
  only the kept entries and leaves the network to carry them into the fill over later steps, the
  Jacobian carries the kept residual into the fill at every step (for Gaussian data with covariance
  sd^2 I it reduces to the projection). The kept entries of x0_g are then set to x_known (for a noiseless
  mask, E[x0 | x, y] equals y there exactly) and the step is DDNM's below, with the same default eta.

No method samples the exact conditional p(x_fill | x_keep) on a finite grid. On the correlated 4-D
Gaussian of tests/test_inpaint.py (conditioning moves the fill mean by ~0.24 and shrinks its variances by
a third; n = 4000, Karras grid 80 -> 0.002):

* RePaint, 250 steps, j = 10, r = 10 (2410 calls): mean error 0.005-0.02 (0.4-1.5 Monte Carlo se),
  covariance error 0.03-0.04 (mostly the DDPM step's first-order variance deficit, which resampling
  re-applies; it shrinks with more steps);
* RePaint with r = 1 (plain replacement, 250 calls): mean error ~0.10 (7 se), covariance error ~0.11;
* DDNM, 100 steps, eta 0.85 (100 calls): the mean lands on the conditional mean (error 0.01-0.05, 1-2.5 se),
  but the fill is under-dispersed, 0.70-0.78 of the conditional variances: each step redraws only part of
  the noise around D's estimate, whose spread is below the data's. It is the cheap choice, and its fills
  lean towards the posterior mean (sharp where the kept part decides, smoother where it does not); use
  RePaint when the fills must also be as diverse as the true conditional;
* PiGDM, 100 steps, eta 0.85 (100 calls with a backward pass each; n = 2000, seeds 0-1): mean error
  0.047-0.051, variances 0.69-0.71 of the conditional ones, as DDNM's step (the oracle's exact Jacobian
  leaves the guidance little to add here; on the MNIST model PiGDM is far above DDNM, docs/benchmarks.md).

The mask marks the entries to FILL (1 / True) and to keep (0 / False). The output equals ``x_known``
bit for bit where the mask is 0; entries of ``x_known`` under the mask are ignored (they may be NaN).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model import check_class_labels
from ..sampling._core import (
    Callback,
    Denoiser,
    NoiseFn,
    call_denoiser,
    report,
    resolve_noise,
    sigma_list,
    step_range,
)
from ..sampling.ddim import ddim_step

METHODS = ("repaint", "ddnm", "pigdm")
#: Per-method defaults: (steps used by :func:`inpaint` when ``steps`` is None, resamplings, eta).
DEFAULT_STEPS = {"repaint": 250, "ddnm": 100, "pigdm": 100}  # the papers' settings: 2410 and 100 calls
DEFAULT_RESAMPLINGS = {"repaint": 10, "ddnm": 1, "pigdm": 1}
DEFAULT_ETA = {"repaint": 1.0, "ddnm": 0.85, "pigdm": 0.85}


# --------------------------------------------------------------------------------------------------
# Schedule and cost
# --------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name}: must be an integer >= {lo}, got {value!r}")
    return int(value)


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def jump_schedule(steps: int, jump_length: int = 10, resamplings: int = 10) -> list[int]:
    """The grid indices visited by RePaint's resampling schedule (Lugmayr et al. 2022, Sec. 4.2).

    Index 0 is ``sigmas[0]`` (noisiest) and index ``steps`` the clean end. A move i -> i + 1 is one reverse
    step (one denoiser call); a move i -> i - 1 is part of a jump back up. After arriving at index i by a
    reverse step, if ``steps - 1 - i`` is a multiple of ``jump_length`` and i >= jump_length, the schedule
    jumps up ``jump_length`` levels, at most ``resamplings - 1`` times per such i. This is RePaint's
    ``get_schedule_jump(t_T=steps, jump_length, jump_n_sample=resamplings)`` with t = steps - 1 - i.
    ``resamplings == 1`` (or ``jump_length >= steps``) gives the plain descent 0, 1, ..., steps.
    """
    steps = _check_int("steps", steps, 1)
    jump_length = _check_int("jump_length", jump_length, 1)
    resamplings = _check_int("resamplings", resamplings, 1)
    left = {t: resamplings - 1 for t in range(0, steps - jump_length, jump_length)}
    path, i = [0], 0
    while i < steps:
        i += 1
        path.append(i)
        t = steps - 1 - i
        if left.get(t, 0) > 0:
            left[t] -= 1
            path.extend(range(i - 1, i - jump_length - 1, -1))
            i -= jump_length
    return path


def nfe(method: str, steps: int, jump_length: int = 10, resamplings: int | None = None) -> int:
    """Denoiser calls of :func:`inpaint_latent` for a grid of ``steps`` intervals (ending in 0).

    Equals steps + n_jumps * (resamplings - 1) * jump_length with n_jumps = len(range(0, steps - j, j)):
    e.g. RePaint's paper setting (250 steps, j = 10, r = 10) costs 2410 calls, DDNM without time-travel
    ``steps``. ``resamplings=None`` takes the method's default (:data:`DEFAULT_RESAMPLINGS`).
    """
    r = DEFAULT_RESAMPLINGS[_check_method(method)] if resamplings is None else resamplings
    path = jump_schedule(steps, jump_length, r)
    return sum(1 for a, b in itertools.pairwise(path) if b > a)


def nfe_repaint(steps: int, jump_length: int = 10, resamplings: int = 10) -> int:
    """Denoiser calls of RePaint: ``nfe("repaint", steps, jump_length, resamplings)``."""
    return nfe("repaint", steps, jump_length, resamplings)


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------


def mask_values(mask: Any) -> Tensor:
    """``mask`` as a bool tensor (True = fill), from bool, {0, 1} numbers, or 8-bit {0, 255} images.

    Accepted: bool arrays; numeric arrays whose values are all 0 or 1; uint8 arrays whose values are all
    0 or 255 (a black/white PNG, white = fill). Anything else (soft masks, 0/255 in other dtypes, NaN)
    raises ``ValueError`` starting with ``mask:``; thresholding is left to the caller on purpose.
    """
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask).detach().cpu()
    if m.dtype == torch.bool:
        return m
    if m.is_complex():
        raise ValueError(f"mask: must be real (bool or 0/1), got dtype {m.dtype}")
    values = torch.unique(m)
    if bool(torch.isin(values, torch.tensor([0, 1], dtype=m.dtype)).all()):
        return m != 0
    if m.dtype == torch.uint8 and bool(torch.isin(values, torch.tensor([0, 255], dtype=m.dtype)).all()):
        return m != 0
    lo, hi = float(values.min()), float(values.max())
    raise ValueError(
        f"mask: values must be 0/1 (or bool, or 0/255 for uint8), got values in [{lo:g}, {hi:g}]"
    )


def broadcast_mask(mask: Any, shape: tuple[int, ...], name: str = "x_known") -> Tensor:
    """Validate ``mask`` against a batch of shape ``shape`` = (N, *S); return a bool (N, *S) tensor.

    ``mask`` may be per-sample, shape (N, *S) or (1, *S), or one mask for all, shape S; for samples with
    two or more dims (images (C, H, W)) its first sample dim may be 1 to apply to every channel, and an
    (H, W) mask is one mask for all samples and channels (a per-sample mask then needs its channel dim,
    (N, 1, H, W)). Values as in :func:`mask_values`. A mismatch raises ``ValueError("mask: shape (..) does not match <name> (..)")``.
    """
    shape = tuple(int(s) for s in shape)
    m = mask_values(mask)
    sample = shape[1:]
    ms = tuple(m.shape)
    if len(sample) >= 2 and len(ms) == len(sample) - 1:
        ms = (1, 1, *ms)  # an (H, W) mask for (C, H, W) samples
    elif len(ms) == len(sample):
        ms = (1, *ms)
    ok = len(ms) == len(shape) and ms[0] in (1, shape[0])
    if ok:
        for k, (a, b) in enumerate(zip(ms[1:], sample)):
            if a != b and not (k == 0 and a == 1 and len(sample) >= 2):
                ok = False
    if not ok:
        raise ValueError(f"mask: shape {tuple(m.shape)} does not match {name} {shape}")
    return m.reshape(ms).expand(shape)


# --------------------------------------------------------------------------------------------------
# Model space
# --------------------------------------------------------------------------------------------------


def _check_eta(eta: float) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (0.0 <= eta <= 1.0):
        raise ValueError(f"eta: must be a number in [0, 1], got {eta!r}")
    return float(eta)


@torch.no_grad()
def inpaint_latent(
    denoiser: Denoiser,
    x_known: Tensor,
    mask: Any,
    sigmas: Tensor,
    *,
    method: str = "pigdm",
    cond: Mapping[str, Any] | None = None,
    noise: NoiseFn | None = None,
    generator: torch.Generator | None = None,
    jump_length: int = 10,
    resamplings: int | None = None,
    eta: float | None = None,
    sigma_data: float | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """Fill the entries of ``x_known`` where ``mask`` is 1, in model space (see the module docstring).

    Args:
        denoiser: D(x, sigma, **cond) -> x0 estimate.
        x_known: (N, *S) floating tensor, the clean known data; its entries under the mask are ignored.
        mask: 1/True = fill, 0/False = keep; (N, *S), (1, *S) or S, channel dim may be 1 (:func:`broadcast_mask`).
        sigmas: descending grid ending in 0 (the first entry is the starting level).
        method: ``"pigdm"`` (default), ``"ddnm"`` or ``"repaint"``.
        noise: ``noise(sigma, sigma_next)`` -> standard normal like ``x_known`` (e.g. ``PerSampleNoise``);
            called once for the start (with (s_0, s_0)), once per reverse step and once per jump up.
            Default: ``torch.randn`` with ``generator``. Fixed noise makes the result deterministic.
        jump_length, resamplings: the jump schedule (:func:`jump_schedule`); ``resamplings=None`` takes
            the method's default (10 for repaint, as in the paper, 1 for ddnm and pigdm = no time-travel).
        eta: ``None`` = the method's default. repaint: DDIM's eq. 16 eta of the reverse step (default 1,
            the ancestral DDPM step of Alg. 1). ddnm: the fraction of fresh noise of :func:`ddnm_step`
            (default 0.85, the DDNM authors' setting; 0 = deterministic); pigdm: the same step.
        sigma_data: pigdm's data scale sd in r_s^2 (default: ``denoiser.sigma_data``, else 1).
        callback: called with ``StepInfo`` after each denoiser call (``i`` counts denoiser calls).

    Returns:
        (N, *S) tensor in x_known's dtype, equal to ``x_known`` bit for bit where the mask is 0.
        Cost: :func:`nfe` denoiser calls.
    """
    method = _check_method(method)
    if not isinstance(x_known, Tensor) or not x_known.is_floating_point():
        raise ValueError("x_known: must be a floating-point tensor")
    fill = broadcast_mask(mask, tuple(x_known.shape)).to(x_known.device)
    s = sigma_list(x_known, sigmas)
    if s[-1] != 0:
        raise ValueError("sigmas: must end in 0 (inpainting returns clean samples)")
    r = DEFAULT_RESAMPLINGS[method] if resamplings is None else resamplings
    eta = _check_eta(DEFAULT_ETA[method] if eta is None else eta)
    path = jump_schedule(len(s) - 1, jump_length, r)
    if sigma_data is None:
        sigma_data = getattr(denoiser, "sigma_data", 1.0)
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not sigma_data > 0:
        raise ValueError(f"sigma_data: must be a number > 0, got {sigma_data!r}")
    noise_fn = resolve_noise(noise, x_known, generator)

    known = torch.where(fill, torch.zeros_like(x_known), x_known)  # no NaN from the fill region
    # Start: the known part at s_0, the fill part from the prior (data taken as zero-mean at s_0 >> 1).
    x = known + s[0] * noise_fn(s[0], s[0])
    calls = 0
    for k in step_range(len(path) - 1, progress, f"inpaint ({method})"):
        a, b = path[k], path[k + 1]
        sigma, sigma_next = s[a], s[b]
        if b < a:  # jump up: x_b = x_a + sqrt(s_b^2 - s_a^2) z (q(x_t | x_{t-1}) in EDM coordinates)
            x = x + math.sqrt(sigma_next**2 - sigma**2) * noise_fn(sigma, sigma_next)
            continue
        if method == "pigdm":
            denoised, guided = pigdm_estimate(denoiser, x, sigma, known, fill, float(sigma_data), cond)
        else:
            denoised = guided = call_denoiser(denoiser, x, sigma, cond)
        report(callback, calls, sigma, sigma_next, x, denoised)
        calls += 1
        if method != "repaint":  # DDNM's step around the projected x0 estimate (PiGDM: the guided one)
            x = ddnm_step(x, denoised, torch.where(fill, guided, known), sigma, sigma_next, eta, noise_fn)
            continue
        if sigma_next == 0:
            x = denoised
            continue
        # One draw serves both regions (they are disjoint): the fill part of the ancestral step, and the
        # known part freshly drawn from q(x_{t-1} | x0) = N(x_known, s'^2) (Alg. 1 line 5).
        z = noise_fn(sigma, sigma_next)
        x_fill = ddim_step(x, denoised, sigma, sigma_next, eta, lambda *_, z=z: z)
        x = torch.where(fill, x_fill, known + sigma_next * z)
    return torch.where(fill, x, x_known)


def pigdm_estimate(denoiser: Denoiser, x: Tensor, sigma: float, known: Tensor, fill: Tensor, sigma_data: float,
                   cond: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor]:
    """(D(x, sigma), PiGDM's guided x0 estimate) for noiseless inpainting (module docstring, Song et al. 2023):
    x0_g = D + (sigma^2 / r^2) J^T (keep * (known - D)) with r^2 = sigma^2 sd^2 / (sigma^2 + sd^2),
    so sigma^2 / r^2 = 1 + sigma^2 / sd^2. One forward and one backward pass through the denoiser."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        denoised = call_denoiser(denoiser, x_in, sigma, cond)
        residual = torch.where(fill, torch.zeros_like(known), known - denoised.detach())
        (vjp,) = torch.autograd.grad(denoised, x_in, grad_outputs=residual)
    return denoised.detach(), denoised.detach() + (1.0 + sigma**2 / sigma_data**2) * vjp


def ddnm_step(x: Tensor, denoised: Tensor, projected: Tensor, sigma: float, sigma_next: float, eta: float,
              noise: NoiseFn) -> Tensor:
    """DDNM's step from ``sigma`` to ``sigma_next`` (module docstring): x' = x0' + s' (eta z + sqrt(1 - eta^2) eps).

    ``denoised`` is D(x, sigma), which gives the noise estimate eps = (x - D) / sigma; ``projected`` is the
    data-consistent x0' (eq. 13). At ``sigma_next == 0`` the result is x0'. ``noise`` is called only when
    eta > 0.
    """
    if sigma_next == 0:
        return projected
    x_next = projected + (sigma_next * math.sqrt(1.0 - eta**2) / sigma) * (x - denoised)
    if eta > 0:
        x_next = x_next + (sigma_next * eta) * noise(sigma, sigma_next)
    return x_next


# --------------------------------------------------------------------------------------------------
# Data units
# --------------------------------------------------------------------------------------------------


def inpaint(
    model,
    images: Any,
    mask: Any = None,
    *,
    method: str = "pigdm",
    steps: int | None = None,
    schedule: str | None = None,
    seed: int = 0,
    class_labels: Tensor | list[int] | int | None = None,
    guidance: float | None = None,
    samples: int = 1,
    batch_size: int = 256,
    progress: bool = False,
    **options,
) -> Tensor:
    """Inpaint ``images`` (data units) with a loaded :class:`difflab.model.DiffusionModel`.

    For tabular models the same call is missing-value imputation: ``images`` is a table (N, D), the
    mask marks the missing cells, and ``mask=None`` takes them from the NaN entries of the table.

    Args:
        model: a ``DiffusionModel`` (``difflab.load``).
        images: (N, *model.shape) or one sample of shape ``model.shape``; any real dtype (uint8 images,
            floats). Values under the mask are ignored and may be NaN; kept values must be finite.
        mask: 1/True = fill (see :func:`broadcast_mask` for the shapes and :func:`mask_values` for the
            accepted values: bool, 0/1, or uint8 0/255); ``None`` = the NaN entries of ``images``.
        method: ``"pigdm"`` (default: DDNM's calls, each with a backward pass, about 2.5x DDNM's time, and
            the best fills measured, docs/benchmarks.md), ``"ddnm"`` (the cheapest) or ``"repaint"``
            (see :func:`nfe` for the calls).
        steps: grid size; ``None`` = :data:`DEFAULT_STEPS`, the papers' settings: 250 for RePaint (with
            j = r = 10: 2410 denoiser calls), 100 for DDNM and PiGDM (100 calls). ``schedule``: the model's default
            grid (``model.sigmas``) if ``None``.
        seed: sample i uses its own generator seeded ``seed + i`` (``difflab.generate.PerSampleNoise``),
            so it does not depend on the batch it ran in.
        class_labels: for class-conditional models, one label or one per sample; ``None`` =
            unconditional. ``guidance``: classifier-free guidance weight (default: the run's setting).
        samples: fills drawn per input and averaged (K times the cost). One draw (default) is a sharp,
            plausible fill; the average of K draws approaches the posterior mean E[x_fill | x_keep], the
            fill with the least expected squared error (so the best PSNR), blurred where the draws
            disagree. The K draws of input i all come from its own generator, seeded ``seed + i``.
        batch_size: rows per denoiser batch, counting each input's ``samples`` draws (so
            ``batch_size // samples`` inputs a batch, at least one). Past a few hundred rows a CPU batch gets
            slower per row (the MNIST UNet on one core: 4.8 ms a row at 100 rows, 6.8 ms at 800).
        **options: ``jump_length``, ``resamplings``, ``eta``, ``sigma_data`` of :func:`inpaint_latent`.

    Returns:
        Tensor of the input's shape in data units, dtype float32 (float64 for float64 input), equal to
        ``images`` exactly at every kept entry. Filled pixels are not clipped to the pixel range.
    """
    from ..denoiser import CFGDenoiser
    from ..generate import PerSampleNoise

    method = _check_method(method)
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images).detach().cpu()
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"images: must be real numbers, got dtype {x.dtype}")
    shape = tuple(model.shape)
    single = tuple(x.shape) == shape
    if single:
        x = x[None]
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape or x.shape[0] < 1:
        raise ValueError(f"images: shape {tuple(x.shape)} does not match the model's sample shape {shape}")
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(out_dtype)
    fill = torch.isnan(x) if mask is None else broadcast_mask(mask, tuple(x.shape), "images")
    if not bool(torch.isfinite(x[~fill]).all()):
        raise ValueError("images: non-finite values at kept entries (mask them, or pass mask=None for NaN)")
    steps = DEFAULT_STEPS[method] if steps is None else _check_int("steps", steps, 1)
    n = x.shape[0]
    labels = check_class_labels(model, class_labels, n)
    denoiser = model.denoiser
    if labels is not None:
        w = model.cfg.sample.guidance if guidance is None else float(guidance)
        if w < 0:
            raise ValueError(f"guidance: must be >= 0, got {w}")
        if w != 1.0:
            denoiser = CFGDenoiser(denoiser, model.num_classes, w)
    sigmas = model.sigmas(steps, schedule).to(model.device)
    options.setdefault("sigma_data", float(getattr(model.denoiser, "sigma_data", 1.0)))  # pigdm's r^2
    batch_size = _check_int("batch_size", batch_size, 1)
    k = _check_int("samples", samples, 1)
    per_batch = max(1, batch_size // k)  # inputs per denoiser batch of at most batch_size rows
    out = []
    for start in range(0, n, per_batch):
        stop = min(n, start + per_batch)
        known = model.normalize(torch.where(fill[start:stop], 0.0, x[start:stop])).to(model.device)
        # Input i's k draws are rows i*k .. i*k+k-1, all from input i's own generator.
        noise = PerSampleNoise(list(range(seed + start, seed + stop)), shape, device=model.device, draws=k)
        cond = None if labels is None else {"class_labels": labels[start:stop].repeat_interleave(k).to(model.device)}
        z = inpaint_latent(
            denoiser,
            known.repeat_interleave(k, 0),
            fill[start:stop].repeat_interleave(k, 0).to(model.device),
            sigmas,
            method=method,
            cond=cond,
            noise=noise,
            progress=progress,
            **options,
        )
        z = z.reshape(stop - start, k, *shape).mean(1)
        out.append(model.denormalize(z.float().cpu()).to(out_dtype))
    result = torch.where(fill, torch.cat(out), x)  # kept entries copied back bit for bit
    return result[0] if single else result
