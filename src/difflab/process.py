"""Noise processes as one family: x_t = s(t) * (x0 + sigma(t) * eps).

This is the parametrisation of Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models" (EDM), eq. 4 and Table 1. Every process below only says what s(t) and sigma(t) are;
everything else in difflab works in the scaled coordinates x_hat = x_t / s(t), where a noisy sample is
simply x0 + sigma * eps. A model trained under any process can therefore be sampled by any sampler
written in sigma, and the process only matters for (a) which sigmas training visits and (b) the
"uniform in t" and "native timestep" sigma grids.

Conversions between the usual coordinates (all exact, process independent):

    alpha_bar = s^2 = 1 / (1 + sigma^2)      (variance preserving view, Ho et al. 2020)
    log_snr   = log(1 / sigma^2)              (Kingma et al. 2021, "Variational Diffusion Models")

Processes:

* ``EDM``: s = 1, sigma(t) = t; training sigmas are log-normal (EDM eq. 5 / Table 1).
* ``VE``: s = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t, t in [0, 1]
  (Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 31).
* ``VP``: continuous VP SDE with linear beta(t) (Song et al. 2021, eq. 32-33):
  sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).
* ``DDPM``: the discrete VP chain of Ho et al. 2020 with ``linear`` betas, or the ``cosine`` schedule of
  Nichol & Dhariwal 2021 ("Improved DDPM", eq. 17). Fractional t interpolates log sigma between integer
  timesteps, as k-diffusion's ``DiscreteSchedule`` does, so the t <-> sigma map is a bijection.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .errors import ConfigError
from .registry import Registry

PROCESSES: Registry[type[NoiseProcess]] = Registry("noise process")


# ---------------------------------------------------------------------------------------------
# Coordinate conversions (process independent)
# ---------------------------------------------------------------------------------------------


def alpha_bar_from_sigma(sigma: Tensor) -> Tensor:
    """alpha_bar = 1 / (1 + sigma^2)."""
    return 1.0 / (1.0 + sigma**2)


def sigma_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar)."""
    return ((1.0 - alpha_bar) / alpha_bar).sqrt()


def log_snr_from_sigma(sigma: Tensor) -> Tensor:
    """lambda = log SNR = -2 log sigma."""
    return -2.0 * torch.log(sigma)


def sigma_from_log_snr(log_snr: Tensor) -> Tensor:
    """sigma = exp(-lambda / 2)."""
    return torch.exp(-0.5 * log_snr)


def _as_tensor(t: Tensor | float) -> Tensor:
    return t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# The family
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseProcess:
    """Base class. Subclasses define ``sigma(t)``, ``scale(t)``, ``t_of_sigma`` and the t range."""

    name: ClassVar[str] = ""

    # --- to override ------------------------------------------------------------------------
    @property
    def t_min(self) -> float:
        raise NotImplementedError

    @property
    def t_max(self) -> float:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t): the noise level in scaled coordinates (EDM's sigma)."""
        raise NotImplementedError

    def scale(self, t: Tensor) -> Tensor:
        """s(t): x_t = s(t) (x0 + sigma(t) eps). 1 for VE/EDM, 1/sqrt(1+sigma^2) for VP."""
        raise NotImplementedError

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of ``sigma(t)``."""
        raise NotImplementedError

    def sample_t(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """The process's own training distribution of t (uniform on [t_min, t_max] by default)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return self.t_min + (self.t_max - self.t_min) * u

    def native_sigmas(self) -> Tensor | None:
        """The process's own discrete noise levels, descending (None for continuous processes)."""
        return None

    # --- derived ----------------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return float(self.sigma(_as_tensor(self.t_min)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(_as_tensor(self.t_max)))

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sigma(self.sample_t(n, generator))

    def alpha_bar(self, t: Tensor) -> Tensor:
        return alpha_bar_from_sigma(self.sigma(t))

    def log_snr(self, t: Tensor) -> Tensor:
        return log_snr_from_sigma(self.sigma(t))

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


def process_from_dict(d: dict) -> NoiseProcess:
    """Build a process from ``{"name": ..., **params}`` (the form written by ``to_dict``)."""
    d = dict(d)
    name = d.pop("name", None)
    if name is None:
        raise ConfigError("process: missing key 'name'")
    cls = PROCESSES.get(name)
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"process.{name}: {e}") from None


@PROCESSES.register("edm")
@dataclass(frozen=True)
class EDM(NoiseProcess):
    """sigma(t) = t, s(t) = 1. Training sigmas: ln sigma ~ N(p_mean, p_std^2) (EDM Table 1)."""

    name: ClassVar[str] = "edm"
    sigma_lo: float = 0.002
    sigma_hi: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2

    @property
    def t_min(self) -> float:
        return self.sigma_lo

    @property
    def t_max(self) -> float:
        return self.sigma_hi

    def sigma(self, t):
        return _as_tensor(t)

    def scale(self, t):
        return torch.ones_like(_as_tensor(t))

    def t_of_sigma(self, sigma):
        return _as_tensor(sigma)

    def sample_t(self, n, generator=None):
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.exp(self.p_mean + self.p_std * z)


@PROCESSES.register("ve")
@dataclass(frozen=True)
class VE(NoiseProcess):
    """Variance exploding SDE (Song et al. 2021, eq. 31): sigma(t) = sigma_lo (sigma_hi/sigma_lo)^t."""

    name: ClassVar[str] = "ve"
    sigma_lo: float = 0.02
    sigma_hi: float = 100.0

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return 1.0

    def sigma(self, t):
        t = _as_tensor(t)
        return self.sigma_lo * (self.sigma_hi / self.sigma_lo) ** t

    def scale(self, t):
        return torch.ones_like(_as_tensor(t))

    def t_of_sigma(self, sigma):
        return torch.log(_as_tensor(sigma) / self.sigma_lo) / math.log(self.sigma_hi / self.sigma_lo)


@PROCESSES.register("vp")
@dataclass(frozen=True)
class VP(NoiseProcess):
    """Continuous variance preserving SDE with beta(t) = beta_min + t (beta_max - beta_min).

    Song et al. 2021, eq. 32-33; in EDM form (Table 1): sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1).
    """

    name: ClassVar[str] = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    eps_t: float = 1e-3

    @property
    def t_min(self) -> float:
        return self.eps_t

    @property
    def t_max(self) -> float:
        return 1.0

    def sigma(self, t):
        t = _as_tensor(t)
        beta_d = self.beta_max - self.beta_min
        return torch.expm1(0.5 * beta_d * t**2 + self.beta_min * t).sqrt()

    def scale(self, t):
        return 1.0 / (1.0 + self.sigma(t) ** 2).sqrt()

    def t_of_sigma(self, sigma):
        sigma = _as_tensor(sigma)
        beta_d = self.beta_max - self.beta_min
        return ((self.beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)).sqrt() - self.beta_min) / beta_d


def _ddpm_alpha_bars(schedule: str, timesteps: int) -> Tensor:
    if schedule == "linear":
        # Ho et al. 2020: beta from 1e-4 to 0.02 over 1000 steps, rescaled for other step counts.
        scale = 1000.0 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    elif schedule == "cosine":
        # Nichol & Dhariwal 2021, eq. 17, with s = 0.008 and betas clipped at 0.999.
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise ConfigError(f"process.ddpm.schedule: unknown {schedule!r}; valid: cosine, linear")
    return torch.cumprod(1.0 - betas, dim=0)


@PROCESSES.register("ddpm")
@dataclass(frozen=True)
class DDPM(NoiseProcess):
    """Discrete VP chain (Ho et al. 2020) with ``linear`` or ``cosine`` betas over ``timesteps`` steps.

    t is the (fractional) timestep index in [0, timesteps - 1]; log sigma is linear between integers.
    """

    name: ClassVar[str] = "ddpm"
    schedule: str = "linear"
    timesteps: int = 1000
    _log_sigmas: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.timesteps < 2:
            raise ConfigError(f"process.ddpm.timesteps: must be >= 2, got {self.timesteps}")
        ab = _ddpm_alpha_bars(self.schedule, self.timesteps)
        object.__setattr__(self, "_log_sigmas", sigma_from_alpha_bar(ab).log())

    def to_dict(self) -> dict:
        return {"name": self.name, "schedule": self.schedule, "timesteps": self.timesteps}

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return float(self.timesteps - 1)

    def sigma(self, t):
        t = _as_tensor(t).to(torch.float64).clamp(self.t_min, self.t_max)
        lo = t.floor().long().clamp(max=self.timesteps - 2)
        w = t - lo
        log_s = (1 - w) * self._log_sigmas[lo] + w * self._log_sigmas[lo + 1]
        return log_s.exp()

    def scale(self, t):
        return 1.0 / (1.0 + self.sigma(t) ** 2).sqrt()

    def t_of_sigma(self, sigma):
        log_s = _as_tensor(sigma).to(torch.float64).log()
        ls = self._log_sigmas
        log_s = log_s.clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, log_s.reshape(-1).contiguous()).clamp(1, self.timesteps - 1)
        hi = hi.reshape(log_s.shape)
        lo = hi - 1
        w = (log_s - ls[lo]) / (ls[hi] - ls[lo])
        return lo.to(torch.float64) + w

    def sample_t(self, n, generator=None):
        return torch.randint(0, self.timesteps, (n,), generator=generator).to(torch.float64)

    def native_sigmas(self) -> Tensor:
        return self._log_sigmas.exp().flip(0)
