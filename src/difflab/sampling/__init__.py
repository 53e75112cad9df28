"""Samplers and sigma schedules.

Every sampler works in EDM coordinates (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models"): ``x`` starts at ``sigmas[0]`` (noise * sigmas[0]) and ``sigmas``
is a descending grid ending in 0, e.g. from ``get_sigmas``. Each module in this package that defines a
sampler registers it in ``SAMPLERS`` on import; all modules are imported here with ``pkgutil``, so a new
sampler file needs no other edit.

    sigmas = get_sigmas("karras", 32, sigma_min=0.002, sigma_max=80.0)
    x0 = sample(denoiser, torch.randn(16, 2) * sigmas[0], sigmas, sampler="heun")
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from torch import Tensor

from ..errors import ConfigError
from ._core import (
    SAMPLERS,
    Denoiser,
    NoiseFn,
    Sampler,
    StepInfo,
    append_dims,
    call_denoiser,
    default_noise,
    to_d,
)
from .schedules import (
    SCHEDULES,
    get_sigmas,
    karras_sigmas,
    log_snr_sigmas,
    native_sigmas,
    uniform_t_sigmas,
)

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")


def get_sampler(name: str) -> Sampler:
    """The sampler function registered as ``name`` (``ValueError`` listing valid names if unknown)."""
    return SAMPLERS.get(name)


def sample(denoiser: Denoiser, x: Tensor, sigmas: Tensor, sampler: str = "heun", **kw: Any) -> Tensor:
    """Run the named sampler: ``get_sampler(sampler)(denoiser, x, sigmas, **kw)``."""
    return get_sampler(sampler)(denoiser, x, sigmas, **kw)


def _nfe_count(sampler_name: str) -> Any:
    """The sampler's ``nfe`` metadata; ``ConfigError`` (a ``ValueError``) for adaptive samplers."""
    count = SAMPLERS.meta(sampler_name).get("nfe")
    if count is None:
        raise ConfigError(
            f"{sampler_name}: adaptive sampler, its denoiser-call count depends on the tolerances and the "
            "data, not on the number of steps"
        )
    return count


def nfe(sampler_name: str, steps: int) -> int:
    """Denoiser calls the sampler makes for ``steps`` intervals on a grid ending in 0.

    Raises ``ValueError`` for an adaptive sampler (metadata ``nfe=None``, e.g. ``rk45``).
    """
    return int(_nfe_count(sampler_name)(steps))


def steps_for_nfe(sampler_name: str, nfe: int) -> int:
    """The largest ``steps`` whose denoiser-call count is <= the budget ``nfe`` (counts increase).

    Raises ``ValueError`` if even one step exceeds the budget, or for an adaptive sampler.
    """
    count = _nfe_count(sampler_name)
    if count(1) > nfe:
        raise ConfigError(f"nfe: budget {nfe} is below the {count(1)} calls of one {sampler_name} step")
    lo, hi = 1, 2  # invariant: count(lo) <= budget; grow hi until count(hi) > budget
    while count(hi) <= nfe:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(mid) <= nfe:
            lo = mid
        else:
            hi = mid
    return lo


__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "Denoiser",
    "NoiseFn",
    "Sampler",
    "StepInfo",
    "append_dims",
    "call_denoiser",
    "default_noise",
    "get_sampler",
    "get_sigmas",
    "karras_sigmas",
    "log_snr_sigmas",
    "native_sigmas",
    "nfe",
    "sample",
    "steps_for_nfe",
    "to_d",
    "uniform_t_sigmas",
]
