"""SIGKILL a training run at random moments, resume it, and compare with an uninterrupted run (bitwise)."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from difflab.checkpoint import find_checkpoint, load_tensors, verify_checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

ARGS = ["--data", "gmm2d", "--steps", "120", "--checkpoint-every", "7", "--batch-size", "64", "--quiet",
        "--set", "model.preset=\"small\"", "--set", "train.log_every=1"]


def _train(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "difflab", "train", "--out", str(out), *ARGS, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _weights(run):
    ckpt = find_checkpoint(run)
    return {**load_tensors(ckpt, "model"), **{"ema." + k: v for k, v in load_tensors(ckpt, "ema").items()}}


@pytest.mark.parametrize("trial", [0, 1])
def test_killed_run_resumes_to_identical_weights(tmp_path, trial):
    ref = _train(tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    rng = random.Random(trial)
    run = tmp_path / "killed"
    proc = _train(run)
    kills = 0
    while True:
        # wait until the run has started writing checkpoints, then kill it at a random moment
        deadline = time.time() + 120
        while not (run / "checkpoints").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        ckpt = find_checkpoint(run)
        if ckpt is not None:
            verify_checkpoint(ckpt)  # the newest complete checkpoint always verifies
        proc = _train(run, "--resume")
        if kills >= 3:
            break
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert kills >= 1
    a, b = _weights(tmp_path / "ref"), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Payload:
    """Unpickling this would create a marker file (it must never run)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_checkpoint_is_refused_without_running(tmp_path):
    import hashlib
    import json
    import pickle

    import difflab
    from difflab.config import config_from_dict
    from difflab.data import load_data
    from difflab.errors import CheckpointError
    from difflab.training import train

    cfg = config_from_dict({"model": {"backbone": "mlp", "preset": "small"},
                            "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 2}})
    train(cfg, load_data("gmm2d", n=50), tmp_path, progress=False)
    ckpt = find_checkpoint(tmp_path)
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(str(marker)))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name in ("model.safetensors", "ema.safetensors"):
        (ckpt / name).write_bytes(payload)
        manifest["sha256"][name] = hashlib.sha256(payload).hexdigest()  # even with a forged manifest
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="ema.safetensors: cannot load"):
        difflab.load(tmp_path)
    assert not marker.exists()
