"""The command line, run as a user would: subprocesses, exit codes, one-line errors, files written."""

import subprocess
import sys

import numpy as np
import pytest

from difflab.data import synthetic

COMMANDS = ["train", "sample", "tune", "likelihood", "demo"]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "difflab", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(command):
    r = run(command, "--help")
    assert r.returncode == 0
    assert "example" in r.stdout and f"difflab {command}" in r.stdout


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    points = synthetic("gmm2d").sample(600, 0).numpy()
    np.save(tmp / "points.npy", points)
    r = run("train", "--data", str(tmp / "points.npy"), "--out", str(tmp / "run"), "--steps", "30",
            "--set", "model.preset=\"small\"", "--set", "train.batch_size=64", "--quiet")
    assert r.returncode == 0, r.stderr
    return tmp


def test_train_then_sample_csv(tabular_run):
    out = tabular_run / "s.csv"
    r = run("sample", str(tabular_run / "run"), "--n", "10", "--out", str(out), "--steps", "4", "--quiet")
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 11 and len(lines[1].split(",")) == 2
    assert np.isfinite(np.loadtxt(out, delimiter=",", skiprows=1)).all()


def test_image_train_and_sample_npz(tmp_path):
    r = run("train", "--data", "digits", "--out", str(tmp_path / "run"), "--steps", "3", "--batch-size", "16",
            "--set", "model.params={\"model_channels\": 16}", "--set", "train.sample_grid=4",
            "--set", "sample.steps=2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "samples.png").exists()
    r = run("sample", str(tmp_path / "run"), "--n", "5", "--out", str(tmp_path / "s.npz"), "--sampler", "euler",
            "--steps", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8 and images.max() <= 16
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    r = run("sample", str(tmp_path / "run"), "--n", "2", "--out", str(tmp_path / "t.npz"), "--sampler", "heun",
            "--nfe", "6", "--quiet")
    assert r.returncode == 0 and "heun: 3 steps = 5 denoiser calls" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--data", "{tmp}/missing.npy", "--out", "{tmp}/r"], "missing.npy"),
        (["train", "--data", "{tmp}/empty.csv", "--out", "{tmp}/r"], "empty.csv"),
        (["train", "--data", "digits", "--out", "{tmp}/r", "--steps", "0"], "--steps"),
        (["train", "--data", "digits", "--out", "{tmp}/r", "--set", "train.lr=fast"], "train.lr"),
        (["train", "--data", "digits", "--out", "{tmp}/r", "--config", "{tmp}/c.yaml"], "c.yaml"),
        (["sample", "{tmp}/not_a_run", "--out", "{tmp}/s.npz"], "not_a_run"),
        (["sample", "{run}/run", "--out", "{tmp}/s.csv", "--sampler", "magic"], "magic"),
        (["sample", "{run}/run", "--out", "{tmp}/no/such/folder/s.csv"], "does not exist"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, tabular_run, args, needle):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "c.yaml").write_text("train: {}")
    args = [a.format(tmp=tmp_path, run=tabular_run) for a in args]
    r = run(*args)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert needle in err and "Traceback" not in err
    assert len(err.splitlines()) <= 3  # argparse prints usage + one error line; difflab prints one line
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_debug_shows_traceback(tmp_path):
    r = run("--debug", "train", "--data", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "r"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_resume_keeps_the_runs_config_unless_overridden(tmp_path):
    common = ["--data", "gmm2d", "--out", str(tmp_path / "r"), "--quiet", "--set", "model.preset=\"small\""]
    r = run("train", *common, "--steps", "4", "--batch-size", "32")
    assert r.returncode == 0, r.stderr
    r = run("train", *common, "--resume", "--steps", "8")
    assert r.returncode == 0 and "trained 8 steps" in r.stdout, r.stderr
    r = run("train", *common, "--resume")  # no --steps: the run's own 8, not the default
    assert r.returncode == 0 and "trained 8 steps" in r.stdout, r.stderr
    import json

    saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert saved["train"]["batch_size"] == 32 and saved["train"]["steps"] == 8


def test_likelihood_reports_nats_bits_and_writes_csv(tabular_run):
    out = tabular_run / "nll.csv"
    r = run("likelihood", str(tabular_run / "run"), "--data", str(tabular_run / "points.npy"), "--n", "40",
            "--csv", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "nats per sample" in r.stdout and "bits/dim" in r.stdout
    values = np.loadtxt(out, delimiter=",", skiprows=1)
    assert values.shape == (40, 2) and np.isfinite(values).all()
    np.testing.assert_allclose(values[:, 1], values[:, 0] / (2 * np.log(2)), rtol=1e-6)
    r = run("likelihood", str(tabular_run / "run"), "--data", "digits", "--quiet")
    assert r.returncode == 2 and "expects [2]" in r.stderr
