"""Score digit samples the way the acceptance check does: an independent classifier, trained on
scikit-learn's digits, must label >= 90% of 500 samples with confidence >= 0.9, every class >= 5%.

    python bench/digits_quality.py RUN_DIR [--n 500] [--sampler heun] [--steps 18]
    python bench/digits_quality.py samples.npz

Two independent classifiers are used (an MLP and an RBF SVM, both trained on all 1797 digits, pixel
values 0..16), and for calibration the same figures for 540 held-out real digits (classifiers trained on the
other 70%).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC

warnings.filterwarnings("ignore")


def classifiers(X, y):
    return {
        "mlp": MLPClassifier((256,), max_iter=2000, random_state=0).fit(X / 16, y),
        "svc": SVC(probability=True, random_state=0).fit(X / 16, y),
    }


def report(name, clfs, images):
    flat = images.reshape(len(images), -1).astype(np.float64) / 16
    for cname, clf in clfs.items():
        p = clf.predict_proba(flat)
        conf = (p.max(1) >= 0.9).mean()
        counts = np.bincount(p.argmax(1), minlength=10) / len(p)
        ok = conf >= 0.9 and counts.min() >= 0.05
        print(f"{name:>10} {cname}: confident(>=0.9) {conf:.3f}  min class share {counts.min():.3f}  "
              f"shares {np.round(counts, 3).tolist()}  {'PASS' if ok else 'FAIL'}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="run folder or .npz with 'images'")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--sampler", default="heun")
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--guidance", type=float, nargs="*", default=[None], help="guidance weights to try")
    a = ap.parse_args(argv)
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    report("real(30%)", classifiers(Xtr, ytr), Xte)
    src = Path(a.source)
    clfs = classifiers(X, y)
    if src.suffix == ".npz":
        report("samples", clfs, np.load(src)["images"])
        return 0
    import difflab

    model = difflab.load(src)
    for w in a.guidance:
        images = model.sample(a.n, sampler=a.sampler, steps=a.steps, seed=a.seed, guidance=w)
        report(f"w={w}", clfs, images.round().clamp(0, 16).numpy())
    return 0


if __name__ == "__main__":
    sys.exit(main())
