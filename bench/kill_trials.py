"""Kill trials: SIGKILL ``difflab train`` at random moments, resume it, and compare with an uninterrupted run.

Each trial starts ``difflab train`` in a subprocess and kills it several times with SIGKILL, each kill at a
moment drawn from one of three kinds:

- ``write``: as soon as the run's temporary checkpoint folder (``checkpoints/.tmp-*-PID``) appears, plus
  0-3 ms, so the kill lands while a checkpoint is being written;
- ``train``: a random delay (0-0.6 s) after the run has made progress (a new checkpoint since it started);
- ``startup``: a random delay (0.5-6 s) after the process started: during imports, the run lock,
  the config write or the first steps.

After every kill it checks that the newest ``step-*`` checkpoint folder verifies against its manifest, that
``LATEST`` names a complete checkpoint, and that the newest checkpoint loads (``difflab.load``). Damaged
folders older than the newest good one (a kill while ``_prune`` was deleting an old checkpoint) are counted
as "partial older" and fail a trial only with ``--strict``. It then
restarts with ``--resume`` (or without it when the run was killed before it wrote ``config.json``), and
after the last kill lets the run finish. The final model, EMA and trainer tensors (optimiser state and RNG
states) must equal those of an uninterrupted reference run bit for bit (CPU, deterministic settings).

Default data: 2,000 points of a held-out random 3-D Gaussian mixture written to an ``.npy`` file (the test
suite trains on ``gmm2d``). Prints one line per trial and ``survived K/N``; exits 1 if any trial failed.

    python bench/kill_trials.py [--trials 20] [--data SPEC] [--seed S] [--kills 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from difflab.checkpoint import find_checkpoint, list_checkpoints, load_tensors, verify_checkpoint
from difflab.data import GaussianMixture
from difflab.errors import DifflabError

TRAIN_ARGS = ["--steps", "60", "--checkpoint-every", "4", "--batch-size", "64", "--quiet",
              "--set", 'model.preset="small"', "--set", "train.log_every=1", "--set", "train.keep_checkpoints=2",
              "--set", "train.sample_grid=0", "--device", "cpu"]
RUN_TIMEOUT = 240.0  # seconds one training process may take before it counts as a hang


def heldout_data(path: Path, seed: int) -> Path:
    """2,000 points of a random 3-D Gaussian mixture (not one of difflab's built-in datasets)."""
    g = torch.Generator().manual_seed(7000 + seed)
    k = int(torch.randint(3, 7, (1,), generator=g))
    means = 6 * torch.rand(k, 3, generator=g, dtype=torch.float64) - 3
    stds = 0.2 + 0.5 * torch.rand(k, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    mixture = GaussianMixture(weights, means, stds, name=f"killtrial{seed}")
    np.save(path, mixture.sample(2000, seed).numpy())
    return path


def start(run: Path, data: str, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "difflab", "train", "--data", data, "--out", str(run), *TRAIN_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd + (["--resume"] if resume else []), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = RUN_TIMEOUT) -> tuple[int | None, str]:
    """Wait for ``proc``; (None, ...) after a hang (it is then killed)."""
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, "timed out"


def tensors(run: Path) -> dict[str, torch.Tensor]:
    ckpt = find_checkpoint(run)
    if ckpt is None:
        raise DifflabError(f"{run}: no checkpoint")
    return {f"{name}.{k}": v for name in ("model", "ema", "trainer") for k, v in load_tensors(ckpt, name).items()}


def latest(run: Path) -> str | None:
    try:
        return (run / "checkpoints" / "LATEST").read_text().strip()
    except OSError:
        return None


def wait_for_kill_moment(proc: subprocess.Popen, run: Path, kind: str, rng: random.Random, t0: float) -> bool:
    """Sleep until the moment to kill; False if the process ended first."""
    before = latest(run)
    deadline = t0 + RUN_TIMEOUT
    if kind == "startup":
        end = t0 + rng.uniform(0.5, 6.0)
        while time.time() < end and proc.poll() is None:
            time.sleep(0.005)
        return proc.poll() is None
    ckpts = run / "checkpoints"
    tmp_name = f"-{proc.pid}"
    while proc.poll() is None and time.time() < deadline:
        if kind == "write":
            try:
                if any(n.startswith(".tmp-") and n.endswith(tmp_name) for n in os.listdir(ckpts)):
                    time.sleep(rng.uniform(0.0, 0.003))
                    return proc.poll() is None
            except OSError:
                pass
            time.sleep(0.0005)
        else:
            if latest(run) not in (None, before):
                time.sleep(rng.uniform(0.0, 0.6))
                return proc.poll() is None
            time.sleep(0.005)
    return proc.poll() is None


def check_after_kill(run: Path) -> tuple[list[str], list[str]]:
    """What a killed run left: (problems, partial). Problems: a damaged newest ``step-*`` folder, a dangling
    LATEST, a newest checkpoint that does not load. Partial: damaged ``step-*`` folders older than a good one
    (a kill while an old checkpoint was being pruned); they are skipped with a warning on load."""
    damaged, good = [], None
    for ckpt in list_checkpoints(run):  # oldest first
        try:
            verify_checkpoint(ckpt)
            good = ckpt
        except DifflabError as e:
            damaged.append((ckpt.name, f"corrupt checkpoint: {e}"))
    older = [msg for name, msg in damaged if good is not None and name < good.name]
    problems = [msg for name, msg in damaged if good is None or name > good.name]
    partial = older
    name = latest(run)
    if name is not None and not (run / "checkpoints" / name / "manifest.json").is_file():
        problems.append(f"LATEST names {name!r}, which is not a complete checkpoint")
    if list_checkpoints(run):
        try:
            import difflab

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                difflab.load(run)
        except DifflabError as e:
            problems.append(f"newest checkpoint does not load: {e}")
    return problems, partial


@dataclass
class Trial:
    index: int
    kills: dict[str, int] = field(default_factory=dict)
    in_write: int = 0  # kills that left a temporary checkpoint folder behind (landed mid-write)
    restarts: int = 0
    corrupt: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    strict: bool = False
    errors: list[str] = field(default_factory=list)
    hang: bool = False
    mismatch: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.errors or self.hang or self.mismatch or (self.strict and self.partial))

    def line(self) -> str:
        kills = ", ".join(f"{n} {k}" for k, n in sorted(self.kills.items())) or "none"
        status = "OK" if self.ok else "FAILED"
        out = (f"trial {self.index:2d}: {status:6s} kills: {kills} ({self.in_write} mid-write), "
               f"restarts {self.restarts}, corrupt {len(self.corrupt)}, partial older {len(self.partial)}, "
               f"{self.seconds:.1f} s")
        for what, items in (("corrupt", self.corrupt), ("partial older", self.partial), ("error", self.errors),
                            ("mismatch", self.mismatch)):
            out += "".join(f"\n    {what}: {x}" for x in items[:3])
        return out + ("\n    hang: a training process did not finish" if self.hang else "")


def run_trial(index: int, work: Path, data: str, reference: dict, kills: int, seed: int,
              strict: bool = False) -> Trial:
    rng = random.Random(seed * 1000 + index)
    trial = Trial(index, strict=strict)
    run = work / f"trial-{index:02d}"
    shutil.rmtree(run, ignore_errors=True)
    t_start = time.time()
    proc, t0 = start(run, data, resume=False), time.time()
    for _ in range(kills):
        kind = rng.choice(["write", "write", "train", "startup"])
        if not wait_for_kill_moment(proc, run, kind, rng, t0):
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        trial.kills[kind] = trial.kills.get(kind, 0) + 1
        ckpts, mine = run / "checkpoints", f"-{proc.pid}"
        trial.in_write += ckpts.is_dir() and any(n.startswith(".tmp-") and n.endswith(mine) for n in os.listdir(ckpts))
        problems, partial = check_after_kill(run)
        trial.corrupt += problems
        trial.partial += partial
        trial.restarts += 1
        proc, t0 = start(run, data, resume=(run / "config.json").exists()), time.time()
    rc, err = finish(proc)
    if rc is None:
        trial.hang = True
    elif rc != 0:
        trial.errors.append(f"exit {rc}: {(err.strip().splitlines() or ['(no message)'])[-1]}")
    else:
        problems, partial = check_after_kill(run)
        trial.corrupt += problems
        trial.partial += partial
        try:
            got = tensors(run)
        except DifflabError as e:
            trial.errors.append(str(e))
        else:
            if got.keys() != reference.keys():
                trial.mismatch.append(f"tensor names differ: {sorted(got.keys() ^ reference.keys())[:3]}")
            else:
                trial.mismatch += [k for k in reference if not torch.equal(reference[k], got[k])]
    trial.seconds = time.time() - t_start
    if trial.ok:
        shutil.rmtree(run, ignore_errors=True)
    return trial


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--data", default=None, help="dataset spec (default: a held-out 3-D mixture as .npy)")
    ap.add_argument("--seed", type=int, default=0, help="seed for the kill times and the default data")
    ap.add_argument("--kills", type=int, default=3, help="kills per trial")
    ap.add_argument("--workdir", default=None, help="where runs go (default: a temporary folder)")
    ap.add_argument("--strict", action="store_true",
                    help="also fail a trial when a kill leaves a damaged checkpoint older than the newest good one")
    a = ap.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="difflab-kill-trials-"))
    work.mkdir(parents=True, exist_ok=True)
    data = a.data or str(heldout_data(work / "heldout.npy", a.seed))
    t0 = time.time()
    shutil.rmtree(work / "reference", ignore_errors=True)
    rc, err = finish(start(work / "reference", data, resume=False))
    if rc != 0:
        print(f"reference run failed ({'hang' if rc is None else f'exit {rc}'}): {err.strip()[-500:]}")
        return 1
    reference = tensors(work / "reference")
    print(f"data {data}; reference run {time.time() - t0:.1f} s; {len(reference)} tensors; "
          f"train args: {' '.join(TRAIN_ARGS)}", flush=True)
    trials = []
    for i in range(a.trials):
        trials.append(run_trial(i, work, data, reference, a.kills, a.seed, a.strict))
        print(trials[-1].line(), flush=True)
    survived = sum(t.ok for t in trials)
    n_kills = sum(sum(t.kills.values()) for t in trials)
    print(f"kills {n_kills} ({sum(t.in_write for t in trials)} mid-write), corrupt checkpoints "
          f"{sum(len(t.corrupt) for t in trials)}, partial older checkpoints {sum(len(t.partial) for t in trials)}"
          f"{' (failures: --strict)' if a.strict else ''}, weight mismatches {sum(bool(t.mismatch) for t in trials)}, "
          f"errors {sum(bool(t.errors) for t in trials)}, hangs {sum(t.hang for t in trials)}; "
          f"{time.time() - t0:.0f} s in all")
    print(f"survived {survived}/{len(trials)}")
    if not a.workdir and survived == len(trials):
        shutil.rmtree(work, ignore_errors=True)
    return 0 if survived == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
