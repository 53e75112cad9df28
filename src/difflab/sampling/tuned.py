"""Sigma grids tuned to one model: fewer denoiser calls for the same ODE accuracy.

A deterministic sampler with ``steps`` intervals is a map from the starting noise to an endpoint; its
error against the exact probability-flow ODE endpoint depends strongly on where the ``steps - 1``
interior levels and the last nonzero level sit, and the best places depend on the model (where its
denoiser changes fastest along the trajectories). Hand-made grids (Karras rho = 7, uniform log-SNR) are
good averages; at 4-10 calls a grid fitted to the model is much better.

This module fits the grid directly to the quantity it should minimise, the RMS distance between the
sampler's endpoint and the adaptive ``rk45`` endpoint from the same noise (the teacher), as in
Tong et al. 2024, "Learning to Discretize Denoising Diffusion ODEs" (LD3), and in the spirit of
Sabour et al. 2024, "Align Your Steps" (which minimises a KL upper bound instead). Differences from
LD3: the search is derivative-free (Nelder-Mead over the log-gaps of the grid, so any registered
sampler can be tuned without backpropagating through it) and it uses the hard endpoint loss on a
calibration batch, with a second, held-out batch deciding whether the tuned grid is kept.

Parametrisation: for ``steps`` = n the grid is [sigma_max, s_1, ..., s_{n-1}, 0] with
log s_k = log sigma_max - sum_{j<k} g_j and gaps g = (log sigma_max - log sigma_min) * (eps + softmax(z)) /
(1 + n eps), eps = 1e-6, z in R^n. Every z gives a valid, strictly decreasing grid inside
[sigma_min, sigma_max]; the last gap is the distance from s_{n-1} down to sigma_min, so the search can also
raise the last level.

Costs: one ``rk45`` solve per batch for the teacher, then ``nfe`` calls per objective evaluation.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ._core import SAMPLERS, Denoiser
from .schedules import get_sigmas

#: The grids tried as starting points; the best of them on the calibration batch is the baseline.
BASE_GRIDS = ("log_snr", "karras")


@dataclass
class TunedSchedule:
    """A fitted grid and what it was measured to do.

    ``sigmas`` is the descending grid ending in 0 (``steps + 1`` entries). ``error`` and
    ``baseline_error`` are RMS distances to the rk45 endpoint on the held-out batch, for the tuned grid and
    for the best hand-made grid (``baseline``); ``calls`` counts every denoiser call spent tuning (per
    sample of the batch).
    """

    sampler: str
    nfe: int
    sigmas: list[float]
    error: float
    baseline: str
    baseline_error: float
    calibration_error: float
    calls: int
    n: int
    rtol: float
    options: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def grid(self) -> Tensor:
        return torch.tensor(self.sigmas, dtype=torch.float64)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TunedSchedule:
        try:
            out = cls(**dict(d))
            grid = [float(v) for v in out.sigmas]
        except (TypeError, ValueError) as e:
            raise ConfigError(f"tuned schedule: malformed entry ({e})") from None
        ok = len(grid) >= 2 and grid[-1] == 0.0 and all(a > b for a, b in itertools.pairwise(grid))
        if not ok or not all(math.isfinite(v) for v in grid):
            raise ConfigError("tuned schedule: sigmas must be finite, strictly decreasing and end in 0")
        out.sigmas = grid
        return out


#: Smallest share of the log-sigma range any one gap can take (keeps grids strictly decreasing).
_MIN_SHARE = 1e-6


def tunable_samplers() -> list[str]:
    """The registered samplers whose grid can be tuned: deterministic, with a fixed grid (not adaptive)."""
    return [k for k in SAMPLERS.names()
            if not (SAMPLERS.meta(k).get("stochastic") or SAMPLERS.meta(k).get("adaptive"))]


def grid_from_params(z: np.ndarray, sigma_min: float, sigma_max: float) -> Tensor:
    """The grid [sigma_max, s_1, ..., s_{n-1}, 0] for parameters z in R^n (see the module docstring).

    Each gap's share of the log-sigma range is (eps + softmax(z)_k) / (1 + n eps) with eps = 1e-6, so every
    z gives a strictly decreasing grid with its last nonzero level above sigma_min.
    """
    z = np.asarray(z, dtype=np.float64)
    w = np.exp(z - z.max())
    share = (_MIN_SHARE + w / w.sum()) / (1 + z.size * _MIN_SHARE)
    gaps = (math.log(sigma_max) - math.log(sigma_min)) * share
    log_s = math.log(sigma_max) - np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    sig = torch.tensor(np.exp(log_s), dtype=torch.float64)
    sig[0] = float(sigma_max)
    return torch.cat([sig, sig.new_zeros(1)])


def params_from_grid(sigmas: Tensor, sigma_min: float, last_gap: float = 0.05) -> np.ndarray:
    """Inverse of :func:`grid_from_params` for a grid ending in 0 (up to the softmax's additive constant).

    A grid whose last level is sigma_min has a zero last gap; it is replaced by ``last_gap`` times the
    mean gap so that the search can move it.
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64)[:-1]
    logs = torch.cat([s.log(), torch.tensor([math.log(sigma_min)], dtype=torch.float64)])
    gaps = (logs[:-1] - logs[1:]).numpy()
    gaps = np.maximum(gaps, last_gap * float(gaps.mean()))
    share = gaps / gaps.sum()
    w = share * (1 + gaps.size * _MIN_SHARE) - _MIN_SHARE
    return np.log(np.maximum(w, _MIN_SHARE))


def _rms(a: Tensor, b: Tensor) -> float:
    return float((a - b).double().pow(2).mean().sqrt())


def _slice_cond(cond: Mapping[str, Any] | None, sl: slice) -> dict | None:
    if cond is None:
        return None
    return {k: v[sl] if isinstance(v, Tensor) and v.ndim else v for k, v in cond.items()}


def tune_sigmas(
    denoiser: Denoiser,
    noise: Tensor,
    *,
    sampler: str,
    steps: int,
    sigma_min: float,
    sigma_max: float,
    options: Mapping[str, Any] | None = None,
    cond: Mapping[str, Any] | None = None,
    rtol: float = 1e-5,
    max_evals: int | None = None,
    holdout: float = 0.5,
    progress: Callable[[int, float], Any] | None = None,
) -> TunedSchedule:
    """Fit a ``steps``-interval grid for ``sampler`` to the ODE endpoints of ``denoiser``.

    ``noise`` is standard normal noise (N, *shape), N >= 2; the first ``(1 - holdout) * N`` samples
    calibrate, the rest are held out. The teacher is ``rk45`` at ``rtol = atol = rtol`` from
    ``noise * sigma_max``. The search starts from the better of ``BASE_GRIDS`` and runs Nelder-Mead
    (scipy) for at most ``max_evals`` objective evaluations (default 60 per parameter). The tuned grid is
    returned only if it also beats the baseline on the held-out samples; otherwise the baseline grid is
    returned (``info["kept"]`` says which). ``progress(evals, best_error)`` is called after each
    evaluation. ``options`` are the sampler's keyword options (e.g. ``order`` for UniPC).
    """
    from scipy.optimize import minimize

    meta = SAMPLERS.meta(sampler)
    if sampler not in tunable_samplers():
        raise ConfigError(f"sampler: {sampler} is not a fixed-grid deterministic sampler; nothing to tune")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps: must be an integer >= 1, got {steps!r}")
    if noise.ndim < 2 or noise.shape[0] < 2:
        raise ConfigError("noise: needs a batch of at least 2 samples")
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"holdout: must be in (0, 1), got {holdout!r}")
    fn = SAMPLERS.get(sampler)
    options = dict(options or {})
    nfe = int(meta["nfe"](steps))
    n_cal = min(noise.shape[0] - 1, max(1, round(noise.shape[0] * (1 - holdout))))
    calls = 0

    def counted(x, sigma, **kw):
        nonlocal calls
        calls += 1
        return denoiser(x, sigma, **kw)

    x_all = noise * float(sigma_max)
    with torch.no_grad():
        ref_grid = torch.tensor([float(sigma_max), float(sigma_min), 0.0], dtype=torch.float64)
        parts = [slice(0, n_cal), slice(n_cal, noise.shape[0])]
        refs = [SAMPLERS.get("rk45")(counted, x_all[p], ref_grid, rtol=rtol, atol=rtol, cond=_slice_cond(cond, p))
                for p in parts]

    def error(grid: Tensor, part: int) -> float:
        p = parts[part]
        with torch.no_grad():
            y = fn(counted, x_all[p].clone(), grid, cond=_slice_cond(cond, p), **options)
        e = _rms(y, refs[part])
        return e if math.isfinite(e) else math.inf

    bases = {}
    for name in BASE_GRIDS:
        g = get_sigmas(name, steps, sigma_min=sigma_min, sigma_max=sigma_max)
        bases[name] = (error(g, 0), g)
    base_name = min(bases, key=lambda k: bases[k][0])
    base_cal, base_grid = bases[base_name]
    best = {"err": base_cal, "grid": base_grid}
    evals = 0

    def objective(z: np.ndarray) -> float:
        nonlocal evals
        grid = grid_from_params(z, sigma_min, sigma_max)
        e = error(grid, 0)
        evals += 1
        if e < best["err"]:
            best["err"], best["grid"] = e, grid
        if progress is not None:
            progress(evals, best["err"])
        return math.log(e) if e > 0 else -math.inf

    if steps > 1:
        z0 = params_from_grid(base_grid, sigma_min)
        dim = z0.size
        budget = max_evals if max_evals is not None else 60 * dim
        simplex = np.vstack([z0] + [z0 + 0.5 * np.eye(dim)[i] for i in range(dim)])
        minimize(objective, z0, method="Nelder-Mead",
                 options={"maxfev": int(budget), "initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-4})

    tuned_val, base_val = error(best["grid"], 1), error(base_grid, 1)
    kept = tuned_val < base_val
    grid = best["grid"] if kept else base_grid
    return TunedSchedule(
        sampler=sampler, nfe=nfe, sigmas=[float(v) for v in grid], error=min(tuned_val, base_val),
        baseline=base_name, baseline_error=base_val, calibration_error=float(best["err"] if kept else base_cal),
        calls=calls, n=int(noise.shape[0]), rtol=float(rtol), options=options,
        info={"evals": evals, "kept": "tuned" if kept else base_name, "n_calibration": n_cal,
              "sigma_min": float(sigma_min), "sigma_max": float(sigma_max)},
    )


# ------------------------------------------------------------------------------------- storage


def schedule_key(sampler: str, steps: int, options: Mapping[str, Any] | None = None) -> str:
    """The key of a tuned grid in a schedules file: sampler, options (sorted) and step count."""
    opts = ",".join(f"{k}={options[k]}" for k in sorted(options or {}))
    return f"{sampler}{'[' + opts + ']' if opts else ''}/steps={steps}"


def read_schedules(path: str | Path) -> dict[str, dict]:
    """The entries of a schedules JSON file ({} if it does not exist); a one-line error if unreadable."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable tuned-schedules file ({e.__class__.__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("schedules"), dict):
        raise ConfigError(f"{path}: not a difflab tuned-schedules file (no 'schedules' object)")
    return data["schedules"]


def find_schedule(path: str | Path, sampler: str, steps: int, options: Mapping[str, Any] | None = None
                  ) -> tuple[TunedSchedule, dict] | None:
    """The tuned grid stored for (sampler, steps, options) and its record, or None."""
    rec = read_schedules(path).get(schedule_key(sampler, steps, options))
    if rec is None:
        return None
    return TunedSchedule.from_dict(rec["schedule"]), rec


def write_schedule(path: str | Path, tuned: TunedSchedule, **record: Any) -> None:
    """Add or replace ``tuned`` in the schedules file, atomically (other entries are kept)."""
    from ..config import write_json_atomic

    entries = read_schedules(path)
    entries[schedule_key(tuned.sampler, tuned.steps, tuned.options)] = {"schedule": tuned.to_dict(), **record}
    write_json_atomic(path, {"format": "difflab-tuned-schedules", "version": 1, "schedules": entries})


def available(path: str | Path) -> Sequence[str]:
    return sorted(read_schedules(path))
