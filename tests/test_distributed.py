"""torchrun with 2 CPU processes (gloo) ends with the same weights as 1 process at the same global batch."""

import os
import subprocess
import sys

import torch

from difflab.checkpoint import find_checkpoint, load_tensors

ARGS = ["train", "--data", "gmm2d", "--steps", "12", "--batch-size", "64", "--checkpoint-every", "6", "--quiet",
        "--set", "model.preset=\"small\"", "--set", "train.grad_accum=2", "--set", "train.sample_grid=0"]


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_two_process_run_matches_one_process_run(tmp_path):
    _run([sys.executable, "-m", "difflab", *ARGS, "--out", str(tmp_path / "one")], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run([*torchrun, "-m", "difflab", *ARGS, "--out", str(tmp_path / "two")], tmp_path)
    one, two = find_checkpoint(tmp_path / "one"), find_checkpoint(tmp_path / "two")
    assert one.name == two.name == "step-00000012"
    for name in ("model", "ema"):
        a, b = load_tensors(one, name), load_tensors(two, name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    # only rank 0 wrote: one metrics row per step
    rows = (tmp_path / "two" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [10, 12]  # log_every = 10, plus the last step
    # resume the 2-process run with a single process (a different world size) and continue
    resume = ["train", "--data", "gmm2d", "--out", str(tmp_path / "two"), "--resume", "--steps", "15", "--quiet"]
    r = _run([sys.executable, "-m", "difflab", *resume], tmp_path)
    assert "trained 15 steps" in r.stdout


def test_batch_must_split_over_ranks_and_micro_batches(tmp_path):
    r = subprocess.run([sys.executable, "-m", "difflab", "train", "--data", "gmm2d", "--out", str(tmp_path / "r"),
                        "--batch-size", "63", "--set", "train.grad_accum=2", "--steps", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "grad_accum" in r.stderr and "Traceback" not in r.stderr


def test_shards_partition_the_global_batch():
    from difflab.distributed import DistContext

    for world in (1, 2, 4):
        covered = [i for r in range(world) for i in range(64)[DistContext(rank=r, world=world).shard(64)]]
        assert covered == list(range(64))
