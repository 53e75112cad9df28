"""A batched adaptive Dormand-Prince 5(4) ODE integrator in torch.

Dormand & Prince 1980, "A family of embedded Runge-Kutta formulae" (J. Comp. Appl. Math. 6(1)): a
7-stage explicit Runge-Kutta pair whose 5th-order solution is propagated (local extrapolation) and
whose embedded 4th-order solution gives the error estimate. The last stage is evaluated at the new
point, so it is reused as the first stage of the next step ("first same as last", FSAL): an accepted
step costs 6 new evaluations.

Step-size control follows Hairer, Norsett & Wanner, "Solving ODEs I" (2nd ed.), Sec. II.4: the error
of a step is measured by the norm

    err_n = sqrt(mean_j (e_nj / (atol + rtol * max(|y_nj|, |ynew_nj|)))^2)

taken *per sample* n over that sample's dimensions j; the step is accepted when max_n err_n <= 1 (one
step size shared by the whole batch), and the next step is h * clip(safety * err^(-1/5), min_factor,
max_factor) (growth is capped at 1 right after a rejection). The initial step follows the same book's
"starting step size" algorithm (Sec. II.4, eq. 4.14), costing one extra evaluation.

Every stage time t + c_i h lies in [min(t0, t1), max(t0, t1)]: the last step is clipped to land exactly
on t1, and the single trial evaluation of the starting-step algorithm uses a step no longer than the
interval. This matters for the probability-flow ODE, which is singular at sigma = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ODEStats", "solve_ivp"]

# Butcher tableau of DOPRI5 (Dormand & Prince 1980, Table 2; also Hairer et al., Table II.5.2).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# 5th-order weights (= the last row of A, which is what makes FSAL work) and 4th-order weights.
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))

#: Callback on each accepted step: ``(t, t_new, y, f(t, y))`` with ``y`` the state at ``t``.
StepCallback = Callable[[float, float, Tensor, Tensor], object]


@dataclass
class ODEStats:
    """Work counters of one ``solve_ivp`` call."""

    nfev: int = 0  #: right-hand-side evaluations
    steps: int = 0  #: accepted steps
    rejected: int = 0  #: rejected step attempts


def _norm(e: Tensor, y: Tensor, y_new: Tensor, rtol: float, atol: float) -> Tensor:
    """Per-sample RMS of e / (atol + rtol * max(|y|, |y_new|)) over all dims but the first; shape (N,)."""
    scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
    r = (e / scale).reshape(e.shape[0], -1)
    return r.pow(2).mean(dim=1).sqrt()


def _initial_step(
    f: Callable[[float, Tensor], Tensor], t0: float, y0: Tensor, f0: Tensor, direction: float,
    span: float, rtol: float, atol: float,
) -> float:
    """Hairer et al. (Sec. II.4) starting step for order 5, never longer than ``span``; one evaluation."""
    scale = atol + rtol * y0.abs()
    d0 = float((y0 / scale).reshape(y0.shape[0], -1).pow(2).mean(1).sqrt().max())
    d1 = float((f0 / scale).reshape(y0.shape[0], -1).pow(2).mean(1).sqrt().max())
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = f(t0 + direction * h0, y0 + (direction * h0) * f0)
    d2 = float(((f1 - f0) / scale).reshape(y0.shape[0], -1).pow(2).mean(1).sqrt().max()) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1, span)


def solve_ivp(
    f: Callable[[float, Tensor], Tensor],
    y0: Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 100_000,
    first_step: float | None = None,
    safety: float = 0.9,
    min_factor: float = 0.2,
    max_factor: float = 10.0,
    callback: StepCallback | None = None,
) -> tuple[Tensor, ODEStats]:
    """Integrate dy/dt = f(t, y) from ``t0`` to ``t1`` (either direction) with adaptive DOPRI5.

    Args:
        f: right-hand side ``f(t: float, y: Tensor) -> Tensor`` shaped like ``y``.
        y0: initial state, any shape with the batch first (dim 0); the step size is shared by the batch
            and a step is accepted only when the worst sample's error norm is <= 1.
        t0, t1: start and end times (Python floats). ``t0 == t1`` returns ``y0`` with no evaluations.
        rtol, atol: relative and absolute tolerances of the per-sample RMS error norm.
        max_steps: cap on step attempts (accepted + rejected); exceeding it raises ``RuntimeError``.
        first_step: initial |h|; default: Hairer's starting-step heuristic (one extra evaluation).
        safety, min_factor, max_factor: step-size controller constants.
        callback: called after each accepted step as ``callback(t, t_new, y, f(t, y))``.

    Returns:
        ``(y1, stats)`` with ``y1`` the state at exactly ``t1`` and ``stats`` an ``ODEStats``.

    Every stage is evaluated at a time inside [min(t0, t1), max(t0, t1)].
    """
    t0, t1 = float(t0), float(t1)
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError("solve_ivp: t0 and t1 must be finite")
    if rtol <= 0 or atol < 0:
        raise ValueError("solve_ivp: need rtol > 0 and atol >= 0")
    stats = ODEStats()
    if t0 == t1:
        return y0, stats
    lo, hi = min(t0, t1), max(t0, t1)
    direction = 1.0 if t1 > t0 else -1.0
    span = hi - lo

    def rhs(t: float, y: Tensor) -> Tensor:
        stats.nfev += 1
        return f(min(max(t, lo), hi), y)  # guard against round-off just past an end point

    t, y = t0, y0
    k1 = rhs(t, y)
    if first_step is None:
        h = _initial_step(rhs, t0, y0, k1, direction, span, rtol, atol)
    else:
        if first_step <= 0:
            raise ValueError("solve_ivp: first_step must be > 0")
        h = min(float(first_step), span)
    just_rejected = False
    while (t1 - t) * direction > 0:
        if stats.steps + stats.rejected >= max_steps:
            raise RuntimeError(f"solve_ivp: exceeded max_steps={max_steps} before reaching t1={t1}")
        remaining = abs(t1 - t)
        last = h >= remaining
        if last:
            h = remaining
        dt = direction * h
        t_new = t1 if last else t + dt
        ks = [k1]
        for i in range(1, 7):
            yi = y + dt * sum(a * k for a, k in zip(_A[i], ks) if a != 0.0)
            ti = t_new if i == 6 else t + _C[i] * dt
            ks.append(rhs(ti, yi))
        y_new = yi  # stage 7 is evaluated at the 5th-order solution (FSAL)
        err = dt * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
        en = float(_norm(err, y, y_new, rtol, atol).max())
        if not math.isfinite(en):
            en = math.inf
        if en <= 1.0:
            if callback is not None:
                callback(t, t_new, y, k1)
            t, y, k1 = t_new, y_new, ks[6]
            stats.steps += 1
            grow = max_factor if not just_rejected else 1.0
            factor = grow if en == 0.0 else min(grow, safety * en ** (-1 / 5))
            h = h * max(min_factor, factor)
            just_rejected = False
        else:
            stats.rejected += 1
            factor = min_factor if en == math.inf else max(min_factor, safety * en ** (-1 / 5))
            h = h * factor
            just_rejected = True
            if h < 1e-14 * max(1.0, abs(t)):
                raise RuntimeError(f"solve_ivp: step size underflow at t={t}")
    return y, stats
