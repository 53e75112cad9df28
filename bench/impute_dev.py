"""Missing-value imputation on a Gaussian mixture with a known answer: difflab's inpainting methods on a table.

A difflab model (default tabular config) is trained on draws of difflab's ``gmm8d`` mixture (isotropic
components), then each cell of held-out rows is hidden with probability ``--missing`` and filled by
``inpaint(model, table_with_nans, method=...)``. The mixture gives the exact answer: the posterior mean of
the hidden cells, sum_k w_k(observed) mu_k[hidden], with w_k proportional to pi_k N(observed; mu_k, s_k^2 I).
Reported: mean squared error on the hidden cells of one fill per method, of the exact posterior mean (the
least any fill can get), and of one exact posterior draw's expected error (twice the posterior variance
around the truth: E|s - x|^2 = E|s - m|^2 + E|m - x|^2 for a draw s, the posterior mean m and the truth x).

    python bench/impute_dev.py --steps 1500 --missing 0.5
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def posterior_mean(mix, x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact E[x_hidden | x_observed] and the expected squared error of one exact posterior draw, per row."""
    obs = (~hidden).double()
    diff2 = ((x.double()[:, None, :] - mix.means[None]) ** 2 * obs[:, None, :]).sum(-1)  # (N, K)
    s2 = mix.stds[None] ** 2
    logw = mix.weights.log()[None] - 0.5 * diff2 / s2 - 0.5 * obs.sum(1, keepdim=True) * s2.log()
    w = torch.softmax(logw, dim=1)  # (N, K) component posteriors given the observed cells
    mean = w @ mix.means  # (N, D): per-component conditional of a hidden cell is mu_k (isotropic components)
    second = w @ (mix.means**2) + (w * s2).sum(1, keepdim=True)
    var = second - mean**2  # posterior variance per cell
    return mean, var


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="gmm8d")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--missing", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import difflab
    from difflab.config import config_from_dict
    from difflab.data import Dataset
    from difflab.data.synthetic import synthetic
    from difflab.tasks.inpaint import inpaint

    mix = synthetic(a.data)
    train_x = mix.sample(a.n_train, 0)
    cfg = config_from_dict({"train": {"steps": a.steps, "checkpoint_every": a.steps, "sample_grid": 0,
                                      "device": "cpu"}})
    with tempfile.TemporaryDirectory() as run:
        t = time.perf_counter()
        difflab.train(cfg, Dataset(x=train_x, labels=None, kind="tabular", name=a.data), run, progress=False)
        print(f"trained {a.steps} steps on {a.n_train} rows of {a.data} in {time.perf_counter() - t:.0f}s")
        model = difflab.load(run)
    truth = mix.sample(a.n_test, 1).double()
    hidden = torch.from_numpy(np.random.default_rng(0).random(tuple(truth.shape)) < a.missing)
    table = torch.where(hidden, float("nan"), truth)
    mean, var = posterior_mean(mix, truth, hidden)
    print(f"{int(hidden.sum())} of {hidden.numel()} cells hidden; MSE on them:")
    print(f"  {'exact posterior mean (the floor)':42s} {float(((mean - truth)[hidden] ** 2).mean()):.4f}")
    print(f"  {'one exact posterior draw (expected)':42s} {float(2 * var[hidden].mean()):.4f}")
    print(f"  {'column means':42s} {float(((train_x.double().mean(0) - truth)[hidden] ** 2).mean()):.4f}")
    for method, options in (("pigdm", {"steps": 100}), ("ddnm", {"steps": 100}),
                            ("repaint", {"steps": 50, "jump_length": 5, "resamplings": 3})):
        t = time.perf_counter()
        out = inpaint(model, table, method=method, seed=0, **options)
        sec = time.perf_counter() - t
        print(f"  {'difflab ' + method + ' (one fill, ' + str(options) + ')':42s} "
              f"{float(((out - truth)[hidden] ** 2).mean()):.4f} ({sec:.1f}s)")


if __name__ == "__main__":
    main()
