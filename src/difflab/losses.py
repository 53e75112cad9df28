"""Weighted denoising score matching, written in D space.

For a denoiser D and data x0, with x = x0 + sigma * eps (EDM coordinates), the per-sample loss is

    L(x0) = lambda(sigma) * mean_dims (D(x, sigma) - x0)^2,     sigma ~ p(sigma)

Denoising score matching (Vincent 2011) with the score s = (D(x, sigma) - x) / sigma^2 is this same loss
with lambda rescaled by sigma^4, so every prediction target (eps, x0, v, EDM's F) reduces to it through the
denoiser's c_out. Weightings:

* ``edm``: lambda = (sigma^2 + sd^2) / (sigma sd)^2, which gives F unit effective weight
  (Karras et al. 2022, eq. 8 and Table 1).
* ``min_snr``: lambda = min(SNR, gamma) with SNR = 1 / sigma^2, the x0-space form of
  Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy" (gamma = 5).
* ``likelihood``: lambda = g(sigma)^2 / sigma^4 / p(sigma) with g^2 = d sigma^2 / d sigma = 2 sigma, divided
  by 2: the importance-weighted integrand of the continuous-time ELBO, so the expected loss (summed over
  dimensions) is the diffusion term of the negative ELBO in nats (Song et al. 2021, "Maximum Likelihood
  Training of Score-Based Diffusion Models", Thm. 1 and Sec. 5 on importance sampling; Kingma et al. 2021).
  Use it with the ``log_uniform`` sigma distribution, the importance sampler Song et al. recommend.
* ``uniform``: lambda = 1 (plain x0 regression).

Sigma distributions: ``lognormal`` (EDM: ln sigma ~ N(P_mean, P_std^2)), ``log_uniform`` on
[sigma_min, sigma_max], and ``process``: the process's own t distribution mapped through sigma(t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import ConfigError
from .process import EDM, NoiseProcess

# ---------------------------------------------------------------------------------------------
# Sigma distributions: sample(n, generator) and pdf(sigma) (the density of sigma itself)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogNormal:
    p_mean: float = -1.2
    p_std: float = 1.2

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.exp(self.p_mean + self.p_std * z)

    def pdf(self, sigma: Tensor) -> Tensor:
        z = (sigma.log() - self.p_mean) / self.p_std
        return torch.exp(-0.5 * z**2) / (sigma * self.p_std * math.sqrt(2 * math.pi))


@dataclass(frozen=True)
class LogUniform:
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return torch.exp(lo + (hi - lo) * u)

    def pdf(self, sigma: Tensor) -> Tensor:
        return 1.0 / (sigma * math.log(self.sigma_max / self.sigma_min))


@dataclass(frozen=True)
class ProcessSigma:
    """sigma = process.sigma(t) with t from the process's own training distribution."""

    process: NoiseProcess

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.process.sample_sigma(n, generator)

    def pdf(self, sigma: Tensor) -> Tensor:
        if isinstance(self.process, EDM):
            return LogNormal(self.process.p_mean, self.process.p_std).pdf(sigma)
        # t uniform on [t_min, t_max]: p(sigma) = |dt/dsigma| / (t_max - t_min).
        s = sigma.detach().to(torch.float64).requires_grad_(True)
        with torch.enable_grad():
            (dt,) = torch.autograd.grad(self.process.t_of_sigma(s).sum(), s)
        return (dt.abs() / (self.process.t_max - self.process.t_min)).to(sigma.dtype)


def make_sigma_distribution(name: str, process: NoiseProcess, **params) -> LogNormal | LogUniform | ProcessSigma:
    if name == "lognormal":
        return LogNormal(**params)
    if name == "log_uniform":
        params.setdefault("sigma_min", process.sigma_min)
        params.setdefault("sigma_max", process.sigma_max)
        return LogUniform(**params)
    if name == "process":
        return ProcessSigma(process)
    raise ConfigError(f"loss.sigma_dist: unknown {name!r}; valid: lognormal, log_uniform, process")


# ---------------------------------------------------------------------------------------------
# Weightings lambda(sigma)
# ---------------------------------------------------------------------------------------------

WEIGHTINGS = ("edm", "min_snr", "likelihood", "uniform")


def loss_weight(name: str, sigma: Tensor, sigma_data: float, sigma_pdf=None, gamma: float = 5.0) -> Tensor:
    if name == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    if name == "min_snr":
        return torch.clamp(sigma**-2, max=gamma)
    if name == "likelihood":
        return 1.0 / (sigma**3 * sigma_pdf(sigma))
    if name == "uniform":
        return torch.ones_like(sigma)
    raise ConfigError(f"loss.weighting: unknown {name!r}; valid: {', '.join(WEIGHTINGS)}")


class DenoisingLoss:
    """Per-sample weighted denoising loss (shape (N,)); the caller reduces and may log by sigma."""

    def __init__(self, sigma_dist, weighting: str = "edm", *, sigma_data: float = 0.5, gamma: float = 5.0):
        loss_weight(weighting, torch.ones(1), sigma_data, sigma_dist.pdf, gamma)  # validates the name
        self.sigma_dist = sigma_dist
        self.weighting = weighting
        self.sigma_data = sigma_data
        self.gamma = gamma

    def draw(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Noise levels (float64, (N,)) and standard normal noise (float32, ``shape``) for a batch, drawn on
        the CPU from ``generator`` so a seed gives the same draws on any device and for any split of the
        batch into micro-batches or ranks."""
        sigma = self.sigma_dist.sample(shape[0], generator=generator)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        return sigma, noise

    def __call__(
        self,
        denoiser,
        x0: Tensor,
        class_labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        sigma: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Per-sample loss, shape (N,). ``sigma`` and ``noise`` default to ``draw(x0.shape, generator)``."""
        if sigma is None or noise is None:
            sigma, noise = self.draw(tuple(x0.shape), generator)
        n = x0.shape[0]
        weight = loss_weight(self.weighting, sigma, self.sigma_data, self.sigma_dist.pdf, self.gamma)
        sigma = sigma.to(device=x0.device, dtype=torch.float32)
        weight = weight.to(device=x0.device, dtype=torch.float32)
        noise = noise.to(x0.device, x0.dtype)
        x = x0 + sigma.reshape((n,) + (1,) * (x0.ndim - 1)).to(x0.dtype) * noise
        denoised = denoiser(x, sigma, class_labels)
        err = (denoised.float() - x0.float()) ** 2
        return weight * err.reshape(n, -1).mean(dim=1)
