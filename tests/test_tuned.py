"""Tuned sigma grids (difflab.sampling.tuned, DiffusionModel.tune_schedule, `difflab tune`).

Oracle: a 2-D Gaussian mixture with its exact denoiser, so the ODE endpoint is the mixture's flow map; the
tuned grid must beat the hand-made grids on noise it never saw.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import difflab
import difflab.sampling as S
from difflab.data import synthetic
from difflab.errors import ConfigError
from difflab.sampling import tuned

from test_sampling import mixture_denoiser

SMIN, SMAX = 0.002, 80.0
pytestmark = pytest.mark.usefixtures("one_thread")


def mixture():
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    return mixture_denoiser(means, weights, 0.25)


def rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_every_parameter_vector_gives_a_valid_grid(n):
    rng = np.random.default_rng(n)
    for _ in range(50):
        z = rng.normal(scale=4.0, size=n)
        g = tuned.grid_from_params(z, SMIN, SMAX)
        assert g.shape == (n + 1,) and g[0] == SMAX and g[-1] == 0.0
        assert bool((g[1:] < g[:-1]).all()) and float(g[-2]) >= SMIN


def test_params_round_trip_a_grid():
    g = S.get_sigmas("karras", 6, sigma_min=0.05, sigma_max=SMAX)  # last level above SMIN: nonzero last gap
    back = tuned.grid_from_params(tuned.params_from_grid(g, SMIN), SMIN, SMAX)
    torch.testing.assert_close(back, g, rtol=1e-9, atol=0)


@pytest.mark.parametrize("sampler,options", [("dpmpp_2m", {}), ("unipc", {"order": 2, "variant": "bh2"})])
def test_tuned_grid_beats_hand_made_grids_on_fresh_noise(sampler, options):
    D = mixture()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = tuned.tune_sigmas(D, noise, sampler=sampler, steps=4, sigma_min=SMIN, sigma_max=SMAX, options=options)
    assert res.info["kept"] == "tuned" and res.nfe == 4 and res.steps == 4
    assert res.error < 0.7 * res.baseline_error
    # Noise neither the search nor the held-out check saw.
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * SMAX
    ref = S.sample(D, x, torch.tensor([SMAX, SMIN, 0.0]), sampler="rk45", rtol=1e-8, atol=1e-8)
    fn = S.get_sampler(sampler)
    err_tuned = rms(fn(D, x.clone(), res.grid(), **options), ref)
    for name in tuned.BASE_GRIDS:
        err_base = rms(fn(D, x.clone(), S.get_sigmas(name, 4, sigma_min=SMIN, sigma_max=SMAX), **options), ref)
        assert err_tuned < 0.7 * err_base, (name, err_tuned, err_base)


def test_one_step_has_nothing_to_tune_and_calls_are_counted():
    calls = 0

    def D(x, sigma, **kw):
        nonlocal calls
        calls += 1
        return mixture()(x, sigma)

    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = tuned.tune_sigmas(D, noise, sampler="euler", steps=1, sigma_min=SMIN, sigma_max=SMAX)
    assert res.info["evals"] == 0 and res.sigmas == [SMAX, 0.0]
    assert res.calls == calls > 0


def test_a_grid_no_better_on_held_out_noise_is_not_kept():
    # Data at a single point: every grid's endpoint D(x, sigma_last) = 0 is exact, so no grid can beat the
    # baseline on the held-out half, and the baseline must come back unchanged.
    def point_mass(x, sigma, **kw):
        return torch.zeros_like(x)

    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = tuned.tune_sigmas(point_mass, noise, sampler="dpmpp_2m", steps=3, sigma_min=SMIN, sigma_max=SMAX,
                            max_evals=10)
    base = S.get_sigmas(res.baseline, 3, sigma_min=SMIN, sigma_max=SMAX)
    assert res.info["kept"] == res.baseline == "log_snr"
    assert res.sigmas == [float(v) for v in base] and res.error == res.baseline_error == 0.0


@pytest.mark.parametrize("kw,needle", [
    ({"sampler": "ddpm"}, "sampler"),
    ({"sampler": "rk45"}, "sampler"),
    ({"steps": 0}, "steps"),
    ({"holdout": 1.0}, "holdout"),
])
def test_bad_arguments_name_the_field(kw, needle):
    args = {"sampler": "dpmpp_2m", "steps": 3, "sigma_min": SMIN, "sigma_max": SMAX, **kw}
    noise = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=needle):
        tuned.tune_sigmas(mixture(), noise, **args)


def test_store_keeps_other_entries_and_rejects_bad_files(tmp_path):
    path = tmp_path / "schedules.json"
    assert tuned.find_schedule(path, "dpmpp_2m", 3) is None
    mk = lambda sampler, opts, grid: tuned.TunedSchedule(  # noqa: E731
        sampler=sampler, nfe=len(grid) - 1, sigmas=grid, error=0.1, baseline="log_snr", baseline_error=0.2,
        calibration_error=0.1, calls=10, n=8, rtol=1e-5, options=opts)
    tuned.write_schedule(path, mk("dpmpp_2m", {}, [80.0, 1.0, 0.1, 0.0]), checkpoint="step-00000010")
    tuned.write_schedule(path, mk("unipc", {"order": 3}, [80.0, 2.0, 0.2, 0.0]))
    tuned.write_schedule(path, mk("dpmpp_2m", {}, [80.0, 1.5, 0.1, 0.0]), checkpoint="step-00000020")
    assert tuned.available(path) == ["dpmpp_2m/steps=3", "unipc[order=3]/steps=3"]
    sched, rec = tuned.find_schedule(path, "dpmpp_2m", 3)
    assert sched.sigmas == [80.0, 1.5, 0.1, 0.0] and rec["checkpoint"] == "step-00000020"
    assert tuned.find_schedule(path, "unipc", 3) is None  # options are part of the key
    assert tuned.find_schedule(path, "unipc", 3, {"order": 3})[0].sigmas[1] == 2.0
    data = json.loads(path.read_text())
    data["schedules"]["dpmpp_2m/steps=3"]["schedule"]["sigmas"] = [80.0, 0.1, 1.0, 0.0]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="strictly decreasing"):
        tuned.find_schedule(path, "dpmpp_2m", 3)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="schedules.json"):
        tuned.find_schedule(path, "dpmpp_2m", 3)


# ---------------------------------------------------------------------------------- model and CLI


def cli(*args):
    return subprocess.run([sys.executable, "-m", "difflab", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    np.save(tmp / "points.npy", synthetic("gmm2d").sample(600, 0).numpy())
    cfg = difflab.ExperimentCfg().replace("train", steps=60, batch_size=64).replace("model", preset="small")
    difflab.train(cfg, difflab.load_data(str(tmp / "points.npy")), tmp / "run", progress=False)
    return tmp / "run"


def test_model_tune_then_sample_with_the_tuned_grid(run_dir):
    model = difflab.load(run_dir)
    res = model.tune_schedule("dpmpp_2m", 3, n=16, max_evals=20)
    assert (run_dir / "schedules.json").exists()
    torch.testing.assert_close(model.sigmas(3, "tuned", sampler="dpmpp_2m"), res.grid())
    a = model.sample(5, sampler="dpmpp_2m", steps=3, schedule="tuned", seed=3)
    z = S.sample(model.denoiser, torch.stack([torch.randn(2, generator=torch.Generator().manual_seed(3 + i))
                                              for i in range(5)]) * res.sigmas[0], res.grid(), "dpmpp_2m")
    torch.testing.assert_close(a, model.denormalize(z))
    with pytest.raises(ValueError, match=r"no tuned grid for dpmpp_2m/steps=4.*difflab tune"):
        model.sample(5, sampler="dpmpp_2m", steps=4, schedule="tuned")
    with pytest.raises(ValueError, match="sigma_last"):
        model.sample(5, sampler="dpmpp_2m", steps=3, schedule="tuned", sigma_last=0.1)


def test_cli_tune_and_sample(run_dir, tmp_path):
    r = cli("tune", str(run_dir), "--sampler", "unipc", "--nfe", "4", "--n", "16", "--max-evals", "15", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "held-out" in r.stdout and "schedules.json" in r.stdout
    ratio = float(r.stdout.split("(")[2].split("x)")[0]) if "x)" in r.stdout else math.nan
    assert ratio <= 1.0  # the stored grid is the tuned one only if it won on held-out noise
    out = tmp_path / "s.csv"
    r = cli("sample", str(run_dir), "--n", "4", "--out", str(out), "--sampler", "unipc", "--nfe", "4",
            "--schedule", "tuned", "--quiet")
    assert r.returncode == 0, r.stderr
    assert np.isfinite(np.loadtxt(out, delimiter=",", skiprows=1)).all()
    r = cli("sample", str(run_dir), "--n", "4", "--out", str(tmp_path / "t.csv"), "--sampler", "euler",
            "--steps", "7", "--schedule", "tuned", "--quiet")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "no tuned grid for euler/steps=7" in r.stderr and not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("args,needle", [
    (["--sampler", "ddpm"], "--sampler ddpm"),
    (["--n", "1"], "--n"),
    (["--steps", "3", "--nfe", "3"], "--steps and --nfe"),
])
def test_cli_tune_bad_arguments(run_dir, args, needle):
    before = (run_dir / "schedules.json").read_bytes() if (run_dir / "schedules.json").exists() else None
    r = cli("tune", str(run_dir), *args, "--quiet")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr
    after = (run_dir / "schedules.json").read_bytes() if (run_dir / "schedules.json").exists() else None
    assert before == after
