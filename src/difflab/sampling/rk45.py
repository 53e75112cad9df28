"""Adaptive reference solver of the probability-flow ODE (Dormand-Prince 5(4)).

Karras et al. 2022, eq. 3 with s = 1: dx/dsigma = (x - D(x, sigma)) / sigma. In u = log sigma this is

    dx/du = sigma * dx/dsigma = x - D(x, e^u),

which is smooth in u over the whole range (the e^u factor absorbs the 1/sigma), so an adaptive solver
takes few, well-conditioned steps. This sampler integrates that ODE with ``difflab.ode.solve_ivp``
(Dormand & Prince 1980) from ``sigmas[0]`` to the grid's last *nonzero* level; only those two grid
points are used, the intermediate levels are ignored. If the grid ends in 0, the final step to
sigma = 0 is the denoiser itself, x_0 = D(x, sigma_last), exactly as the last step of Heun/Euler
(Karras et al. 2022, Alg. 1, line 8), costing one extra call.

Its denoiser-call count depends on the tolerances and the data, so it is registered with
``nfe=None`` and ``adaptive=True``; ``difflab.sampling.nfe`` / ``steps_for_nfe`` reject it.

Callback: called once per *accepted* ODE step, with ``i`` counting accepted steps, ``sigma`` /
``sigma_next`` the step's end points, ``x`` the state at ``sigma`` and ``denoised`` = D(x, sigma)
(recovered from the FSAL first stage, no extra call); then once more for the final step to 0 when the
grid ends in 0. The number of callbacks is therefore data dependent, not ``len(sigmas) - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..ode import solve_ivp
from ._core import SAMPLERS, Callback, Denoiser, NoiseFn, call_denoiser, report, sigma_list


@SAMPLERS.register("rk45", order=5, stochastic=False, nfe=None, adaptive=True)
@torch.no_grad()
def sample_rk45(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 100_000,
    cond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Solve the PF-ODE adaptively from ``sigmas[0]`` to the last nonzero level, then denoise if 0.

    ``rtol``/``atol`` are the Dormand-Prince tolerances (per-sample RMS norm, shared step for the
    batch). ``noise``/``generator``/``progress`` are accepted and ignored (deterministic, no bar).
    """
    s = sigma_list(x, sigmas)
    ends_in_zero = s[-1] == 0.0
    sigma_end = s[-2] if ends_in_zero else s[-1]
    count = 0
    u0, u1 = math.log(s[0]), math.log(sigma_end)

    def sig(u: float) -> float:
        # Exact grid levels at the end points (exp(log(s)) may differ from s in the last bit).
        return s[0] if u == u0 else sigma_end if u == u1 else math.exp(u)

    def rhs(u: float, y: Tensor) -> Tensor:
        return y - call_denoiser(denoiser, y, sig(u), cond)

    def on_step(u: float, u_new: float, y: Tensor, dy: Tensor) -> None:
        nonlocal count
        report(callback, count, sig(u), sig(u_new), y, y - dy)
        count += 1

    if sigma_end < s[0]:
        x, _ = solve_ivp(rhs, x, u0, u1, rtol=rtol, atol=atol,
                         max_steps=max_steps, callback=on_step if callback is not None else None)
    if ends_in_zero:
        denoised = call_denoiser(denoiser, x, sigma_end, cond)
        report(callback, count, sigma_end, 0.0, x, denoised)
        x = denoised
    return x
