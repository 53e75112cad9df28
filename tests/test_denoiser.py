"""The preconditioning table: every prediction target, given its exact target, recovers x0."""

import math

import pytest
import torch

from difflab.denoiser import CFGDenoiser, Denoiser, scalings
from difflab.errors import ConfigError

SD = 0.7


def _exact_targets(x0, eps, sigma, sd):
    """The quantity each prediction type regresses, written from its paper (not from the table)."""
    s = sigma.reshape(-1, 1)
    alpha, sig_vp = 1 / (1 + (s / sd) ** 2).sqrt(), (s / sd) / (1 + (s / sd) ** 2).sqrt()
    return {
        "eps": eps,  # Ho et al. 2020
        "x0": x0,
        "v": alpha * eps - sig_vp * x0 / sd,  # Salimans & Ho 2022 on data scaled to unit std
        # EDM eq. 7-8: F target = (x0 - c_skip x) / c_out
        "edm": (x0 - sd**2 / (s**2 + sd**2) * (x0 + s * eps)) / (s * sd / (s**2 + sd**2).sqrt()),
    }


class _Oracle(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = out
        self.seen = None

    def forward(self, x, noise_cond, class_labels=None):
        self.seen = (x, noise_cond)
        return self.out


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "edm"])
def test_each_prediction_recovers_x0_from_its_exact_target(prediction):
    g = torch.Generator().manual_seed(0)
    x0 = SD * torch.randn(64, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=g, dtype=torch.float64)
    sigma = torch.logspace(-2, 1.5, 64, dtype=torch.float64)
    x = x0 + sigma[:, None] * eps
    target = _exact_targets(x0, eps, sigma, SD)[prediction]
    d = Denoiser(_Oracle(target), prediction=prediction, sigma_data=SD)
    torch.testing.assert_close(d(x, sigma), x0)
    # the backbone sees c_noise = ln(sigma)/4
    torch.testing.assert_close(d.backbone.seen[1], sigma.log() / 4)


def test_edm_input_and_target_have_unit_variance():
    """EDM eq. 8-9: c_in makes the network input unit-variance and the F target is unit-variance too."""
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0 = SD * torch.randn(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    for sigma in (0.01, 0.3, 3.0, 50.0):
        s = scalings("edm", torch.tensor(sigma, dtype=torch.float64), SD)
        x = x0 + sigma * eps
        assert abs(float((s.c_in * x).var()) - 1) < 0.02
        assert abs(float(((x0 - s.c_skip * x) / s.c_out).var()) - 1) < 0.02


def test_scalar_and_vector_sigma_agree():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 4)
    d = Denoiser(lambda x, c, y=None: net(x) * c[:, None], sigma_data=0.5)
    x = torch.randn(5, 4)
    torch.testing.assert_close(d(x, 0.8), d(x, torch.full((5,), 0.8)))
    torch.testing.assert_close(d(x, torch.tensor(0.8)), d(x, torch.full((5,), 0.8)))
    with pytest.raises(ValueError, match="sigma has 3 entries"):
        d(x, torch.ones(3))


def test_bad_prediction_and_sigma_data():
    with pytest.raises(ConfigError, match="prediction"):
        Denoiser(torch.nn.Identity(), prediction="score")
    with pytest.raises(ConfigError, match="sigma_data"):
        Denoiser(torch.nn.Identity(), sigma_data=0.0)


def test_cfg_guidance_mixes_conditional_and_unconditional():
    class Net(torch.nn.Module):
        def forward(self, x, c, y=None):
            return x * 0 + y.to(x.dtype)[:, None]  # output = label value

    d = Denoiser(Net(), prediction="x0", sigma_data=1.0)
    x, labels = torch.zeros(4, 2), torch.tensor([0, 1, 2, 3])
    uncond = torch.full((4, 2), 10.0)
    for w in (0.0, 1.0, 3.0):
        out = CFGDenoiser(d, num_classes=10, guidance=w)(x, 1.0, labels)
        torch.testing.assert_close(out, uncond + w * (labels[:, None].float() - uncond))
    assert math.isclose(CFGDenoiser(d, 10, 2.0).guidance, 2.0)
