"""Development study for the anomaly scores' defaults, on data the benchmark (bench/tasks.py) never scores.

The one-class MNIST benchmark scores the 1,000 held-out MNIST digits and the ADBench sets; the choices it
checks are made here, on other data, so that the check stays honest:

* ``--data digits``: scikit-learn's 8x8 digits, a stratified 50 / 50 split;
* ``--data mnist-train``: the 7,000-digit MNIST *training* split only (``--npz``, as bench/tasks.py and
  bench/class_conditional.py write it), cut 50 / 50 again: the model of digit d sees half of the class-d
  training digits, and the dev test set is the other half plus ``--n-other`` training digits of other
  classes;
* ``--data breast_cancer | wine | gmm8d-box | gmm8d-box-int | digits-table``: tables (see ``tabular``); ``--digits`` are then
  split seeds (digits-table: the normal class).

Images: for each digit d, train a difflab model (default config, ``--steps`` steps of ``--batch-size``) on
the class-d images of the first part, then score the dev test set (anomaly = not d) with
``anomaly_scores(score="recon")`` at ``--levels`` (multiples of sigma_data), and the same for the class-d
training images (the reference a detector would use). Per-level raw errors are saved to
``OUT/errors_d.npz`` with the labels and IsolationForest's scores on the same split, and the AUROC of each
level alone is printed. ``--report DIR ...`` then compares the ways to combine the default five levels on
the saved errors, through the library's own ``Calibration`` (combine "mean" and "profile", and the
geometric mean of the levels, which the library does not offer: tried for tables and not adopted).

    python bench/anomaly_dev.py --out bench/out/anomaly_dev --digits 0 1 2 3 4
    python bench/anomaly_dev.py --data mnist-train --out bench/out/anomaly_dev_mnist --digits 2 5 8 \
        --steps 500 --batch-size 32
    python bench/anomaly_dev.py --data breast_cancer --out bench/out/anomaly_dev_breast_cancer --digits 0 1
    python bench/anomaly_dev.py --report bench/out/anomaly_dev_mnist bench/out/anomaly_dev_breast_cancer
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

TABULAR = ("breast_cancer", "wine", "gmm8d-box", "gmm8d-box-int", "digits-table", "digits-loo")


def tabular(args) -> None:
    """Semi-supervised tabular dev sets (as bench/tasks_anomaly.py's ADBench protocol: fit on the normal rows
    of a stratified 70% split, score the other 30%), from data bundled with scikit-learn or difflab:
    breast_cancer (malignant = anomaly), wine (classes 1 and 2 = anomaly), gmm8d-box (difflab's gmm8d
    mixture, 2,000 normal rows, against 100 rows uniform in its bounding box; gmm8d-box-int: the same rounded
    to a lattice of half the normal rows' std per column, integer-valued like breastw), digits-table (scikit-learn's
    8x8 digits as 64-column rows: normal = the digits of one class, anomalies = half as many rows drawn from
    the other classes; here ``--digits`` are the normal classes and the split seed is the digit), digits-loo
    (the same rows, normal = nine classes, anomalies = the tenth class, as many rows as a ninth of the normal
    ones: a multi-modal normal set; ``--digits`` are the anomalous classes))."""
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine
    from sklearn.ensemble import IsolationForest
    from sklearn.model_selection import train_test_split

    from difflab.anomaly import DiffusionDetector, anomaly_scores, auroc_auprc
    from difflab.data.synthetic import synthetic

    if args.data == "breast_cancer":
        x, y = load_breast_cancer(return_X_y=True)
        y = (y == 0).astype(int)
    elif args.data == "wine":
        x, y = load_wine(return_X_y=True)
        y = (y != 0).astype(int)
    elif args.data in ("digits-table", "digits-loo"):
        x_all, y_all = load_digits(return_X_y=True)
    else:
        normal = synthetic("gmm8d").sample(2000, 0).numpy()
        lo, hi = normal.min(0), normal.max(0)
        odd = np.random.default_rng(0).uniform(lo, hi, size=(100, normal.shape[1]))
        x, y = np.concatenate([normal, odd]), np.r_[np.zeros(2000, int), np.ones(100, int)]
        if args.data == "gmm8d-box-int":  # integer features on a coarse lattice: 2 steps per normal std
            x = np.round(x / (0.5 * normal.std(0)))
    for seed in args.digits:  # tabular: --digits are the split seeds (digits-table: the normal digit too)
        if args.data == "digits-loo":  # normal: nine classes (multi-modal, ~1,600 rows); anomalies: the tenth
            keep = np.random.default_rng(seed).permutation(np.flatnonzero(y_all == seed))[: (y_all != seed).sum() // 9]
            x = np.concatenate([x_all[y_all != seed], x_all[keep]])
            y = np.r_[np.zeros((y_all != seed).sum(), int), np.ones(len(keep), int)]
        elif args.data == "digits-table":
            rng = np.random.default_rng(seed)
            normal, other = x_all[y_all == seed], x_all[y_all != seed]
            odd = other[rng.choice(len(other), len(normal) // 2, replace=False)]
            x, y = np.concatenate([normal, odd]), np.r_[np.zeros(len(normal), int), np.ones(len(odd), int)]
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
        x_fit = x_tr[y_tr == 0].astype(np.float32)
        det = DiffusionDetector(seed=seed, **({"steps": args.steps} if args.steps_given else {}),
                                **args.detector_args).fit(x_fit)
        sd = float(det.model_.denoiser.sigma_data)
        levels = [f * sd for f in args.levels]
        raw = {}
        for name, rows in (("test", x_te.astype(np.float32)), ("ref", x_fit)):
            res = anomaly_scores(det.model_, rows, score="recon", levels=levels, draws=args.draws or 4,
                                 seed=seed + 1 if name == "ref" else seed)
            raw[name] = (res.per_level * res.calibration.scale).numpy()
        iforest = -IsolationForest(random_state=seed).fit(x_fit).score_samples(x_te)
        np.savez(args.out / f"errors_{seed}.npz", test=raw["test"], ref=raw["ref"], labels=y_te,
                 factors=np.array(args.levels), iforest=iforest)
        per_level = [auroc_auprc(raw["test"][:, k], y_te)[0] for k in range(len(levels))]
        print(f"{args.data} seed {seed}: per-level AUROC " + " ".join(f"{f:g}:{a:.3f}" for f, a in
              zip(args.levels, per_level)) + f" | IF {auroc_auprc(iforest, y_te)[0]:.3f}", flush=True)


def report(dirs: list[Path]) -> None:
    """AUROC of IsolationForest and of the mean / geometric mean / profile of the default five levels, per split."""
    from difflab.anomaly import LEVEL_FACTORS, Calibration, auroc_auprc

    for folder in dirs:
        rows = {"IsolationForest": [], "mean of 5 levels": [], "geometric of 5 levels": [], "profile of 5 levels": []}
        names = []
        for path in sorted(folder.glob("errors_*.npz")):
            d = np.load(path)
            keep = [list(np.round(d["factors"], 6)).index(f) for f in LEVEL_FACTORS]
            test, ref = torch.from_numpy(d["test"][:, keep]), torch.from_numpy(d["ref"][:, keep])
            cal = Calibration.fit(LEVEL_FACTORS, ref)
            normalised = test.double() / cal.scale
            rows["IsolationForest"].append(auroc_auprc(d["iforest"], d["labels"])[0])
            combined = {"mean": normalised.mean(1), "geometric": normalised.log().mean(1),  # log of the geometric mean
                        "profile": cal.profile_distance(normalised)}
            for combine, score in combined.items():
                rows[f"{combine} of 5 levels"].append(auroc_auprc(score, d["labels"])[0])
            names.append(path.stem.split("_")[-1])
        print(f"{folder} ({', '.join(names)}):")
        for name, values in rows.items():
            print(f"  {name:22s} mean {np.mean(values):.4f}  " + " / ".join(f"{v:.3f}" for v in values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=("digits", "mnist-train", *TABULAR), default="digits")
    ap.add_argument("--npz", type=Path, default=Path("bench/out/mnist_train7000.npz"),
                    help="mnist-train: the training split as an .npz with x (N, 28, 28) and y (N,)")
    ap.add_argument("--n-other", type=int, default=1000, help="mnist-train: other-class digits in the dev test set")
    ap.add_argument("--out", type=Path, default=Path("bench/out/anomaly_dev"))
    ap.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: 600; tabular: the detector's)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--draws", type=int, default=None, help="noise draws per level (default: images 2, tables 4)")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--detector-args", nargs="+", default=[], metavar="KEY=VALUE",
                    help="tables: extra DiffusionDetector keyword arguments, e.g. dequantize=integers")
    ap.add_argument("--report", type=Path, nargs="+", default=None,
                    help="only compare the combinations on the errors saved in these folders")
    args = ap.parse_args()
    if args.report:
        return report(args.report)
    args.steps_given = args.steps is not None
    args.detector_args = dict(item.split("=", 1) for item in args.detector_args)
    args.steps = args.steps or 600
    torch.set_num_threads(args.threads)

    from sklearn.datasets import load_digits
    from sklearn.ensemble import IsolationForest
    from sklearn.model_selection import train_test_split

    import difflab
    from difflab.anomaly import anomaly_scores, auroc_auprc
    from difflab.config import ExperimentCfg, config_from_dict
    from difflab.data import Dataset
    from difflab.training import train

    args.out.mkdir(parents=True, exist_ok=True)
    if args.data in TABULAR:
        return tabular(args)
    if args.data == "digits":
        digits = load_digits()
        x, y, value_range = digits.images.astype(np.float32)[:, None], digits.target, (0.0, 16.0)
    else:
        arrays = np.load(args.npz)
        x, y, value_range = arrays["x"].astype(np.float32)[:, None], arrays["y"].astype(int), (0.0, 255.0)
    i_tr, i_te = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=0)
    args.out.mkdir(parents=True, exist_ok=True)
    for d in args.digits:
        path = args.out / f"errors_{d}.npz"
        tr = i_tr[y[i_tr] == d]
        te = i_te
        if args.data == "mnist-train":  # the held-in half of class d and n_other digits of the other classes
            other = i_te[y[i_te] != d]
            te = np.sort(np.concatenate([i_te[y[i_te] == d],
                                         np.random.default_rng(d).permutation(other)[:args.n_other]]))
        run = args.out / f"run_{d}"
        if not (run / "config.json").exists():
            cfg = config_from_dict({"train": {"steps": args.steps, "batch_size": args.batch_size, "seed": d,
                                              "checkpoint_every": args.steps, "sample_grid": 0, "device": "cpu",
                                              "warmup": min(100, args.steps // 10)}}, ExperimentCfg())
            data = Dataset(x=torch.from_numpy(x[tr]), labels=None, kind="image", name=f"digits-{d}",
                           value_range=value_range)
            t = time.perf_counter()
            train(cfg, data, run, progress=False)
            print(f"digit {d}: trained {args.steps} steps on {len(tr)} images in {time.perf_counter() - t:.0f}s",
                  flush=True)
        model = difflab.load(run)
        sd = float(model.denoiser.sigma_data)
        levels = [f * sd for f in args.levels]
        raw = {}
        for name, idx in (("test", te), ("ref", tr)):
            res = anomaly_scores(model, torch.from_numpy(x[idx]), score="recon", levels=levels, draws=args.draws or 2,
                                 seed=1 if name == "ref" else 0)
            raw[name] = (res.per_level * res.calibration.scale).numpy()  # (N, L) raw mean squared errors
        forest = IsolationForest(random_state=0).fit(x[tr].reshape(len(tr), -1))
        iforest = -forest.score_samples(x[te].reshape(len(te), -1))
        labels = (y[te] != d).astype(int)
        np.savez(path, test=raw["test"], ref=raw["ref"], labels=labels,
                 factors=np.array(args.levels), iforest=iforest)
        per_level = [auroc_auprc(raw["test"][:, k], labels)[0] for k in range(len(levels))]
        print(f"digit {d}: per-level AUROC " + " ".join(f"{f:g}:{a:.3f}" for f, a in zip(args.levels, per_level))
              + f" | IF {auroc_auprc(iforest, labels)[0]:.3f}", flush=True)
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))


if __name__ == "__main__":
    main()
