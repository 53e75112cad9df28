"""Affine maps between the data's own units and the model space.

``forward(x) = (x - shift) / scale`` and ``inverse(z) = z * scale + shift``, with

* images: one scalar pair that maps the pixel range [lo, hi] onto [-1, 1]
  (shift = (lo + hi) / 2, scale = (hi - lo) / 2). lo/hi come from the source's dtype where it has
  one ([0, 255] for 8-bit, [0, 65535] for 16-bit, [0, 16] for ``digits``), else from the observed
  min/max (float arrays);
* tabular: per-column standardisation (mean, population std). A (near-)constant column, with
  std <= 1e-8 * max(1, |mean|), gets scale 1 instead of a tiny number, so forward() maps its training
  value to 0 without blowing up other values by 1e8;
* synthetic mixtures: the identity (they are already centred with spread ~1), so the exact density,
  score and denoiser of ``GaussianMixture`` hold in model space unchanged.

``to_dict()`` gives plain JSON data (floats and lists) for checkpoints; ``from_dict`` validates it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

if TYPE_CHECKING:
    from .dataset import Dataset

ArrayT = TypeVar("ArrayT", Tensor, np.ndarray)
_CONSTANT_REL = 1e-8


@dataclass
class Normalizer:
    """Affine data <-> model-space map; see the module docstring."""

    kind: str
    shift: list[float]
    scale: list[float]
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("image", "tabular"):
            raise DataError(f"normalizer: kind must be 'image' or 'tabular', got {self.kind!r}")
        self.shift = [float(v) for v in self.shift]
        self.scale = [float(v) for v in self.scale]
        if not self.shift or len(self.shift) != len(self.scale):
            raise DataError("normalizer: shift and scale must be non-empty and of equal length")
        if not all(math.isfinite(v) for v in self.shift + self.scale) or min(self.scale) <= 0:
            raise DataError("normalizer: shift must be finite and scale finite and > 0")
        if self.kind == "image" and len(self.shift) != 1:
            raise DataError("normalizer: image normalizers have one scalar shift and scale")
        if self.value_range is not None:
            lo, hi = (float(v) for v in self.value_range)
            self.value_range = (lo, hi)

    @classmethod
    def for_range(cls, lo: float, hi: float) -> Normalizer:
        """Image normalizer mapping [lo, hi] to [-1, 1]."""
        if not hi > lo:
            hi = lo + 1.0
        return cls("image", [(lo + hi) / 2], [(hi - lo) / 2], (float(lo), float(hi)))

    @classmethod
    def identity(cls, dim: int) -> Normalizer:
        """Tabular identity map for ``dim`` columns."""
        return cls("tabular", [0.0] * dim, [1.0] * dim)

    def _params(self, x: ArrayT) -> tuple[Any, Any, Any]:
        if isinstance(x, np.ndarray):
            x = x.astype(np.float64) if x.dtype.kind != "f" else x
            shift = np.asarray(self.shift, dtype=x.dtype)
            scale = np.asarray(self.scale, dtype=x.dtype)
        else:
            x = x if x.dtype.is_floating_point else x.to(torch.float32)
            shift = torch.tensor(self.shift, dtype=x.dtype, device=x.device)
            scale = torch.tensor(self.scale, dtype=x.dtype, device=x.device)
        if self.kind == "image":
            return x, shift[0], scale[0]
        if x.shape[-1] != len(self.shift):
            raise ValueError(f"normalizer expects {len(self.shift)} columns, got shape {tuple(x.shape)}")
        return x, shift, scale

    def forward(self, x: ArrayT) -> ArrayT:
        """Data units -> model space."""
        x, shift, scale = self._params(x)
        return (x - shift) / scale

    def inverse(self, z: ArrayT) -> ArrayT:
        """Model space -> data units."""
        z, shift, scale = self._params(z)
        return z * scale + shift

    def log_det_jacobian(self, sample_shape: tuple[int, ...]) -> float:
        """log |det d forward(x) / dx| for one sample of shape ``sample_shape`` (C,H,W) or (D,).

        Convert a model-space log density to data units with
        ``log p_data(x) = log p_model(forward(x)) + log_det_jacobian(shape)``.
        """
        if self.kind == "image":
            return -math.prod(sample_shape) * math.log(self.scale[0])
        return -sum(math.log(s) for s in self.scale)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form."""
        return {
            "kind": self.kind,
            "shift": list(self.shift),
            "scale": list(self.scale),
            "value_range": None if self.value_range is None else list(self.value_range),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Inverse of ``to_dict``; malformed input raises DataError."""
        if not isinstance(d, dict):
            raise DataError(f"normalizer: expected a mapping, got {type(d).__name__}")
        missing = [k for k in ("kind", "shift", "scale") if k not in d]
        if missing:
            raise DataError(f"normalizer: missing key(s) {', '.join(missing)}")
        try:
            shift = [float(v) for v in d["shift"]]
            scale = [float(v) for v in d["scale"]]
            vr = d.get("value_range")
            value_range = None if vr is None else (float(vr[0]), float(vr[1]))
        except (TypeError, ValueError, IndexError, KeyError) as err:
            raise DataError(f"normalizer: malformed numbers ({err})") from None
        return cls(str(d["kind"]), shift, scale, value_range)


def fit_normalizer(dataset: Dataset) -> Normalizer:
    """The normalizer for a dataset: pixel range -> [-1, 1] (images), identity (synthetic mixtures),
    per-column standardisation (other tables)."""
    if dataset.kind == "image":
        lo, hi = dataset.value_range if dataset.value_range is not None else _observed(dataset.x)
        return Normalizer.for_range(lo, hi)
    if getattr(dataset, "mixture", None) is not None:
        return Normalizer.identity(int(dataset.x.shape[1]))
    x = dataset.x.detach().to(torch.float64)
    mean = x.mean(0)
    std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.zeros_like(mean)
    constant = std <= _CONSTANT_REL * mean.abs().clamp_min(1.0)
    std = torch.where(constant, torch.ones_like(std), std)
    return Normalizer("tabular", mean.tolist(), std.tolist())


def _observed(x: Tensor) -> tuple[float, float]:
    return float(x.min()), float(x.max())
