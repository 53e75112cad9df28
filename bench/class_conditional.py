"""Class-conditional MNIST with classifier-free guidance: how often a sample is classified as the class asked for.

Trains a class-conditional difflab model with ``difflab train --class-conditional`` (default config, a
wall-clock budget, optionally a step count so the cosine learning rate decays within it) on the 7,000-digit
training split of the MNIST subset in ../shared/data (the split of bench/tasks.py, written to an .npz with
its labels), samples ``--n`` digits cycling through the classes at each guidance weight, and classifies them
with two independent classifiers trained on the same 7,000 digits, a scikit-learn MLP and the small CNN of
bench/tasks.py (their accuracies on the other 1,000 are printed as the ceilings). Skips cleanly when
../shared/data is absent.

    python bench/class_conditional.py [--minutes 10] [--train-steps N] [--n 500] [--guidance 1 3] \
        [--run bench/out/mnist_cond]
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def read_idx(path: Path, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--steps", type=int, default=18, help="Heun steps (2 x steps - 1 calls, x2 with guidance)")
    ap.add_argument("--run", default="bench/out/mnist_cond")
    ap.add_argument("--batch-size", type=int, default=None, help="train.batch_size (default: difflab's, 128)")
    ap.add_argument("--train-steps", type=int, default=100000,
                    help="train.steps (the cosine schedule's length; the budget usually stops the run first)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to difflab train")
    ap.add_argument("--grid", action="store_true", help="write RUN/guided-w<W>.png: 100 samples, one class per column")
    a = ap.parse_args(argv)
    images = MNIST / "train-images-idx3-ubyte.gz"
    if not images.exists():
        print(f"skipped: {images} not found")
        return 0
    import torch
    from sklearn.neural_network import MLPClassifier

    import difflab

    x = read_idx(images, 16).reshape(-1, 784).astype(np.float32) / 255
    y = read_idx(MNIST / "train-labels-idx1-ubyte.gz", 8)
    perm = np.random.default_rng(0).permutation(len(x))
    clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=60, random_state=0).fit(x[perm[:7000]], y[perm[:7000]])
    ceiling = clf.score(x[perm[7000:]], y[perm[7000:]])
    run = Path(a.run)
    t0 = time.perf_counter()
    if not (run / "checkpoints").is_dir():
        data = run.parent / "mnist_train7000.npz"  # the classifier's 7,000 digits, with their labels
        run.parent.mkdir(parents=True, exist_ok=True)
        np.savez(data, x=(x[perm[:7000]] * 255).round().astype(np.uint8).reshape(-1, 28, 28), y=y[perm[:7000]])
        cmd = [sys.executable, "-m", "difflab", "train", "--data", str(data), "--out", str(run),
               "--class-conditional", "--minutes", str(a.minutes), "--steps", str(a.train_steps), "--quiet"]
        cmd += ["--batch-size", str(a.batch_size)] if a.batch_size else []
        cmd += [arg for kv in a.set for arg in ("--set", kv)]
        subprocess.run(cmd, check=True)
    train_s = time.perf_counter() - t0
    model = difflab.load(run)
    steps_done = int((run / "checkpoints" / "LATEST").read_text().strip().split("-")[1])
    print(f"classifier accuracy on 1,000 held-out real digits: {ceiling:.3f}")
    changed = ([f"batch {a.batch_size}"] if a.batch_size else []) + a.set + [f"train.steps {model.cfg.train.steps}"]
    print(f"model: {run} (class-conditional, default config except {', '.join(changed)}, "
          f"{steps_done} steps, {train_s:.0f} s this call)")
    # A second, stronger judge: the small CNN of bench/tasks.py (also the time-to-quality feature network),
    # trained on the same 7,000 digits.
    from tasks import classify, train_classifier

    cnn = train_classifier(x[perm[:7000]].reshape(-1, 28, 28), y[perm[:7000]].astype(np.int64),
                           run.parent / "classifier-cnn-e4.pt", epochs=4)
    cnn_ceiling = float((classify(cnn, x[perm[7000:]].reshape(-1, 28, 28)) == y[perm[7000:]]).mean())
    print(f"CNN classifier accuracy on the same 1,000 held-out real digits: {cnn_ceiling:.3f}")
    print("| guidance | recognised (MLP) | recognised (CNN) | per class, CNN (0-9) | sampling s |")
    print("|---|---|---|---|---|")
    wanted = torch.arange(a.n) % 10
    for w in a.guidance:
        t = time.perf_counter()
        s = model.sample(a.n, class_labels=wanted, guidance=w, steps=a.steps, seed=0)
        x01 = s.reshape(a.n, -1).clamp(0, 255).numpy() / 255
        hit = clf.predict(x01) == wanted.numpy()
        hit_cnn = classify(cnn, x01.reshape(-1, 28, 28)) == wanted.numpy()
        per = " ".join(f"{hit_cnn[wanted.numpy() == k].mean():.2f}" for k in range(10))
        print(f"| {w:g} | {hit.mean():.3f} | {hit_cnn.mean():.3f} | {per} | {time.perf_counter() - t:.0f} |")
        if a.grid:
            from difflab.data import save_image_grid

            save_image_grid(s[:100].clamp(0, 255).to(torch.uint8).numpy().transpose(0, 2, 3, 1),
                            run / f"guided-w{w:g}.png", nrow=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
