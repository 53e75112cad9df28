"""Quick anomaly-detection check: ELBO vs exact NLL on mixture oracles, and AUROC on one ADBench set.

1. Oracle: for ``gmm2d`` and ``gmm8d`` with their exact denoisers, the mean ELBO (difflab.elbo) over held-in
   samples against the exact -log p (at sigma_min) and the probability-flow ODE NLL, with run times.
2. ADBench (default ``cardio``): a DiffusionDetector (default settings) is fitted on 60% of the inliers
   (seeded split); the other inliers plus all anomalies are scored with each score, against scikit-learn's
   IsolationForest on the same split. AUROC, AUPRC and seconds.

    python bench/anomaly_quick.py [--data cardio] [--scores recon elbo nll] [--steps N] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from difflab.anomaly import DiffusionDetector, anomaly_scores, auroc_auprc
from difflab.data.synthetic import synthetic
from difflab.elbo import elbo
from difflab.likelihood import log_likelihood


def oracle(n: int = 256) -> None:
    for name in ("gmm2d", "gmm8d"):
        mix = synthetic(name)
        x = mix.sample(n, 0).double()
        t = time.perf_counter()
        bound, info = elbo(mix.denoiser, x, sigma_min=0.002, sigma_max=80.0, draws=64,
                           generator=torch.Generator().manual_seed(0))
        t_elbo = time.perf_counter() - t
        t = time.perf_counter()
        logp, _ = log_likelihood(mix.denoiser, x, sigma_min=0.002, sigma_max=80.0)
        t_ode = time.perf_counter() - t
        exact = -mix.log_prob(x, 0.002)
        se = float(info["stderr"].pow(2).sum().sqrt()) / n
        print(f"{name}: mean ELBO {bound.mean():.4f} +- {se:.4f} ({t_elbo:.2f}s), exact NLL {exact.mean():.4f}, "
              f"ODE NLL {-logp.mean():.4f} ({t_ode:.2f}s), n={n}")


def adbench(name: str, scores: list[str], steps: int | None, seed: int = 0) -> None:
    from sklearn.ensemble import IsolationForest

    data = np.load(f"/work/shared/data/adbench/{name}.npz")
    x, y = data["X"].astype(np.float32), data["y"].astype(int)
    rng = np.random.default_rng(seed)
    inliers = rng.permutation(np.flatnonzero(y == 0))
    n_train = int(0.6 * len(inliers))
    test = np.concatenate([inliers[n_train:], np.flatnonzero(y == 1)])
    x_train, x_test, y_test = x[inliers[:n_train]], x[test], y[test]
    print(f"{name}: train {len(x_train)} inliers, test {len(x_test)} ({int(y_test.sum())} anomalies), {x.shape[1]} features")
    t = time.perf_counter()
    forest = IsolationForest(random_state=seed).fit(x_train)
    auroc, auprc = auroc_auprc(-forest.score_samples(x_test), y_test)
    print(f"  IsolationForest      AUROC {auroc:.4f}  AUPRC {auprc:.4f}  ({time.perf_counter() - t:.1f}s fit+score)")
    t = time.perf_counter()
    det = DiffusionDetector(seed=seed, **({"steps": steps} if steps else {})).fit(x_train)
    print(f"  DiffusionDetector fit ({det.steps} steps, preset {det.preset}): {time.perf_counter() - t:.1f}s")
    for score in scores:
        t = time.perf_counter()
        if score == "recon":
            s = -det.score_samples(x_test)
        else:
            s = anomaly_scores(det.model_, x_test, score=score, seed=seed, batch_size=1024, rtol=1e-3, atol=1e-3).scores
        auroc, auprc = auroc_auprc(s, y_test)
        print(f"  diffusion {score:<10} AUROC {auroc:.4f}  AUPRC {auprc:.4f}  ({time.perf_counter() - t:.1f}s score)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="cardio")
    ap.add_argument("--scores", nargs="*", default=["recon", "elbo", "nll"])
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the detector's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-oracle", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not a.skip_oracle:
        oracle()
    adbench(a.data, a.scores, a.steps)


if __name__ == "__main__":
    main()
