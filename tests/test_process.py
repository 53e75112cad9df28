"""Noise processes: closed forms, inverses and conversions."""

import math

import pytest
import torch

from difflab.errors import ConfigError
from difflab.process import (
    DDPM,
    EDM,
    PROCESSES,
    VE,
    VP,
    alpha_bar_from_sigma,
    log_snr_from_sigma,
    process_from_dict,
    sigma_from_alpha_bar,
    sigma_from_log_snr,
)

ALL = [EDM(), VE(), VP(), DDPM(), DDPM(schedule="cosine"), DDPM(timesteps=50)]


@pytest.mark.parametrize("process", ALL, ids=lambda p: repr(p)[:40])
def test_t_sigma_round_trip(process):
    t = torch.linspace(process.t_min, process.t_max, 101, dtype=torch.float64)
    sigma = process.sigma(t)
    assert torch.all(sigma[1:] > sigma[:-1]), "sigma(t) must increase"
    torch.testing.assert_close(process.t_of_sigma(sigma), t, atol=1e-9, rtol=1e-9)
    assert math.isclose(process.sigma_min, float(sigma[0])) and math.isclose(process.sigma_max, float(sigma[-1]))


@pytest.mark.parametrize("process", ALL, ids=lambda p: repr(p)[:40])
def test_scale_matches_process_kind(process):
    t = torch.linspace(process.t_min, process.t_max, 11, dtype=torch.float64)
    s = process.scale(t)
    if isinstance(process, (VP, DDPM)):  # variance preserving: s^2 (1 + sigma^2) = 1
        torch.testing.assert_close(s**2 * (1 + process.sigma(t) ** 2), torch.ones_like(t))
    else:
        torch.testing.assert_close(s, torch.ones_like(t))


def test_conversions_round_trip():
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    torch.testing.assert_close(sigma_from_alpha_bar(alpha_bar_from_sigma(sigma)), sigma)
    torch.testing.assert_close(sigma_from_log_snr(log_snr_from_sigma(sigma)), sigma)
    # log SNR of the VP view: alpha_bar / (1 - alpha_bar) = 1 / sigma^2
    ab = alpha_bar_from_sigma(sigma)
    torch.testing.assert_close(torch.log(ab / (1 - ab)), log_snr_from_sigma(sigma))


def test_vp_matches_beta_integral():
    p = VP(beta_min=0.1, beta_max=20.0)
    t = torch.linspace(0.01, 1, 20, dtype=torch.float64)
    log_alpha_bar = -(0.1 * t + 0.5 * (20.0 - 0.1) * t**2)  # -int_0^t beta(s) ds
    torch.testing.assert_close(p.alpha_bar(t), log_alpha_bar.exp())


def test_ddpm_matches_cumprod_of_betas():
    p = DDPM(schedule="linear", timesteps=1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    t = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(p.alpha_bar(t), ab)
    native = p.native_sigmas()
    assert native.shape == (1000,) and torch.all(native[:-1] > native[1:])
    torch.testing.assert_close(native.flip(0), sigma_from_alpha_bar(ab))


def test_ve_endpoints():
    p = VE(sigma_lo=0.01, sigma_hi=50.0)
    assert math.isclose(p.sigma_min, 0.01) and math.isclose(p.sigma_max, 50.0)


@pytest.mark.parametrize("process", ALL, ids=lambda p: repr(p)[:40])
def test_training_t_distribution_in_range(process):
    g = torch.Generator().manual_seed(0)
    t = process.sample_t(2000, g)
    if isinstance(process, EDM):  # log-normal sigma: ln sigma has the configured mean and std
        assert abs(t.log().mean() - process.p_mean) < 0.1 and abs(t.log().std() - process.p_std) < 0.1
    else:
        assert t.min() >= process.t_min and t.max() <= process.t_max
        assert abs(float(t.mean()) - (process.t_min + process.t_max) / 2) < 0.05 * (process.t_max - process.t_min)


@pytest.mark.parametrize("process", ALL, ids=lambda p: repr(p)[:40])
def test_dict_round_trip(process):
    again = process_from_dict(process.to_dict())
    assert type(again) is type(process) and again.to_dict() == process.to_dict()


def test_bad_process_config():
    with pytest.raises(ConfigError, match="process"):
        process_from_dict({"name": "ddpm", "schedule": "quadratic"})
    with pytest.raises(ValueError, match="valid: ddpm, edm, ve, vp"):
        process_from_dict({"name": "nope"})
    with pytest.raises(ConfigError, match="ve"):
        process_from_dict({"name": "ve", "bogus": 1})
    assert set(PROCESSES.names()) == {"ddpm", "edm", "ve", "vp"}
