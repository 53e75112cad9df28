"""Development study for inpainting settings, on MNIST *training*-split digits the benchmark never scores.

bench/tasks.py scores inpainting on 100 held-out digits; the settings it runs are chosen here, on digits
of the 7,000-digit training split instead (``--n`` of them, a fixed draw), so the held-out check stays
honest. The model saw these digits in training, so the absolute numbers are optimistic; only the ranking of
settings is used. Each ``--config`` is a comma list of ``inpaint`` keyword options (method, steps, eta,
jump_length, resamplings, samples); each is run on the same digits and masks, and PSNR on the filled
pixels and the independent CNN's class accuracy are printed, with biharmonic on the same masks.

    .venv-bench/bin/python bench/inpaint_dev.py --model-run bench/out/mnist_uncond --mask random \
        --config method=ddnm,steps=100 method=ddnm,steps=100,resamplings=3,jump_length=5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tasks


def parse_config(text: str) -> dict:
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--config: expected key=value, got {item!r}")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-run", required=True)
    p.add_argument("--mask", default="random", choices=["centre", "right half", "random"])
    p.add_argument("--random-frac", type=float, default=0.8)
    p.add_argument("--n", type=int, default=100, help="training-split digits")
    p.add_argument("--seed", type=int, default=0, help="fill seed")
    p.add_argument("--config", nargs="+", type=parse_config, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="append one JSON line per config here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from difflab.tasks.inpaint import inpaint

    ctx = tasks.Context(argparse.Namespace(quick=False, model_run=a.model_run, minutes=0, train_args=[],
                                           threads=a.threads))
    model, clf = ctx.model(), ctx.classifier()
    dev = np.random.default_rng(12345).choice(ctx.train_idx, a.n, replace=False)
    clean, labels = ctx.x01[dev], ctx.labels[dev]
    m = tasks.make_masks(a.mask, a.n, clean.shape[-1], np.random.default_rng(4), a.random_frac)
    known = np.where(m, 0.0, clean)
    print(f"dev: {a.n} training-split digits, mask {a.mask}; clean accuracy "
          f"{(tasks.classify(clf, clean) == labels).mean():.3f}", flush=True)
    bh = tasks.biharmonic(known, m)
    rows = [("biharmonic", bh, 0.0)]
    for cfg in a.config:
        t = time.perf_counter()
        out = ctx.from_data(inpaint(model, ctx.to_data(known), m[:, None], seed=a.seed, **cfg))
        rows.append((",".join(f"{k}={v}" for k, v in cfg.items()), out, time.perf_counter() - t))
    for name, out, sec in rows:
        out = np.clip(out, 0, 1)
        ps = tasks.psnr(out, clean, m)
        acc = tasks.classify(clf, out) == labels
        print(f"{name:60s} PSNR {ps.mean():6.2f} acc {acc.mean():.3f} ({sec:.0f}s)", flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps({"config": name, "mask": a.mask, "n": a.n, "seed": a.seed,
                                    "psnr": float(ps.mean()), "acc": float(acc.mean()), "seconds": sec}) + "\n")


if __name__ == "__main__":
    main()
