"""The denoiser wrapper: backbone F plus preconditioning becomes D(x, sigma, cond) -> estimate of x0.

EDM coordinates throughout (Karras et al. 2022, "Elucidating the Design Space", eq. 7):

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

The prediction target is only a choice of (c_skip, c_out, c_in). This module is the one table that knows
them (no per-sampler or per-loss if/elif on prediction types):

============  =====================  ==============================  ==========================
prediction    c_skip                 c_out                           c_in
============  =====================  ==============================  ==========================
``edm``       sd^2/(sigma^2+sd^2)    sigma sd / sqrt(sigma^2+sd^2)   1 / sqrt(sigma^2+sd^2)
``eps``       1                      -sigma                          1 / sqrt(sigma^2+1)
``x0``        0                      1                               1 / sqrt(sigma^2+sd^2)
``v``         sd^2/(sigma^2+sd^2)    -sigma sd / sqrt(sigma^2+sd^2)  1 / sqrt(sigma^2+sd^2)
============  =====================  ==============================  ==========================

``eps`` is the noise prediction of Ho et al. 2020 with the VP input scaling (EDM Table 1, "VP"); ``v`` is
the velocity v = alpha eps - sigma x0 of Salimans & Ho 2022 ("Progressive Distillation"), generalised to
data std ``sd`` as in k-diffusion; ``edm`` is EDM's F-prediction. c_noise = ln(sigma) / 4 for every
target, so the backbone's noise conditioning does not depend on the process the model was trained under.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import ConfigError

PREDICTIONS = ("edm", "eps", "x0", "v")


@dataclass(frozen=True)
class Scalings:
    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so that ``x`` (shape (N,)) broadcasts against an ndim tensor."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def scalings(prediction: str, sigma: Tensor, sigma_data: float) -> Scalings:
    """Preconditioning coefficients for ``prediction`` at noise levels ``sigma`` (any shape)."""
    sd = sigma_data
    norm = (sigma**2 + sd**2).sqrt()
    c_noise = sigma.log() / 4
    if prediction == "edm":
        return Scalings(sd**2 / norm**2, sigma * sd / norm, 1 / norm, c_noise)
    if prediction == "v":
        return Scalings(sd**2 / norm**2, -sigma * sd / norm, 1 / norm, c_noise)
    if prediction == "x0":
        return Scalings(torch.zeros_like(sigma), torch.ones_like(sigma), 1 / norm, c_noise)
    if prediction == "eps":
        return Scalings(torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise)
    raise ConfigError(f"denoiser.prediction: unknown {prediction!r}; valid: {', '.join(PREDICTIONS)}")


class Denoiser(nn.Module):
    """D(x, sigma, class_labels) = c_skip x + c_out F(c_in x, c_noise, class_labels).

    Args:
        backbone: any module with ``forward(x, noise_cond, class_labels=None)`` returning x's shape.
        prediction: what F predicts: "edm" (default), "eps", "x0" or "v".
        sigma_data: standard deviation of the (normalised) data, used by the scalings.

    ``forward(x, sigma, class_labels=None)``: ``x`` of shape (N, ...) is x0 + sigma * noise in the model's
    normalised space; ``sigma`` is a float or a tensor of shape (N,) (or broadcastable). The coefficients are
    computed in float32 or better, while the backbone may run under autocast; the output has x's dtype.
    """

    def __init__(self, backbone: nn.Module, *, prediction: str = "edm", sigma_data: float = 0.5):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ConfigError(f"denoiser.prediction: unknown {prediction!r}; valid: {', '.join(PREDICTIONS)}")
        if not sigma_data > 0:
            raise ConfigError(f"denoiser.sigma_data: must be > 0, got {sigma_data}")
        self.backbone = backbone
        self.prediction = prediction
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma: Tensor) -> Scalings:
        return scalings(self.prediction, sigma, self.sigma_data)

    def _sigma_vector(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1)
        return sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        sigma = self._sigma_vector(x, sigma)
        if sigma.shape[0] != x.shape[0]:
            raise ValueError(f"sigma has {sigma.shape[0]} entries for a batch of {x.shape[0]}")
        s = self.scalings(sigma)
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in (s.c_skip, s.c_out, s.c_in))
        f = self.backbone((c_in * x).to(x.dtype), s.c_noise.to(x.dtype), class_labels)
        return (c_skip * x + c_out * f.to(c_out.dtype)).to(x.dtype)


class CFGDenoiser(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022): D = D_u + w (D_c - D_u).

    ``guidance`` w = 1 gives the plain conditional model, w = 0 the unconditional one. The unconditional
    branch uses the extra label ``num_classes``. Costs two backbone evaluations per call (one batched pass).
    """

    def __init__(self, denoiser: Denoiser, num_classes: int, guidance: float):
        super().__init__()
        self.denoiser = denoiser
        self.num_classes = num_classes
        self.guidance = float(guidance)

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        if class_labels is None or self.guidance == 1.0:
            return self.denoiser(x, sigma, class_labels)
        uncond = torch.full_like(class_labels, self.num_classes)
        sigma = self.denoiser._sigma_vector(x, sigma)
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([class_labels, uncond]))
        d_cond, d_uncond = both.chunk(2)
        return d_uncond + self.guidance * (d_cond - d_uncond)
