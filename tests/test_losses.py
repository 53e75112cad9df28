"""Loss weightings and sigma densities against closed forms for Gaussian data."""

import math

import pytest
import torch
from scipy.integrate import quad

from difflab.denoiser import Denoiser
from difflab.errors import ConfigError
from difflab.losses import DenoisingLoss, LogNormal, LogUniform, ProcessSigma, make_sigma_distribution
from difflab.process import DDPM, EDM, VE, VP

S = 0.6  # data std


class Zero(torch.nn.Module):
    def forward(self, x, c, y=None):
        return torch.zeros_like(x)


class IdealGaussian(torch.nn.Module):
    """D(x, sigma) = x s^2 / (s^2 + sigma^2) for data N(0, s^2 I), written as an x0-prediction backbone."""

    def forward(self, x_in, c_noise, y=None):
        sigma = (4 * c_noise).exp()[:, None]
        x = x_in * (sigma**2 + S**2).sqrt()  # undo c_in of the x0 table
        return x * S**2 / (S**2 + sigma**2)


@pytest.mark.parametrize("dist", [LogNormal(), LogUniform(0.01, 50), ProcessSigma(VP()), ProcessSigma(VE()),
                                  ProcessSigma(EDM()), ProcessSigma(DDPM())], ids=repr)
def test_sigma_pdf_integrates_to_one_and_matches_samples(dist):
    g = torch.Generator().manual_seed(0)
    samples = dist.sample(50_000, g)
    lo, hi = float(samples.min()), float(samples.max())
    grid = torch.logspace(math.log10(lo), math.log10(hi), 4001, dtype=torch.float64)
    pdf = dist.pdf(grid)
    total = float(torch.trapezoid(pdf, grid))
    assert abs(total - 1) < 0.02
    # P(sigma < median of samples) from the pdf is 1/2
    med = float(samples.median())
    mask = grid <= med
    assert abs(float(torch.trapezoid(pdf[mask], grid[mask])) - 0.5) < 0.02


def test_edm_weighting_gives_unit_loss_for_zero_network():
    """EDM eq. 8: with F = 0 the weighted loss equals Var(F target) = 1 for data of std sigma_data."""
    torch.manual_seed(0)
    x0 = S * torch.randn(100_000, 2)
    loss = DenoisingLoss(LogNormal(), "edm", sigma_data=S)
    g = torch.Generator().manual_seed(1)
    value = loss(Denoiser(Zero(), prediction="edm", sigma_data=S), x0, generator=g)
    assert value.shape == (100_000,)
    assert abs(float(value.mean()) - 1) < 0.02


@pytest.mark.parametrize("dist", [LogUniform(0.01, 50.0), ProcessSigma(VP())], ids=repr)
def test_likelihood_weighting_is_the_elbo_integral(dist):
    """E[loss] * dim = int lambda(sigma) E|D - x0|^2 p(sigma) dsigma = int dsigma / sigma^3 * s^2 sigma^2/(s^2+sigma^2)."""
    lo, hi = (0.01, 50.0) if isinstance(dist, LogUniform) else (VP().sigma_min, VP().sigma_max)
    exact, _ = quad(lambda s: S**2 / (s * (S**2 + s**2)), lo, hi, limit=200)
    torch.manual_seed(0)
    x0 = S * torch.randn(200_000, 1, dtype=torch.float64)
    loss = DenoisingLoss(dist, "likelihood", sigma_data=S)
    d = Denoiser(IdealGaussian(), prediction="x0", sigma_data=S)
    values = loss(d, x0.float(), generator=torch.Generator().manual_seed(2)).double()
    err = float(values.std()) / math.sqrt(len(values))
    assert abs(float(values.mean()) - exact) < 5 * err + 1e-3 * exact


def test_ideal_denoiser_beats_a_perturbed_one_for_every_weighting():
    torch.manual_seed(0)
    x0 = S * torch.randn(20_000, 2)
    ideal = Denoiser(IdealGaussian(), prediction="x0", sigma_data=S)

    class Off(IdealGaussian):
        def forward(self, x_in, c_noise, y=None):
            return 1.15 * super().forward(x_in, c_noise, y)

    off = Denoiser(Off(), prediction="x0", sigma_data=S)
    for weighting in ("edm", "min_snr", "likelihood", "uniform"):
        loss = DenoisingLoss(LogUniform(0.01, 50), weighting, sigma_data=S)
        a = loss(ideal, x0, generator=torch.Generator().manual_seed(3)).mean()
        b = loss(off, x0, generator=torch.Generator().manual_seed(3)).mean()
        assert a < b, weighting


def test_bad_names():
    with pytest.raises(ConfigError, match="weighting"):
        DenoisingLoss(LogNormal(), "snr+")
    with pytest.raises(ConfigError, match="sigma_dist"):
        make_sigma_distribution("uniform", EDM())
