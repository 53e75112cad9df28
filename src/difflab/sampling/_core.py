"""Helpers shared by every sampler (samplers import these; they never copy them).

Conventions (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Sec. 2 and eq. 1-3): a noisy sample is x = x0 + sigma * n, a denoiser D(x, sigma) estimates
x0, and the probability-flow ODE is dx/dsigma = (x - D(x, sigma)) / sigma.

A sampler is a stateless function registered in ``SAMPLERS`` with metadata

* ``order`` (int): convergence order of its deterministic version in the step size,
* ``stochastic`` (bool): whether it draws noise with its default options,
* ``nfe`` (steps -> int): denoiser calls for a grid of ``steps`` intervals that ends in 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import Registry

#: Noise source of stochastic samplers: called as ``noise(sigma, sigma_next)`` with the current step's
#: grid levels (Python floats); returns a standard normal tensor shaped and typed like ``x``.
NoiseFn = Callable[[float, float], Tensor]


class Denoiser(Protocol):
    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor: ...


class Sampler(Protocol):
    def __call__(self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, **kw: Any) -> Tensor: ...


SAMPLERS: Registry[Sampler] = Registry("sampler")


@dataclass(frozen=True)
class StepInfo:
    """What a ``callback`` receives once per step.

    ``x`` is the iterate the denoiser was evaluated on at noise level ``sigma`` (for samplers that add
    noise before the step, e.g. EDM churn, this is the noised iterate and ``sigma`` its raised level),
    ``denoised`` is D(x, sigma), and ``sigma_next`` is the level the step moves to.
    """

    i: int
    sigma: float
    sigma_next: float
    x: Tensor
    denoised: Tensor


Callback = Callable[[StepInfo], Any]


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dimensions to ``x`` until it has ``ndim`` dimensions."""
    extra = ndim - x.ndim
    if extra < 0:
        raise ValueError(f"append_dims: tensor has {x.ndim} dims, more than the target {ndim}")
    return x.reshape(*x.shape, *([1] * extra))


def to_d(x: Tensor, sigma: Tensor | float, denoised: Tensor) -> Tensor:
    """PF-ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3 with s = 1).

    ``sigma`` is a Python float, a 0-d tensor, or a per-sample tensor of shape [N].
    """
    if isinstance(sigma, Tensor):
        sigma = append_dims(sigma.to(x.dtype), x.ndim) if sigma.ndim else sigma.to(x.dtype)
    return (x - denoised) / sigma


def default_noise(x: Tensor, generator: torch.Generator | None = None) -> NoiseFn:
    """A ``NoiseFn`` drawing ``torch.randn(x.shape, generator=generator, dtype=x.dtype)`` each call.

    ``generator=None`` uses the global RNG. A seeded generator makes a run bit-identical.
    """
    shape, dtype, device = x.shape, x.dtype, x.device

    def draw(sigma: float, sigma_next: float) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    return draw


def resolve_noise(noise: NoiseFn | None, x: Tensor, generator: torch.Generator | None) -> NoiseFn:
    """``noise`` if given, else ``default_noise(x, generator)``."""
    return noise if noise is not None else default_noise(x, generator)


def call_denoiser(
    denoiser: Denoiser, x: Tensor, sigma: float, cond: Mapping[str, Any] | None = None
) -> Tensor:
    """Evaluate ``denoiser(x, sigma_vec, **cond)`` with ``sigma`` broadcast to shape [N], x's dtype."""
    sigma_vec = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
    out = denoiser(x, sigma_vec, **(cond or {}))
    if out.shape != x.shape:
        raise ValueError(f"denoiser: returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
    return out.to(x.dtype)


def sigma_list(x: Tensor, sigmas: Tensor | Iterable[float]) -> list[float]:
    """Validate a sigma grid and return it as Python floats.

    The grid must be 1-D with at least two entries, non-negative, finite and strictly decreasing
    (trailing 0 optional). ``x`` must have a leading batch dimension.
    """
    if x.ndim < 1:
        raise ConfigError("x: needs a leading batch dimension")
    s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if s.ndim != 1 or s.numel() < 2:
        raise ConfigError(f"sigmas: must be 1-D with at least 2 entries, got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ConfigError("sigmas: must be finite and >= 0")
    if not bool((s[1:] < s[:-1]).all()):
        raise ConfigError("sigmas: must be strictly decreasing")
    return [float(v) for v in s]


def step_range(n: int, progress: bool = False, desc: str = "sampling") -> Iterable[int]:
    """``range(n)``, wrapped in a tqdm bar when ``progress`` is true."""
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, total=n)


def report(callback: Callback | None, i: int, sigma: float, sigma_next: float, x: Tensor, den: Tensor):
    """Call ``callback(StepInfo(...))`` if a callback was given."""
    if callback is not None:
        callback(StepInfo(i=i, sigma=sigma, sigma_next=sigma_next, x=x, denoised=den))
