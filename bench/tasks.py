"""difflab's denoising, inpainting and anomaly detection against classical baselines, on the same data.

    .venv-bench/bin/python bench/tasks.py [--quick] [--parts denoise inpaint anomaly adbench] [--minutes M]

(``bash bench/setup_bench.sh`` builds .venv-bench: difflab plus bm3d, scikit-image, OpenCV, scikit-learn.)

Data: the 8000 MNIST digits of ../shared/data/mnist (28x28), or scikit-learn's ``digits`` (8x8) where that
is absent or with ``--quick``. A fixed permutation (seed 0) splits them by index into a training part (all
but the last 1000; 7000 for MNIST) and a held-out test part; nothing is ever evaluated on training images.

* One unconditional difflab model is trained on the training split with ``difflab train`` defaults except
  a wall-clock budget (``--minutes``), or reused from ``bench/out/mnist`` (``bench/out/tasks_quick/model``
  with ``--quick``) if that run exists, or taken from ``--model-run`` (a run trained on the same split).
* denoise: Gaussian noise of std 0.1 / 0.2 / 0.4 of the [0, 1] range, the noisy input not clipped. difflab
  ``denoise`` with method "tweedie" (known sigma and sigma="auto") and "posterior" (samples=8) against BM3D
  (Dabov et al. 2007; ``bm3d.bm3d(noisy, sigma_psd=sigma)``) and non-local means (Buades et al. 2005;
  scikit-image, fast mode; h, patch size and search distance picked per sigma on training-split images).
  PSNR on [0, 1] (mean over images) and wall time.
* inpaint: centre square (half the side), right half, and 80% of the pixels missing at random (a fresh
  mask per image). difflab RePaint (Lugmayr et al. 2022) and DDNM (Wang et al. 2023), one fill each and the
  mean of ``--inpaint-samples`` fills (``inpaint(..., samples=K)``, the posterior-mean estimate), and PiGDM
  (Song et al. 2023, the library's default; one fill), against biharmonic
  inpainting (Damelin & Hoang 2018, scikit-image) and Telea's fast marching (Telea 2004, OpenCV, radius 3).
  PSNR on the filled pixels, and the accuracy of an independent CNN classifier (trained here on the
  training split, not a diffusion model) on the inpainted images against the true labels.
* anomaly (bench/tasks_anomaly.py): one-class MNIST and the ADBench CSV sets.

Each part writes bench/out/tasks*/<part>.json; the report (bench/results_tasks.md, or the out folder's
results_tasks.md with --quick) is rebuilt from every part's json after each run, so parts can be run
separately. Figures: docs/inpainting_examples.png, docs/denoising_examples.png (full runs only).
"""

# ruff: noqa: B023  (the per-method lambdas are called inside the loop iteration that defines them)

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
PARTS = ("denoise", "inpaint", "anomaly", "adbench")
SIGMAS = (0.1, 0.2, 0.4)


# --------------------------------------------------------------------------------------------------
# Data, model, classifier
# --------------------------------------------------------------------------------------------------


def load_digits_data(quick: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """(N, H, W) uint8 images (0 = background) and (N,) labels: MNIST from ../shared, else sklearn digits."""
    if not quick and (MNIST / "train-images-idx3-ubyte.gz").exists():
        with gzip.open(MNIST / "train-images-idx3-ubyte.gz") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16)
        with gzip.open(MNIST / "train-labels-idx1-ubyte.gz") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)
        return x.reshape(-1, 28, 28).copy(), y.astype(np.int64), "mnist"
    from sklearn.datasets import load_digits

    d = load_digits()  # 0..16 grey levels -> 8-bit
    return np.round(d.images * (255 / 16)).astype(np.uint8), d.target.astype(np.int64), "digits"


def split(n: int, n_test: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train / held-out test indices: a fixed permutation, the last ``n_test`` are the test part."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n_test, n // 4)
    return np.sort(perm[:-n_test]), np.sort(perm[-n_test:])


def train_run(data_file: Path, run: Path, minutes: float, extra: list[str], log: Path, threads: int = 1) -> dict:
    """``difflab train`` (CLI) into ``run`` unless it already has a checkpoint; returns steps / minutes."""
    if not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir()):
        cmd = [sys.executable, "-m", "difflab", "train", "--data", str(data_file), "--out", str(run),
               "--minutes", str(minutes), "--quiet", *extra]
        print("$", shlex.join(cmd), flush=True)
        with open(log, "a") as f:
            env = os.environ | {"OMP_NUM_THREADS": str(threads)}
            subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env)
    return run_info(run)


def run_info(run: Path) -> dict:
    """Steps reached and training minutes, from the run's metrics.csv; preset and batch from config.json.

    ``elapsed_s`` counts from the start of each ``difflab train`` call, so a resumed run's minutes are the
    sum of the last ``elapsed_s`` of every call (a drop in ``elapsed_s`` starts a new call)."""
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    last = dict(zip(rows[0].split(","), rows[-1].split(","))) if len(rows) > 1 else {}
    col = rows[0].split(",").index("elapsed_s") if len(rows) > 1 else 0
    elapsed = [float(r.split(",")[col]) for r in rows[1:]]
    seconds = sum(a for a, b in zip(elapsed, elapsed[1:] + [0.0]) if b < a)
    cfg = json.loads((run / "config.json").read_text())
    c = cfg.get("config", cfg)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir()) if (run / "checkpoints").exists() else []
    return {"run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
            "steps": int(last.get("step", 0)), "minutes": round(seconds / 60, 2),
            "backbone": c["model"]["backbone"], "preset": c["model"]["preset"],
            "resolved": cfg.get("resolved", {}), "batch_size": c["train"]["batch_size"],
            "max_minutes": c["train"]["max_minutes"], "checkpoint": ckpts[-1] if ckpts else None}


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-image PSNR on the [0, 1] range, over all pixels or over ``mask`` (True = counted)."""
    err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is None:
        mse = err.reshape(len(a), -1).mean(1)
    else:
        m = mask.reshape(len(a), -1)
        mse = (err.reshape(len(a), -1) * m).sum(1) / m.sum(1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))


class SmallCNN(torch.nn.Module):
    """Independent digit classifier for the class-preservation check (LeNet-like, any image size >= 8)."""

    def __init__(self):
        super().__init__()
        c = torch.nn
        self.net = c.Sequential(
            c.Conv2d(1, 32, 3, padding=1), c.ReLU(), c.Conv2d(32, 32, 3, padding=1), c.ReLU(), c.MaxPool2d(2),
            c.Conv2d(32, 64, 3, padding=1), c.ReLU(), c.AdaptiveAvgPool2d(4), c.Flatten(),
            c.Dropout(0.3), c.Linear(64 * 16, 128), c.ReLU(), c.Linear(128, 10))

    def forward(self, x):
        return self.net(x)


def train_classifier(x01: np.ndarray, labels: np.ndarray, path: Path, epochs: int) -> SmallCNN:
    """Train (or reload from ``path``) the CNN on [0, 1] images with Adam, random 1-pixel shifts."""
    net = SmallCNN()
    if path.exists():
        net.load_state_dict(torch.load(path))
        return net.eval()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.as_tensor(x01, dtype=torch.float32)[:, None]
    y = torch.as_tensor(labels)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            xb = x[idx]
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
            xb = torch.roll(xb, (dx, dy), (2, 3))
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(net.state_dict(), path)
    return net.eval()


@torch.no_grad()
def classify(net: SmallCNN, x01: np.ndarray) -> np.ndarray:
    x = torch.as_tensor(np.asarray(x01, dtype=np.float32))[:, None]
    return torch.cat([net(b).argmax(1) for b in x.split(500)]).numpy()


class Context:
    """Everything the parts share: data, split, model, classifier, options."""

    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.out = ROOT / ("bench/out/tasks_quick" if args.quick else "bench/out/tasks")
        self.out.mkdir(parents=True, exist_ok=True)
        self.images, self.labels, self.dataset = load_digits_data(args.quick)
        self.train_idx, self.test_idx = split(len(self.images), n_test=1000)
        self.x01 = self.images.astype(np.float64) / 255.0
        self._model = None
        self._clf = None

    @property
    def run_dir(self) -> Path:
        if self.args.model_run:
            return Path(self.args.model_run)
        return self.out / "model" if self.quick else ROOT / "bench/out/mnist"

    def model(self):
        if self._model is None:
            import difflab

            data = self.out / f"{self.dataset}_train.npz"
            if not data.exists():
                np.savez(data, x=self.images[self.train_idx], y=self.labels[self.train_idx])
            extra = ["--steps", "100", "--preset", "tiny", "--batch-size", "32"] if self.quick else list(self.args.train_args)
            self.model_info = train_run(data, self.run_dir, self.args.minutes, extra, self.out / "train.log",
                                        self.args.threads)
            self._model = difflab.load(self.run_dir)
            lo, hi = self._model.normalizer.value_range
            self.lo, self.scale = float(lo), float(hi - lo)
        return self._model

    def to_data(self, x01) -> torch.Tensor:
        """[0, 1] images (N, H, W) -> the model's data units (N, 1, H, W)."""
        return torch.as_tensor(self.lo + np.asarray(x01) * self.scale, dtype=torch.float32)[:, None]

    def from_data(self, x: torch.Tensor) -> np.ndarray:
        return ((x[:, 0].double().numpy() - self.lo) / self.scale)

    def classifier(self) -> SmallCNN:
        if self._clf is None:
            t = time.perf_counter()
            tr = self.train_idx
            self._clf = train_classifier(self.x01[tr], self.labels[tr], self.out / "classifier.pt",
                                         epochs=3 if self.quick else 4)
            te = self.test_idx
            self.clf_acc = float((classify(self._clf, self.x01[te]) == self.labels[te]).mean())
            print(f"classifier: clean held-out accuracy {self.clf_acc:.4f} ({time.perf_counter() - t:.0f}s)",
                  flush=True)
        return self._clf

    def save(self, part: str, result: dict) -> None:
        result["command"] = "python bench/tasks.py " + shlex.join(sys.argv[1:])
        result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        (self.out / f"{part}.json").write_text(json.dumps(result, indent=1))


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


# --------------------------------------------------------------------------------------------------
# Denoising
# --------------------------------------------------------------------------------------------------


def nlm(noisy: np.ndarray, sigma: float, h_factor: float, patch: int, dist: int) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return np.stack([denoise_nl_means(im, h=h_factor * sigma, sigma=sigma, fast_mode=True, patch_size=patch,
                                      patch_distance=dist) for im in noisy])


def run_bm3d(noisy: np.ndarray, sigma: float, tile: int = 5) -> np.ndarray:
    """``bm3d.bm3d(mosaic, sigma_psd=sigma)`` on mosaics of tile x tile images, cut back into images.

    bm3d 4.0.3 costs ~4 s per call here whatever the size (28x28: 4.2 s, 140x140: 9.8 s), and segfaults on
    8x8 inputs, so the images are tiled edge to edge (the last mosaic is filled up with repeats). Block
    matching may then also pick patches of neighbouring digits, which can only help BM3D.
    """
    import bm3d

    n, h, w = noisy.shape
    per = tile * tile
    pad = (-n) % per
    x = np.concatenate([noisy, noisy[:pad]]) if pad else noisy
    out = []
    for b in range(0, len(x), per):
        mos = x[b : b + per].reshape(tile, tile, h, w).transpose(0, 2, 1, 3).reshape(tile * h, tile * w)
        den = np.asarray(bm3d.bm3d(mos, sigma_psd=sigma)).reshape(tile, h, tile, w).transpose(0, 2, 1, 3)
        out.append(den.reshape(per, h, w))
    return np.concatenate(out)[:n]


def tune_nlm(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> tuple[float, int, int]:
    """Grid over h / sigma, patch size and search distance, scored on training-split images."""
    noisy = clean + sigma * rng.standard_normal(clean.shape)
    small = clean.shape[-1] <= 8
    grid = [(h, p, d) for h in (0.6, 0.8, 1.0) for p in ((3,) if small else (3, 5)) for d in ((2, 3) if small else (3, 6))]
    best = max(grid, key=lambda g: psnr(nlm(noisy, sigma, *g), clean).mean())
    return best


def part_denoise(ctx: Context) -> dict:
    from difflab.tasks.denoise import denoise

    model = ctx.model()
    n = ctx.args.n_eval
    n_sub = min(n, ctx.args.n_costly)
    te = ctx.test_idx[:n]
    clean = ctx.x01[te]
    rng = np.random.default_rng(1)
    rows, examples, bm3d_check = [], {}, None
    for s in SIGMAS:
        noisy = clean + s * rng.standard_normal(clean.shape)  # not clipped
        h, p, d = tune_nlm(ctx.x01[ctx.train_idx[:40]], s, np.random.default_rng(2))
        y = ctx.to_data(noisy)
        methods = {
            "noisy input": lambda: noisy,
            "difflab tweedie (known sigma)": lambda: ctx.from_data(denoise(model, y, s * ctx.scale).x0),
            "BM3D (5x5 mosaics)": lambda: run_bm3d(noisy, s),
            "NLM (tuned)": lambda: nlm(noisy, s, h, p, d),
        }
        costly = {  # on the first n_sub images only
            "difflab tweedie (sigma auto)": lambda: ctx.from_data(denoise(model, y[:n_sub], "auto").x0),
            f"difflab posterior (K=8, {ctx.args.posterior_steps or model.cfg.sample.steps} steps)": lambda: ctx.from_data(
                denoise(model, y[:n_sub], s * ctx.scale, method="posterior", samples=8,
                        steps=ctx.args.posterior_steps).x0),
        }
        outs = {}
        for name, fn in {**methods, **costly}.items():
            out, sec = timed(fn)
            outs[name] = out
            full = name in methods
            ps = psnr(np.asarray(out), clean[: len(out)])
            rows.append({"sigma": s, "method": name, "n": len(out), "psnr": float(ps.mean()),
                         "params": f"h={h} sigma, patch {p}, distance {d}" if name.startswith("NLM") else "",
                         "psnr_sub": float(ps[:n_sub].mean()), "seconds": round(sec, 2),
                         "ms_per_image": round(1000 * sec / len(out), 1)})
            print(f"denoise sigma={s} {name:38s} PSNR {ps.mean():6.2f} (first {n_sub}: {ps[:n_sub].mean():6.2f}) "
                  f"{sec:7.1f}s" + ("" if full else " [subset]"), flush=True)
        if s == 0.2 and not ctx.quick:  # the mosaic shortcut against BM3D on single images, 5 images
            single, sec = timed(lambda: np.stack([run_bm3d(noisy[i : i + 1], s, tile=1)[0] for i in range(5)]))
            ps, pm = psnr(single, clean[:5]).mean(), psnr(outs["BM3D (5x5 mosaics)"][:5], clean[:5]).mean()
            bm3d_check = {"sigma": s, "n": 5, "single": float(ps), "mosaic": float(pm), "seconds": round(sec, 1)}
            print(f"BM3D check: single images {ps:.2f} dB vs mosaic {pm:.2f} dB on 5 images ({sec:.0f}s)")
        examples[s] = {k: np.asarray(v[:4]) for k, v in outs.items()} | {"clean": clean[:4]}
    if not ctx.quick:
        from tasks_figs import denoise_figure

        denoise_figure(examples, ROOT / "docs/denoising_examples.png")
    return {"rows": rows, "n": n, "n_sub": n_sub, "model": ctx.model_info, "bm3d_check": bm3d_check}


# --------------------------------------------------------------------------------------------------
# Inpainting
# --------------------------------------------------------------------------------------------------


def make_masks(kind: str, n: int, hw: int, rng: np.random.Generator, frac: float) -> np.ndarray:
    """(n, hw, hw) bool, True = missing (to fill)."""
    m = np.zeros((n, hw, hw), bool)
    if kind == "centre":
        a = hw // 4
        m[:, a : hw - a, a : hw - a] = True
    elif kind == "right half":
        m[:, :, hw // 2 :] = True
    else:
        m = rng.random((n, hw, hw)) < frac
    return m


def biharmonic(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    return np.stack([inpaint_biharmonic(im, mk) for im, mk in zip(x, m)])


def telea(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    import cv2

    u8 = np.round(x * 255).astype(np.uint8)
    return np.stack([cv2.inpaint(im, mk.astype(np.uint8), 3, cv2.INPAINT_TELEA) for im, mk in zip(u8, m)]) / 255.0


def part_inpaint(ctx: Context) -> dict:
    from difflab.tasks.inpaint import inpaint, nfe

    model = ctx.model()
    clf = ctx.classifier()
    a = ctx.args
    n = a.n_inpaint or a.n_eval
    n_sub = min(n, a.n_costly)
    te = ctx.test_idx[:n]
    clean, labels = ctx.x01[te], ctx.labels[te]
    hw = clean.shape[-1]
    rng = np.random.default_rng(3)
    ddnm = {"method": "ddnm", "steps": a.ddnm_steps}
    pigdm = {"method": "pigdm", "steps": a.pigdm_steps}
    rp = {"method": "repaint", "steps": a.repaint_steps, "jump_length": a.repaint_j, "resamplings": a.repaint_r}
    rp_nfe = nfe("repaint", a.repaint_steps, a.repaint_j, a.repaint_r)
    k_fills = a.inpaint_samples
    rows, examples = [], {}
    for kind in ("centre", "right half", f"random {int(100 * a.random_frac)}%"):
        m = make_masks(kind, n, hw, rng, a.random_frac)
        known = np.where(m, 0.0, clean)

        def fill(count: int, known=known, m=m, **options) -> np.ndarray:
            """difflab's inpainting of the first ``count`` images, back on [0, 1]."""
            return ctx.from_data(inpaint(model, ctx.to_data(known[:count]), m[:count, None], seed=0, **options))

        methods = {
            f"difflab DDNM ({a.ddnm_steps} steps, {a.ddnm_steps} NFE)": (n, lambda: fill(n, **ddnm)),
            f"difflab PiGDM ({a.pigdm_steps} steps, {a.pigdm_steps} NFE + backward)": (n, lambda: fill(n, **pigdm)),
            f"difflab RePaint ({a.repaint_steps} steps, j={a.repaint_j}, r={a.repaint_r}: {rp_nfe} NFE)": (
                n_sub, lambda: fill(n_sub, **rp)),
            f"difflab DDNM mean of {k_fills} ({k_fills * a.ddnm_steps} NFE)": (
                n_sub, lambda: fill(n_sub, samples=k_fills, **ddnm)),
            f"difflab RePaint mean of {k_fills} ({k_fills * rp_nfe} NFE)": (
                n_sub, lambda: fill(n_sub, samples=k_fills, **rp)),
            "biharmonic (scikit-image)": (n, lambda: biharmonic(known, m)),
            "Telea (OpenCV, radius 3)": (n, lambda: telea(known, m)),
            "masked input (zeros)": (n, lambda: known),
        }
        outs = {}
        for name, (k, fn) in methods.items():
            out, sec = timed(fn)
            out = np.clip(np.asarray(out, dtype=np.float64), 0, 1)
            outs[name] = out
            ps = psnr(out, clean[:k], m[:k])
            acc = classify(clf, out) == labels[:k]
            rows.append({"mask": kind, "method": name, "n": k, "psnr": float(ps.mean()),
                         "psnr_sub": float(ps[:n_sub].mean()), "acc": float(acc.mean()),
                         "acc_sub": float(acc[:n_sub].mean()), "seconds": round(sec, 2)})
            print(f"inpaint {kind:10s} {name:52s} PSNR {ps.mean():6.2f} acc {acc.mean():.3f} "
                  f"(first {n_sub}: {ps[:n_sub].mean():6.2f} / {acc[:n_sub].mean():.3f}) {sec:7.1f}s", flush=True)
        examples[kind] = {"outs": {k: v[:3] for k, v in outs.items()}, "mask": m[:3], "clean": clean[:3]}
    if not ctx.quick:
        from tasks_figs import inpaint_figure

        inpaint_figure(examples, ROOT / "docs/inpainting_examples.png")
    clean_acc = float((classify(clf, clean) == labels).mean())
    return {"rows": rows, "n": n, "n_sub": n_sub, "clean_acc": clean_acc,
            "clean_acc_sub": float((classify(clf, clean[:n_sub]) == labels[:n_sub]).mean()),
            "clean_acc_all_test": ctx.clf_acc, "random_frac": a.random_frac, "repaint_nfe": rp_nfe,
            "model": ctx.model_info}


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: sklearn digits, tiny runs, few images")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--minutes", type=float, default=12.0, help="training budget of the MNIST model")
    p.add_argument("--model-run", default=None,
                   help="use this trained run (trained on the same 7000-digit split, e.g. bench/time_to_quality.py's "
                   "bench/out/time_to_quality/difflab/run) instead of training bench/out/mnist")
    p.add_argument("--inpaint-samples", type=int, default=8,
                   help="fills averaged by the 'mean of K' rows of DDNM and RePaint (the posterior-mean estimate)")
    p.add_argument("--train-args", type=shlex.split, default=[],
                   help='extra `difflab train` arguments for the MNIST model, one string: --train-args="--batch-size 32"')
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (also for the training subprocesses); on the shared 2-core box one thread "
                   "trained 12x faster than two (35 vs 2.8 samples/s, load ~6)")
    p.add_argument("--n-eval", type=int, default=200, help="held-out images for denoising / inpainting")
    p.add_argument("--n-costly", type=int, default=200,
                   help="images for the costly methods (posterior, sigma auto, RePaint): the first ones")
    p.add_argument("--n-inpaint", type=int, default=None, help="held-out images for inpainting (default --n-eval)")
    p.add_argument("--posterior-steps", type=int, default=None, help="denoise posterior grid (default: the run's)")
    p.add_argument("--ddnm-steps", type=int, default=100)
    p.add_argument("--pigdm-steps", type=int, default=100)
    p.add_argument("--repaint-steps", type=int, default=100)
    p.add_argument("--repaint-j", type=int, default=10)
    p.add_argument("--repaint-r", type=int, default=5)
    p.add_argument("--random-frac", type=float, default=0.8, help="fraction of pixels missing (random mask)")
    p.add_argument("--oc-digits", type=int, nargs="+", default=[0, 1, 7])
    p.add_argument("--oc-minutes", type=float, default=3.0)
    p.add_argument("--oc-jobs", type=int, default=1, help="one-class models trained at the same time")
    p.add_argument("--oc-scores", nargs="+", default=["recon"], choices=["recon", "elbo", "nll"])
    p.add_argument("--oc-draws", type=int, default=4, help="recon noise draws per level (difflab's default 4)")
    p.add_argument("--oc-train-args", type=shlex.split, default=[],
                   help="extra `difflab train` arguments for the one-class runs, one string")
    p.add_argument("--seeds", type=int, default=3, help="ADBench splits")
    p.add_argument("--ad-scores", nargs="+", default=["nll", "elbo"], choices=["nll", "elbo"])
    p.add_argument("--ad-threads", type=int, default=1,
                   help="torch threads for the ADBench MLP models (1 is faster than 2 on a shared 2-core box)")
    p.add_argument("--ad-sets", nargs="+", default=["breastw", "cardio", "ionosphere", "satellite"])
    args = p.parse_args(argv)
    if args.quick:
        args.n_eval, args.n_costly = min(args.n_eval, 40), min(args.n_costly, 16)
        args.ddnm_steps, args.repaint_steps, args.repaint_j, args.repaint_r = 20, 20, 5, 2
        args.pigdm_steps = 20
        args.oc_digits, args.oc_minutes, args.seeds = args.oc_digits[:2], 0.3, 1
        args.ad_sets = args.ad_sets[:1]
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    ctx = Context(args)
    for part in args.parts:
        t = time.perf_counter()
        if part == "denoise":
            result = part_denoise(ctx)
        elif part == "inpaint":
            result = part_inpaint(ctx)
        else:
            import tasks_anomaly

            result = (tasks_anomaly.part_oneclass if part == "anomaly" else tasks_anomaly.part_adbench)(ctx)
        result["part_seconds"] = round(time.perf_counter() - t, 1)
        result["dataset"] = ctx.dataset
        ctx.save(part, result)
        from tasks_report import write_report

        write_report(ctx.out, ctx.out / "results_tasks.md" if ctx.quick else ROOT / "bench/results_tasks.md")
        print(f"== {part} done in {time.perf_counter() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
