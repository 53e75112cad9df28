"""Sigma grids for sampling.

Every function returns a descending float64 1-D tensor of length ``steps + 1`` whose last entry is a
trailing 0: ``steps`` noise levels followed by the clean end point, the layout of Karras et al. 2022
("Elucidating the Design Space of Diffusion-Based Generative Models", EDM), eq. 5, where
sigma_N = 0. A sampler takes one step per interval, so ``steps`` is also the number of sampler steps.

Schedules are registered in ``SCHEDULES`` and dispatched by name with ``get_sigmas``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import ConfigError
from ..process import NoiseProcess
from ..registry import Registry

SCHEDULES: Registry[Callable[..., Tensor]] = Registry("sigma schedule")


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps: must be an integer >= 1, got {steps!r}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (math.isfinite(sigma_min) and sigma_min > 0):
        raise ConfigError(f"sigma_min: must be finite and > 0, got {sigma_min!r}")
    if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
        raise ConfigError(f"sigma_max: must be finite and > sigma_min={sigma_min!r}, got {sigma_max!r}")


def _append_zero(sigmas: Tensor) -> Tensor:
    sigmas = sigmas.to(torch.float64)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@SCHEDULES.register("karras")
def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho.

    i = 0..N-1 with N = ``steps``, then sigma_N = 0. For ``steps == 1`` the grid is [sigma_max, 0].
    """
    _check_steps(steps)
    _check_range(sigma_min, sigma_max)
    if not (math.isfinite(rho) and rho > 0):
        raise ConfigError(f"rho: must be finite and > 0, got {rho!r}")
    if steps == 1:
        return _append_zero(torch.tensor([float(sigma_max)], dtype=torch.float64))
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    # Pin the end points exactly (the power round trip can be off by an ulp).
    sigmas[0], sigmas[-1] = float(sigma_max), float(sigma_min)
    return _append_zero(sigmas)


@SCHEDULES.register("log_snr")
def log_snr_sigmas(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in log-SNR lambda = -2 log sigma (Kingma et al. 2021, "Variational Diffusion Models";
    the grid of Lu et al. 2022, "DPM-Solver", Sec. 3.3), i.e. log-linear in sigma, then a trailing 0.

    For ``steps == 1`` the grid is [sigma_max, 0].
    """
    _check_steps(steps)
    _check_range(sigma_min, sigma_max)
    if steps == 1:
        return _append_zero(torch.tensor([float(sigma_max)], dtype=torch.float64))
    log_s = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64)
    sigmas = log_s.exp()
    sigmas[0], sigmas[-1] = float(sigma_max), float(sigma_min)
    return _append_zero(sigmas)


@SCHEDULES.register("uniform_t")
def uniform_t_sigmas(
    steps: int, process: NoiseProcess, t_min: float | None = None, t_max: float | None = None
) -> Tensor:
    """``steps`` values of t evenly spaced from t_max down to t_min, mapped through ``process.sigma``.

    This is the time discretisation of Song et al. 2021 ("Score-Based Generative Modeling through SDEs",
    Sec. 4 / App. G) for the process's own t; Karras et al. 2022 Table 1 lists it per process.
    ``t_min``/``t_max`` default to the process's range. For ``steps == 1`` the grid is [sigma(t_max), 0].
    """
    _check_steps(steps)
    if process is None:
        raise ConfigError("process: the 'uniform_t' schedule needs a noise process")
    t_lo = process.t_min if t_min is None else float(t_min)
    t_hi = process.t_max if t_max is None else float(t_max)
    if not t_hi > t_lo:
        raise ConfigError(f"t_max: must be > t_min={t_lo!r}, got {t_hi!r}")
    if steps == 1:
        ts = torch.tensor([t_hi], dtype=torch.float64)
    else:
        ts = torch.linspace(t_hi, t_lo, steps, dtype=torch.float64)
    sigmas = process.sigma(ts).to(torch.float64).reshape(-1)
    if not bool((sigmas > 0).all()) or (steps > 1 and not bool((sigmas[1:] < sigmas[:-1]).all())):
        raise ConfigError(f"t_min: sigma(t) must be > 0 and decreasing on [{t_lo!r}, {t_hi!r}]")
    return _append_zero(sigmas)


@SCHEDULES.register("native")
def native_sigmas(
    steps: int,
    process: NoiseProcess,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> Tensor:
    """``steps`` evenly spaced entries of the process's own discrete noise levels, then a trailing 0.

    Indices are ``round(linspace(0, T-1, steps))`` into the descending ``process.native_sigmas()``
    (the "linspace" spacing of Ho et al. 2020 / Song et al. 2021 "DDIM" Sec. 4.2 sub-sequences), so the
    first and last native levels are always kept. If ``sigma_min``/``sigma_max`` are given, only the
    native levels inside [sigma_min, sigma_max] are candidates. For ``steps == 1`` the grid is
    [largest candidate, 0].
    """
    _check_steps(steps)
    if process is None:
        raise ConfigError("process: the 'native' schedule needs a noise process")
    table = process.native_sigmas()
    if table is None:
        raise ConfigError(f"process: {type(process).__name__} has no native discrete timesteps")
    table = table.to(torch.float64).reshape(-1)
    if sigma_min is not None or sigma_max is not None:
        lo = 0.0 if sigma_min is None else float(sigma_min) * (1 - 1e-12)
        hi = math.inf if sigma_max is None else float(sigma_max) * (1 + 1e-12)
        table = table[(table >= lo) & (table <= hi)]
    n = table.numel()
    if steps > n:
        raise ConfigError(f"steps: at most {n} native levels are available, got {steps}")
    if steps == 1:
        idx = torch.zeros(1, dtype=torch.long)
    else:
        idx = torch.linspace(0, n - 1, steps, dtype=torch.float64).round().long()
    return _append_zero(table[idx])


def get_sigmas(
    name: str,
    steps: int,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    process: NoiseProcess | None = None,
    **kw,
) -> Tensor:
    """Build the named schedule from ``SCHEDULES`` ("karras", "log_snr", "uniform_t", "native").

    ``sigma_min``/``sigma_max`` default to the process's range when a process is given. For
    "uniform_t" they pick the t range via ``process.t_of_sigma`` (unless ``t_min``/``t_max`` are in
    ``kw``); for "native" they restrict the candidate levels. Raises ``ValueError`` (``ConfigError``)
    with a one-line message on bad arguments or an unknown name.
    """
    fn = SCHEDULES.get(name)
    _check_steps(steps)
    if process is not None:
        sigma_min = process.sigma_min if sigma_min is None else sigma_min
        sigma_max = process.sigma_max if sigma_max is None else sigma_max
    if sigma_min is None or sigma_max is None:
        missing = "sigma_min" if sigma_min is None else "sigma_max"
        raise ConfigError(f"{missing}: required when no process is given")
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    _check_range(sigma_min, sigma_max)
    if name == "uniform_t":
        if process is None:
            raise ConfigError("process: the 'uniform_t' schedule needs a noise process")
        kw.setdefault("t_min", float(process.t_of_sigma(torch.tensor(sigma_min, dtype=torch.float64))))
        kw.setdefault("t_max", float(process.t_of_sigma(torch.tensor(sigma_max, dtype=torch.float64))))
        return fn(steps, process, **kw)
    if name == "native":
        return fn(steps, process, sigma_min=sigma_min, sigma_max=sigma_max, **kw)
    return fn(steps, sigma_min, sigma_max, **kw)
