"""Anomaly parts of bench/tasks.py: one-class MNIST and the ADBench CSV sets, difflab against scikit-learn.

* One-class MNIST: for each digit d of ``--oc-digits``, a difflab model is trained (``difflab train``, a
  short wall-clock budget ``--oc-minutes``) on the training-split images of class d only; the 1000 held-out
  digits of all classes are scored (anomaly = any other class). difflab ``anomaly_scores`` ("recon",
  calibrated with 256 of the class's training images as ``reference``, so its default combination of the
  levels is the error profile; the row "mean of levels" combines the same errors by their mean; optionally
  "elbo") against
  IsolationForest (Liu et al. 2008), LocalOutlierFactor(novelty=True) (Breunig et al. 2000) and OneClassSVM
  (Schoelkopf et al. 2001) on flattened [0, 1] pixels, fitted on the same images. AUROC per digit and mean.
* ADBench (Han et al. 2022) CSVs in ../shared/data/adbench: a stratified 70 / 30 split per seed; SEMI-
  SUPERVISED setting: every method is fitted on the NORMAL rows of the 70% part only (labels of the training
  part are used to drop its anomalies), and all 30% test rows are scored. difflab ``DiffusionDetector``
  (default settings: recon score, levels combined by their mean), the same errors combined by the profile
  (``combine="profile"``), and ``anomaly_scores`` with "nll" / "elbo" on the detector's model;
  IsolationForest on raw features, LOF(novelty=True) and OneClassSVM on features standardised with the
  training rows' mean / std. scikit-learn defaults otherwise. AUROC and AUPRC on the test rows.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ADBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "adbench"


def baselines(x_fit: np.ndarray, x_test: np.ndarray, seed: int, standardise: bool) -> dict[str, tuple]:
    """IsolationForest / LOF(novelty) / OCSVM anomaly scores (higher = more anomalous) and seconds."""
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.svm import OneClassSVM

    if standardise:
        mu, sd = x_fit.mean(0), x_fit.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        zf, zt = (x_fit - mu) / sd, (x_test - mu) / sd
    else:
        zf, zt = x_fit, x_test
    out = {}
    for name, est, a, b in (("IsolationForest", IsolationForest(random_state=seed), x_fit, x_test),
                            ("LOF (novelty)", LocalOutlierFactor(novelty=True), zf, zt),
                            ("OCSVM", OneClassSVM(), zf, zt)):
        t = time.perf_counter()
        est.fit(a)
        out[name] = (-est.score_samples(b), time.perf_counter() - t)
    return out


def part_oneclass(ctx) -> dict:
    from tasks import train_run

    import difflab
    from difflab.anomaly import anomaly_scores, auroc_auprc

    a = ctx.args
    te = ctx.test_idx
    x_test01 = ctx.x01[te]
    rows, paths = [], {}
    extra = ["--steps", "30", "--preset", "tiny", "--batch-size", "32"] if ctx.quick else list(a.oc_train_args)
    for d in a.oc_digits:
        data = ctx.out / f"oc_{d}.npz"
        if not data.exists():
            np.savez(data, x=ctx.images[ctx.train_idx[ctx.labels[ctx.train_idx] == d]])
        paths[d] = (data, ctx.out / f"oc_{d}" if ctx.quick else ctx.out.parent / f"oc_{d}")
    # Every digit's model first, --oc-jobs at a time (each with --threads threads), then the scoring.
    with ThreadPoolExecutor(max_workers=max(1, a.oc_jobs)) as pool:
        done = {d: pool.submit(train_run, data, run, a.oc_minutes, extra, ctx.out / f"train_oc_{d}.log", a.threads)
                for d, (data, run) in paths.items()}
    runs = {d: f.result() for d, f in done.items()}
    for d in a.oc_digits:
        tr = ctx.train_idx[ctx.labels[ctx.train_idx] == d]
        model = difflab.load(paths[d][1])
        lo, hi = (float(v) for v in model.normalizer.value_range)

        def to_data(x01, lo=lo, hi=hi):
            return torch.as_tensor(lo + x01 * (hi - lo), dtype=torch.float32)[:, None]

        y = (ctx.labels[te] != d).astype(int)
        scores = {}
        for s in a.oc_scores:
            t = time.perf_counter()
            kw = {"reference": to_data(ctx.x01[tr[:256]]), "draws": a.oc_draws} if s == "recon" else {}
            if s == "elbo":
                kw["draws"] = 16
            res = anomaly_scores(model, to_data(x_test01), score=s, **kw)
            sec = time.perf_counter() - t
            scores[f"difflab {s}"] = (res.scores.numpy(), sec)
            if s == "recon":  # the same errors combined by their plain mean instead of the default profile
                scores["difflab recon (mean of levels)"] = (res.per_level.mean(1).numpy(), sec)
        flat = ctx.x01[tr].reshape(len(tr), -1)
        scores |= baselines(flat, x_test01.reshape(len(te), -1), seed=0, standardise=False)
        for name, (sc, sec) in scores.items():
            auroc, auprc = auroc_auprc(sc, y)
            rows.append({"digit": d, "method": name, "auroc": float(auroc), "auprc": float(auprc),
                         "seconds": round(sec, 1), "n_train": len(tr)})
            print(f"one-class digit {d} {name:18s} AUROC {auroc:.4f} AUPRC {auprc:.4f} ({sec:.1f}s)", flush=True)
    return {"rows": rows, "runs": {str(k): v for k, v in runs.items()}, "n_test": len(te), "draws": a.oc_draws}


def load_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    header = path.read_text().split("\n", 1)[0].split(",")
    arr = np.loadtxt(path, delimiter=",", skiprows=1)
    j = header.index("label")
    return np.delete(arr, j, axis=1), arr[:, j].astype(int)


def part_adbench(ctx) -> dict:
    from sklearn.model_selection import train_test_split

    from difflab.anomaly import DiffusionDetector, anomaly_scores, auroc_auprc

    a = ctx.args
    torch.set_num_threads(a.ad_threads)
    rows = []
    for name in a.ad_sets:
        x, y = load_csv(ADBENCH / f"{name}.csv")
        for seed in range(a.seeds):
            x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
            x_fit = x_tr[y_tr == 0]
            scores = {}
            t = time.perf_counter()
            det = DiffusionDetector(seed=seed, **({"steps": 60} if ctx.quick else {})).fit(x_fit)
            fit_s = time.perf_counter() - t
            t = time.perf_counter()
            scores["difflab DiffusionDetector (recon)"] = (-det.score_samples(x_te), fit_s + time.perf_counter() - t)
            t = time.perf_counter()
            res = anomaly_scores(det.model_, x_te, score="recon", calibration=det.calibration_, combine="profile",
                                 seed=seed)
            scores["difflab recon (profile)"] = (res.scores.numpy(), time.perf_counter() - t)
            for s in a.ad_scores:
                t = time.perf_counter()
                res = anomaly_scores(det.model_, x_te, score=s, seed=seed)
                scores[f"difflab {s}"] = (res.scores.numpy(), time.perf_counter() - t)
            scores |= baselines(x_fit, x_te, seed=seed, standardise=True)
            for meth, (sc, sec) in scores.items():
                auroc, auprc = auroc_auprc(sc, y_te)
                rows.append({"set": name, "seed": seed, "method": meth, "auroc": float(auroc), "auprc": float(auprc),
                             "seconds": round(sec, 2), "n_fit": len(x_fit), "n_test": len(x_te),
                             "anomalies_test": int(y_te.sum())})
                print(f"adbench {name} seed {seed} {meth:34s} AUROC {auroc:.4f} AUPRC {auprc:.4f} ({sec:.1f}s)",
                      flush=True)
    torch.set_num_threads(a.threads)
    return {"rows": rows, "seeds": a.seeds, "threads": a.ad_threads,
            "setting": "semi-supervised: fit on the normal rows of a stratified 70% split, score the 30% rest"}
