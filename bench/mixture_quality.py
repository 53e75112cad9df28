"""Held-out 2-D mixtures, trained through the CLI with default settings, scored by the true density.

For each of a few random 2-D Gaussian mixtures (not difflab's built-in ones), this writes 10,000 samples to
an .npy file, runs ``difflab train --data FILE.npy --out RUN`` (defaults unless --steps is given), samples
through ``difflab sample``, and reports the mean log-density of the samples under the true mixture minus
that of fresh true samples (the "gap", in nats; the acceptance target is < 0.15).

    python bench/mixture_quality.py [--mixtures 3] [--steps N] [--n 5000] [--workdir /tmp/mixq]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from difflab.data import GaussianMixture


def random_mixture(seed: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(1000 + seed)
    k = int(torch.randint(3, 9, (1,), generator=g))
    means = 4 * torch.rand(k, 2, generator=g, dtype=torch.float64) - 2
    stds = 0.1 + 0.3 * torch.rand(k, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    scale = 1 + 4 * float(torch.rand(1, generator=g))  # data not in unit scale: the normaliser must cope
    return GaussianMixture(weights, means * scale + 3, stds * scale, name=f"heldout{seed}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixtures", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--workdir", default="/tmp/difflab-mixture-quality")
    ap.add_argument("--only", type=int, nargs="*", help="run only these mixture indices")
    ap.add_argument("--set", action="append", default=[], help="passed to difflab train --set")
    a = ap.parse_args(argv)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    gaps = []
    for i in a.only if a.only else range(a.mixtures):
        mix = random_mixture(i)
        data = work / f"mix{i}.npy"
        np.save(data, mix.sample(10_000, i).numpy())
        run = work / f"run{i}"
        subprocess.run(["rm", "-rf", str(run)], check=True)
        cmd = [sys.executable, "-m", "difflab", "train", "--data", str(data), "--out", str(run), "--quiet"]
        if a.steps:
            cmd += ["--steps", str(a.steps)]
        for kv in a.set:
            cmd += ["--set", kv]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        t_train = time.perf_counter() - t
        out = work / f"samples{i}.csv"
        subprocess.run([sys.executable, "-m", "difflab", "sample", str(run), "--n", str(a.n), "--out", str(out),
                        "--quiet"], check=True)
        samples = torch.from_numpy(np.loadtxt(out, delimiter=",", skiprows=1))
        true = mix.sample(a.n, 10_000 + i)
        gap = float(mix.log_prob(true).mean() - mix.log_prob(samples).mean())
        gaps.append(gap)
        print(f"mixture {i} ({mix.num_components} components): gap {gap:+.3f} nats  (train {t_train:.0f} s)", flush=True)
    print(f"mean gap {np.mean(gaps):+.3f} nats, worst {max(gaps):+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
