"""Synthetic distributions with an exact density: isotropic Gaussian mixtures.

Because every distribution is a mixture of isotropic Gaussians, everything a diffusion model tries
to learn is available in closed form at every noise level sigma (x = x0 + sigma * eps):

* the noisy marginal p_sigma(x) = sum_k w_k N(x; mu_k, (s_k^2 + sigma^2) I)   (``log_prob(x, sigma)``),
* its score  grad log p_sigma(x) = sum_k r_k(x) (mu_k - x) / (s_k^2 + sigma^2)  (``score``),
* the ideal denoiser E[x0 | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k))
  (``denoiser``; Tweedie: denoiser = x + sigma^2 score),

with responsibilities r_k(x) proportional to w_k N(x; mu_k, (s_k^2 + sigma^2) I).

Named distributions (``synthetic(name)``), all roughly centred with per-coordinate spread ~1:

* ``gmm2d``: 8 Gaussians (std 0.2) evenly spaced on a circle of radius 2;
* ``gmm<D>d`` (e.g. ``gmm8d``, any D in 1..4096): 8 components with fixed, seed-determined means,
  weights and stds (the same D always gives the same mixture);
* ``rings``: two concentric rings (radius 1 and 2), each a chain of small Gaussians (std 0.08);
* ``moons``: scikit-learn's two half-moons, each a chain of 64 small Gaussians (std 0.08).

``groups`` assigns each component a class (circle component, ring, moon) used as dataset labels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import DataError

_F64 = torch.float64


class GaussianMixture:
    """Mixture of isotropic Gaussians ``sum_k w_k N(mu_k, s_k^2 I)`` with exact density and denoiser.

    Args:
        weights: (K,) non-negative mixture weights (normalised here).
        means: (K, D) component means.
        stds: (K,) per-component standard deviations (> 0), or a single float for all.
        groups: optional (K,) class index of each component (default: component index).
        name: label used in reprs and dataset names.
    """

    def __init__(self, weights, means, stds, groups=None, name: str = "mixture") -> None:
        means = torch.as_tensor(means, dtype=_F64)
        if means.ndim != 2 or means.shape[0] == 0 or means.shape[1] == 0:
            raise ValueError(f"means must have shape (K, D) with K, D >= 1, got {tuple(means.shape)}")
        k = means.shape[0]
        weights = torch.as_tensor(weights, dtype=_F64).reshape(-1)
        stds = torch.as_tensor(stds, dtype=_F64).reshape(-1)
        if stds.numel() == 1:
            stds = stds.expand(k).clone()
        if weights.numel() != k or stds.numel() != k:
            raise ValueError(f"need {k} weights and stds, got {weights.numel()} and {stds.numel()}")
        if not (torch.isfinite(weights).all() and torch.isfinite(means).all() and torch.isfinite(stds).all()):
            raise ValueError("mixture parameters must be finite")
        if (weights < 0).any() or weights.sum() <= 0 or (stds <= 0).any():
            raise ValueError("weights must be >= 0 with a positive sum, and stds > 0")
        self.weights = weights / weights.sum()
        self.means = means
        self.stds = stds
        self.groups = torch.arange(k) if groups is None else torch.as_tensor(groups, dtype=torch.long)
        if self.groups.shape != (k,) or (self.groups < 0).any():
            raise ValueError("groups must be (K,) non-negative class indices")
        self.name = name

    def __repr__(self) -> str:
        return f"GaussianMixture(name={self.name!r}, components={self.num_components}, dim={self.dim})"

    @property
    def dim(self) -> int:
        """Dimension D of the data."""
        return int(self.means.shape[1])

    @property
    def num_components(self) -> int:
        """Number of components K."""
        return int(self.means.shape[0])

    @property
    def num_groups(self) -> int:
        """Number of distinct classes in ``groups``."""
        return int(self.groups.max()) + 1

    @property
    def mean(self) -> Tensor:
        """Mixture mean (D,), float64."""
        return self.weights @ self.means

    @property
    def cov(self) -> Tensor:
        """Mixture covariance (D, D), float64."""
        centred = self.means - self.mean
        second = (self.weights[:, None] * centred).T @ centred
        return second + torch.eye(self.dim, dtype=_F64) * (self.weights @ self.stds**2)

    # -- sampling ------------------------------------------------------------------------------

    def sample_with_components(
        self, n: int, generator: torch.Generator | int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw n samples; returns (x float32 (n, D), component index long (n,))."""
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, dtype=_F64, generator=generator)
        x = self.means[comp] + self.stds[comp, None] * eps
        return x.to(torch.float32), comp

    def sample(self, n: int, generator: torch.Generator | int | None = None) -> Tensor:
        """Draw n samples (float32, (n, D)); ``generator`` may be a torch.Generator or an int seed."""
        return self.sample_with_components(n, generator)[0]

    # -- exact quantities ----------------------------------------------------------------------

    def _component_logits(self, x: Tensor, sigma: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log w_k N(x; mu_k, v_k I) (N, K), variances v (N, K) and x as float64 on the params' device."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), got {tuple(x.shape)}")
        x64 = x.to(_F64)
        means, stds, weights = (t.to(x.device) for t in (self.means, self.stds, self.weights))
        sig = torch.as_tensor(sigma, dtype=_F64, device=x.device).reshape(-1)
        if sig.numel() not in (1, x.shape[0]):
            raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(sig.shape)}")
        if (sig < 0).any():
            raise ValueError("sigma must be >= 0")
        var = stds[None, :] ** 2 + sig[:, None] ** 2  # (N or 1, K)
        sq = (x64**2).sum(1, keepdim=True) - 2.0 * x64 @ means.T + (means**2).sum(1)[None, :]
        sq = sq.clamp_min(0.0)
        logits = weights.log()[None] - 0.5 * self.dim * torch.log(2 * math.pi * var) - 0.5 * sq / var
        return logits, var.expand_as(logits), x64

    def log_prob(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """Exact log density of x (N, D) under the mixture convolved with N(0, sigma^2 I); shape (N,)."""
        logits, _, _ = self._component_logits(x, sigma)
        return torch.logsumexp(logits, dim=1).to(_out_dtype(x))

    def responsibilities(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """Posterior component probabilities p(k | x) at noise level sigma; shape (N, K), float64."""
        logits, _, _ = self._component_logits(x, sigma)
        return torch.softmax(logits, dim=1)

    def denoiser(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Exact posterior mean E[x0 | x0 + sigma * eps = x]; sigma scalar or (N,); returns (N, D)."""
        logits, var, x64 = self._component_logits(x, sigma)
        resp = torch.softmax(logits, dim=1)
        shrink = self.stds.to(x.device)[None, :] ** 2 / var  # Wiener gain s_k^2 / (s_k^2 + sigma^2)
        out = (resp * shrink).sum(1, keepdim=True) * x64 + (resp * (1 - shrink)) @ self.means.to(x.device)
        return out.to(_out_dtype(x))

    def score(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """Exact score grad_x log p_sigma(x) (N, D); at sigma = 0 the score of the clean density."""
        logits, var, x64 = self._component_logits(x, sigma)
        coef = torch.softmax(logits, dim=1) / var
        out = coef @ self.means.to(x.device) - coef.sum(1, keepdim=True) * x64
        return out.to(_out_dtype(x))


def _out_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype.is_floating_point else torch.float32


# ---------------------------------------------------------------------------------------------
# Named distributions
# ---------------------------------------------------------------------------------------------


def make_gmm2d() -> GaussianMixture:
    """8 equal Gaussians (std 0.2) on a circle of radius 2."""
    angles = torch.arange(8, dtype=_F64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(torch.ones(8), means, 0.2, name="gmm2d")


def make_gmm_nd(dim: int) -> GaussianMixture:
    """8 components in ``dim`` dimensions with means, weights and stds fixed by a seed derived from dim."""
    if not 1 <= dim <= 4096:
        raise ValueError(f"gmm dimension must be in 1..4096, got {dim}")
    g = torch.Generator().manual_seed(1000 + dim)
    means = 1.5 * torch.randn(8, dim, generator=g, dtype=_F64)
    weights = 0.5 + torch.rand(8, generator=g, dtype=_F64)
    stds = 0.25 + 0.25 * torch.rand(8, generator=g, dtype=_F64)
    return GaussianMixture(weights, means, stds, name=f"gmm{dim}d")


def make_rings() -> GaussianMixture:
    """Two concentric rings (radius 1 and 2) of small Gaussians, equal density per unit arc length."""
    means, groups = [], []
    for ring, (radius, count) in enumerate(((1.0, 48), (2.0, 96))):
        angles = torch.arange(count, dtype=_F64) * (2 * math.pi / count)
        means.append(radius * torch.stack([angles.cos(), angles.sin()], dim=1))
        groups.append(torch.full((count,), ring))
    means_t = torch.cat(means)
    return GaussianMixture(torch.ones(len(means_t)), means_t, 0.08, torch.cat(groups), name="rings")


def make_moons() -> GaussianMixture:
    """scikit-learn's two moons (centred), each a chain of 64 small Gaussians along the arc."""
    t = torch.linspace(0, math.pi, 64, dtype=_F64)
    upper = torch.stack([t.cos(), t.sin()], dim=1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1)
    means = torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=_F64)
    groups = torch.cat([torch.zeros(64, dtype=torch.long), torch.ones(64, dtype=torch.long)])
    return GaussianMixture(torch.ones(128), means, 0.08, groups, name="moons")


#: Named synthetic distributions; ``synthetic()`` also accepts ``gmm<D>d`` for any D.
SYNTHETIC: dict[str, Callable[[], GaussianMixture]] = {
    "gmm2d": make_gmm2d,
    "gmm8d": lambda: make_gmm_nd(8),
    "rings": make_rings,
    "moons": make_moons,
}

_GMM_ND = re.compile(r"gmm(\d+)d")


def is_synthetic(name: str) -> bool:
    """True if ``name`` is a synthetic distribution name (a registry key or ``gmm<D>d``)."""
    return name in SYNTHETIC or _GMM_ND.fullmatch(name) is not None


def synthetic(name: str) -> GaussianMixture:
    """The named synthetic distribution (see the module docstring); unknown names raise DataError."""
    if name in SYNTHETIC:
        return SYNTHETIC[name]()
    match = _GMM_ND.fullmatch(name)
    if match is not None:
        dim = int(match.group(1))
        if 1 <= dim <= 4096:
            return make_gmm_nd(dim)
        raise DataError(f"{name}: gmm dimension must be in 1..4096")
    valid = ", ".join([*SYNTHETIC, "gmm<D>d"])
    raise DataError(f"{name}: unknown synthetic distribution; valid: {valid}")
