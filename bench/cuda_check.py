"""The CUDA path in one short script (run where a GPU is lent; CI never needs one).

Checks, on the first CUDA device: training throughput of the UNet "small" preset on 1x28x28 images at batch
128 in fp32 / bf16 / fp16 (+ GradScaler) with channels-last, the pinned-memory batch path against plain
indexing, a 1-process NCCL DDP run of ``difflab train`` through torchrun with bf16 and its resume, and
sampling plus an exact likelihood on the GPU. Prints one JSON object and writes it to ``$OUT`` if set.

    PYTHONPATH=src python bench/cuda_check.py [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import difflab
from difflab.config import ExperimentCfg
from difflab.data import Dataset
from difflab.training import BatchSource


def mnist_like(n: int = 2048) -> Dataset:
    """sklearn digits upsampled to 28x28, in 0..255 (no download)."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16
    x = torch.nn.functional.interpolate(x, size=28, mode="bilinear") * 255
    return Dataset(x=x, labels=None, kind="image", name="digits28", value_range=(0.0, 255.0))


def throughput(data: Dataset, precision: str, steps: int, root: Path, channels_last: str = "auto") -> dict:
    cfg = ExperimentCfg()
    cfg = cfg.replace("model", preset="small")
    cfg = cfg.replace("train", steps=steps, batch_size=128, precision=precision, device="cuda", log_every=10,
                      checkpoint_every=10_000, sample_grid=0, channels_last=channels_last)
    run = root / f"tp-{precision}-{channels_last}"
    t = time.perf_counter()
    res = difflab.train(cfg, data, run, progress=False)
    torch.cuda.synchronize()
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    # images/s over the second half of the run (after warm-up), from consecutive metrics rows
    (s0, t0), (s1, t1) = [(int(r.split(",")[0]), float(r.split(",")[5])) for r in (rows[len(rows) // 2], rows[-1])]
    return {"precision": precision, "channels_last": channels_last, "loss": res.last_loss,
            "img_per_s": round((s1 - s0) * 128 / (t1 - t0), 1), "wall_s": round(time.perf_counter() - t, 1)}


def pinned_path_matches() -> bool:
    x = torch.randn(1000, 1, 28, 28)
    src = BatchSource(x, None, torch.device("cuda"), channels_last=True)
    src.resident, src.x = False, x.pin_memory()  # force the host-memory path
    ok = True
    for seed in range(6):
        idx = torch.randperm(1000, generator=torch.Generator().manual_seed(seed))[:128]
        ok &= torch.equal(src.get(idx).cpu(), x[idx])
    return bool(ok)


def ddp_run(root: Path) -> dict:
    out = root / "ddp"
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "-m", "difflab", "train",
            "--data", "digits", "--out", str(out), "--device", "cuda", "--set", "train.precision=bf16",
            "--set", "train.sample_grid=16", "--set", "train.checkpoint_every=50"]
    env = {**os.environ, "PYTHONPATH": "src"}
    a = subprocess.run([*base, "--steps", "100"], capture_output=True, text=True, env=env, timeout=240)
    b = subprocess.run([*base, "--steps", "150", "--resume"], capture_output=True, text=True, env=env, timeout=240)
    model = difflab.load(out, device="cuda")
    s = model.sample(16, steps=10)
    return {"rc": [a.returncode, b.returncode], "stderr_tail": (a.stderr + b.stderr)[-600:],
            "checkpoints": sorted(p.name for p in (out / "checkpoints").glob("ckpt-*")),
            "samples_finite": bool(torch.isfinite(s).all()), "samples_png": (out / "samples.png").exists()}


def likelihood_on_gpu(root: Path) -> dict:
    from difflab.likelihood import log_likelihood

    cfg = ExperimentCfg().replace("train", steps=300, device="cuda", sample_grid=0, checkpoint_every=10_000)
    data = difflab.load_data("moons", n=4000)
    difflab.train(cfg, data, root / "moons", progress=False)
    m = difflab.load(root / "moons", device="cuda")
    x = m.normalize(data.x[:64]).cuda().double()
    logp, info = log_likelihood(m.denoiser.double(), x, sigma_min=m.sigma_min, sigma_max=m.sigma_max, rtol=1e-4,
                                atol=1e-4)
    return {"mean_nll_model_space": float(-logp.mean()), "nfev": info["nfev"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    data = mnist_like()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        steps = {"throughput": []}
        for precision in ("fp32", "bf16", "fp16"):
            steps["throughput"].append(throughput(data, precision, a.steps, root))
            print(json.dumps(steps["throughput"][-1]), flush=True)
        steps["throughput"].append(throughput(data, "bf16", a.steps, root, channels_last="off"))
        print(json.dumps(steps["throughput"][-1]), flush=True)
        report.update(steps)
        report["pinned_path_matches"] = pinned_path_matches()
        report["ddp"] = ddp_run(root)
        print(json.dumps(report["ddp"]), flush=True)
        report["likelihood"] = likelihood_on_gpu(root)
    text = json.dumps(report, indent=1)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "cuda_check.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
