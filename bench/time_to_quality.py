"""Time to quality on MNIST: difflab's defaults against a reference diffusers training loop, same wall clock.

What it measures: how good the samples are (Frechet distance in the penultimate-layer features of a small,
independently trained digit CNN; lower is better) as a function of wall-clock training time, for

* difflab with its default config (``difflab.train(difflab.ExperimentCfg(), data, run)``: the auto UNet
  preset, batch 128, lr 2e-3, 2000 steps, EMA 0.999; nothing overridden), sampled with the library defaults
  (``difflab.load(run).sample(n)``: Heun, 18 steps, Karras grid), and
* diffusers' standard unconditional loop (``examples/unconditional_image_generation``): ``UNet2DModel``
  (28x28x1, block_out_channels (32, 64, 64), layers_per_block 1, DownBlock2D, DownBlock2D, AttnDownBlock2D /
  AttnUpBlock2D, UpBlock2D, UpBlock2D: attention only at the lowest resolution, 7x7, and in the mid block
  there), ``DDPMScheduler(1000, "linear")``, epsilon target, MSE, AdamW (lr 1e-4, betas (0.95, 0.999),
  weight decay 1e-6, eps 1e-8), gradient clipping at 1.0, ``get_cosine_schedule_with_warmup`` with 500
  warm-up steps over ``--diffusers-total-steps`` (default 1000: about what 15 minutes give; peers.md measured
  875 steps in 15 minutes at 2 threads, one pinned core gives fewer, so the cosine never reaches its end),
  ``EMAModel`` (decay 0.9999, warm-up inv_gamma 1, power 3/4), batch 64, images scaled to [-1, 1];
  sampled with ``DPMSolverMultistepScheduler`` (DPM-Solver++, order 2) in 20 steps. Random weights only.

Target (from the issue): at every point of the time-to-quality curve, difflab's distance is at or below
diffusers'.

    /work/main/.venv-peers/bin/python bench/time_to_quality.py                # full run, 15 min budget
    /work/main/.venv-peers/bin/python bench/time_to_quality.py --quick        # ~4 minutes, writes only --out
    /work/main/.venv-peers/bin/python bench/time_to_quality.py --report-only  # re-render from the JSON

Decisions:

* Fairness on 2 cores: the two trainers run at the same time, as two child processes, each pinned to its own
  core (``os.sched_setaffinity``) with one torch thread, with the same budget ``--minutes``. They wait for
  each other (a file barrier) before the first step. Each measures its own training time from its first
  step; a snapshot of its EMA weights is written when that time first passes each of ``--at`` (minutes), and
  the time spent writing snapshots is excluded from the clock. Steps done are recorded at each snapshot.
* difflab is trained through ``difflab.train`` with the default ``ExperimentCfg()`` and its public
  ``callback``: after each step the callback reads the training time (``TrainProgress.elapsed_s``, from
  difflab's first step, minus the time the callback itself spent on snapshots), saves the EMA weights as a
  loadable run folder (``config.json`` + a checkpoint holding only ``ema``) at each mark, and returns True to
  stop once the budget is spent (the same as ``train.max_minutes``, but with the snapshot time excluded).
  Everything else difflab does during training (metrics.csv with an fsync every 10 steps, its own
  checkpoints every 500 steps) stays on the clock. If the default 2000 steps finish before
  the budget, a final snapshot is taken there and the curve ends; later minutes in the table then show that
  final model (marked), because that is what difflab's defaults give you at that time.
* Data: the 8000 MNIST IDX digits of ../shared/data/mnist (there is no MNIST test file there: those 8000 are
  themselves from the official test set). A fixed permutation (seed 0, ``bench/tasks.py:split``) holds out
  1000 digits as the Frechet reference set; both trainers and the classifier use the other 7000.
* Features: ``SmallCNN`` from bench/tasks.py, trained here on the 7000 training digits; features are its
  128-d penultimate layer (after ReLU). Its accuracy on the 1000 held-out digits is reported. The floor is
  the FD of ``--n`` real training digits (disjoint from the reference) to the reference set: what a perfect
  generator would score with the same number of samples.
* Evaluation: after training, both libraries' snapshots are sampled (``--n`` samples, seed 0) in parallel,
  one pinned core each; samples are converted to [0, 1] and clipped, then the FD to the reference set.

Outputs go to ``--out`` (default bench/out/time_to_quality/, with --quick bench/out/time_to_quality_quick/):
results.json (written after every stage and snapshot; a rerun reuses finished training and samples),
per-library snapshots, sample grids of the last snapshot, logs, and copies of the report and plot. A full run
(or ``--report-only`` on a full run's JSON) also writes bench/results_time_to_quality.md and
docs/time_to_quality.png. Skips (exit 0) when ../shared/data/mnist is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MNIST = ROOT.parent / "shared" / "data" / "mnist"
IMAGES = MNIST / "train-images-idx3-ubyte.gz"
LABELS = MNIST / "train-labels-idx1-ubyte.gz"
LIBS = ("difflab", "diffusers")
REPORT_MD = BENCH / "results_time_to_quality.md"
REPORT_PNG = ROOT / "docs" / "time_to_quality.png"
N_REFERENCE = 1000

if str(BENCH) not in sys.path:  # bench/ is not a package
    sys.path.insert(0, str(BENCH))


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def read_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(8000, 28, 28) uint8 images and (8000,) int64 labels, with difflab's own IDX reader."""
    from difflab.data.images import read_idx_array

    return read_idx_array(IMAGES).copy(), read_idx_array(LABELS).astype(np.int64)


def data_split() -> tuple[np.ndarray, np.ndarray]:
    """Training indices (7000) and reference indices (1000, never trained on), fixed (seed 0)."""
    from tasks import split

    return split(8000, n_test=N_REFERENCE, seed=0)


def pin_to_core(core: int) -> None:
    import torch

    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set / parallel work already started
        pass


def snapshot_tag(minute: float) -> str:
    return f"m{minute:g}".replace(".", "p")


def frechet(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted (mean, unbiased covariance) to two (N, F) feature sets:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Heusel et al. 2017; scipy.linalg.sqrtm)."""
    from _frechet import frechet_distance, gaussian_stats

    mu_a, cov_a = gaussian_stats(feats_a)
    mu_b, cov_b = gaussian_stats(feats_b)
    return frechet_distance(mu_a, cov_a, mu_b, cov_b)


class Clock:
    """Training time since the first step, minus the time spent on snapshots; snapshot marks and the budget."""

    def __init__(self, marks_s: list[float], budget_s: float):
        self.marks = sorted(marks_s)
        self.budget_s = budget_s
        self.t0: float | None = None
        self.excluded = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.excluded

    def due(self, elapsed: float) -> list[float]:
        """Marks passed by ``elapsed`` that have not been taken yet (removed from the list)."""
        hit = [m for m in self.marks if elapsed >= m]
        self.marks = [m for m in self.marks if elapsed < m]
        return hit


def barrier(sync_dir: Path, me: str, timeout_s: float = 600.0) -> None:
    """Both trainers start their first step together (within ~10 ms)."""
    (sync_dir / f"ready-{me}").write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout_s
    while not all((sync_dir / f"ready-{lib}").exists() for lib in LIBS):
        if time.monotonic() > deadline:
            raise RuntimeError("barrier: the other trainer never became ready")
        time.sleep(0.01)


class TrainLog:
    """The child's out/<lib>/train.json, rewritten after every snapshot (so an interrupted run keeps it)."""

    def __init__(self, lib_dir: Path, lib: str, spec: dict):
        self.path = lib_dir / "train.json"
        self.data = {"lib": lib, "done": False, "budget_s": spec["budget_s"], "marks_s": spec["marks_s"],
                     "settings": spec["settings"], "snapshots": [], "end": None}
        self.flush()

    def flush(self) -> None:
        write_json(self.path, self.data)

    def snapshot(self, marks: list[float], tag: str, elapsed: float, step: int, save_s: float, **extra) -> None:
        for m in marks or [None]:  # no mark: the final model of a run that ended before the budget
            self.data["snapshots"].append({"mark_s": m, "minute": (elapsed if m is None else m) / 60, "tag": tag,
                                           "elapsed_s": round(elapsed, 3), "step": step, "save_s": round(save_s, 3),
                                           **extra})
        print(f"[{self.data['lib']}] snapshot {tag}: step {step} at {elapsed:.1f} s of training", flush=True)
        self.flush()


# --------------------------------------------------------------------------------------------------
# Child: difflab training
# --------------------------------------------------------------------------------------------------


def train_difflab(spec: dict) -> None:
    import difflab
    from difflab import training
    from difflab.checkpoint import save_checkpoint

    out, lib_dir = Path(spec["out"]), Path(spec["out"]) / "difflab"
    run_dir = lib_dir / "run"
    train_idx, _ = data_split()
    data = difflab.load_data(str(IMAGES)).subset(train_idx)  # keeps the loader's 0..255 -> [-1, 1] normaliser
    cfg = difflab.ExperimentCfg()  # the defaults, nothing overridden
    clock = Clock(spec["marks_s"], spec["budget_s"])
    log = TrainLog(lib_dir, "difflab", spec)

    def save(p: training.TrainProgress, marks: list[float], tag: str, elapsed: float) -> None:
        t = time.perf_counter()
        snap = lib_dir / f"snap-{tag}"
        if snap.exists():
            shutil.rmtree(snap)
        snap.mkdir()
        shutil.copy(run_dir / "config.json", snap / "config.json")
        save_checkpoint(snap, p.step, {"ema": p.ema.state_dict()}, {"step": p.step}, keep=1)
        save_s = time.perf_counter() - t
        log.snapshot(marks, tag, elapsed, p.step, save_s, lr=p.lr, snapshot=str(snap.relative_to(out)))
        clock.excluded += time.perf_counter() - t

    def on_step(p: training.TrainProgress) -> bool:
        # p.elapsed_s runs from difflab's first step and includes this callback's own earlier calls.
        elapsed = p.elapsed_s - clock.excluded
        marks = clock.due(elapsed)
        if marks:
            save(p, marks, snapshot_tag(marks[-1] / 60), elapsed)
        if p.step >= cfg.train.steps and clock.marks:  # the default step count ran out before the budget
            if not marks:
                save(p, [], "end", elapsed)
            log.data["end"] = {"reason": f"train.steps={cfg.train.steps} done", "elapsed_s": round(elapsed, 3),
                               "step": p.step, "tag": log.data["snapshots"][-1]["tag"],
                               "marks_not_reached_s": clock.marks}
            log.flush()
        if elapsed >= clock.budget_s:
            log.data["end"] = {"reason": "budget", "elapsed_s": round(elapsed, 3), "step": p.step}
            return True  # difflab stops here and writes its checkpoint, outside the clock
        return False

    barrier(out / "sync", "difflab")  # difflab's set-up (data, model) runs after it, off its clock
    t = time.perf_counter()
    training.train(cfg, data, run_dir, data_spec=f"{IMAGES} (7000-digit training split)", progress=False,
                   callback=on_step)
    resolved = read_json(run_dir / "config.json", {})
    log.data.update(done=True, wall_s=round(time.perf_counter() - t, 1), excluded_s=round(clock.excluded, 3),
                    config=resolved.get("config"), data=resolved.get("data"))
    log.flush()


# --------------------------------------------------------------------------------------------------
# Child: diffusers training (the reference loop)
# --------------------------------------------------------------------------------------------------


def diffusers_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


DIFFUSERS_SETTINGS = {"lr": 1e-4, "betas": (0.95, 0.999), "weight_decay": 1e-6, "eps": 1e-8, "warmup": 500,
                      "batch_size": 64, "grad_clip": 1.0, "ema_max_decay": 0.9999, "ema_inv_gamma": 1.0,
                      "ema_power": 0.75, "num_train_timesteps": 1000, "beta_schedule": "linear",
                      "prediction": "epsilon"}


def train_diffusers(spec: dict) -> None:
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from safetensors.torch import save_file

    s = DIFFUSERS_SETTINGS
    out, lib_dir = Path(spec["out"]), Path(spec["out"]) / "diffusers"
    images, _ = read_mnist()
    train_idx, _ = data_split()
    x = torch.from_numpy(images[train_idx]).float().div(127.5).sub(1.0)[:, None]  # [-1, 1]
    torch.manual_seed(spec["seed"])
    unet = diffusers_unet().train()
    noise_sched = DDPMScheduler(num_train_timesteps=s["num_train_timesteps"], beta_schedule=s["beta_schedule"])
    opt = torch.optim.AdamW(unet.parameters(), lr=s["lr"], betas=s["betas"], weight_decay=s["weight_decay"],
                            eps=s["eps"])
    total = spec["diffusers_total_steps"]
    lr_sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=s["warmup"], num_training_steps=total)
    ema = EMAModel(unet.parameters(), decay=s["ema_max_decay"], use_ema_warmup=True, inv_gamma=s["ema_inv_gamma"],
                   power=s["ema_power"])
    names = [n for n, _ in unet.named_parameters()]
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    clock = Clock(spec["marks_s"], spec["budget_s"])
    log = TrainLog(lib_dir, "diffusers", spec)
    log.data["params"] = sum(p.numel() for p in unet.parameters())
    step, epoch, loss_smooth = 0, 0, None
    barrier(out / "sync", "diffusers")
    clock.start()
    while True:
        perm = torch.randperm(len(x), generator=gen)
        for idx in perm.split(s["batch_size"]):
            clean = x[idx]
            noise = torch.randn(clean.shape, generator=gen)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
            noisy = noise_sched.add_noise(clean, noise, t)
            loss = F.mse_loss(unet(noisy, t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), s["grad_clip"])
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            ema.step(unet.parameters())
            step += 1
            loss_smooth = float(loss) if loss_smooth is None else 0.98 * loss_smooth + 0.02 * float(loss)
            elapsed = clock.elapsed()
            marks = clock.due(elapsed)
            if marks:
                t_save = time.perf_counter()
                tag = snapshot_tag(marks[-1] / 60)
                snap = lib_dir / f"snap-{tag}.safetensors"
                weights = {n: p.detach().contiguous().clone() for n, p in zip(names, ema.shadow_params)}
                save_file(weights, str(snap))
                save_s = time.perf_counter() - t_save
                log.snapshot(marks, tag, elapsed, step, save_s, lr=opt.param_groups[0]["lr"], epoch=epoch,
                             loss_smooth=round(loss_smooth, 5), ema_decay=round(getattr(ema, "cur_decay_value", None) or 0.0, 6),
                             snapshot=str(snap.relative_to(out)))
                clock.excluded += time.perf_counter() - t_save
            if elapsed >= clock.budget_s:
                log.data["end"] = {"reason": "budget", "elapsed_s": round(elapsed, 3), "step": step}
                log.data.update(done=True, excluded_s=round(clock.excluded, 3))
                log.flush()
                return
        epoch += 1


# --------------------------------------------------------------------------------------------------
# Child: sampling every snapshot
# --------------------------------------------------------------------------------------------------


def sample_difflab(snap_dir: Path, n: int, seed: int) -> tuple[np.ndarray, dict]:
    import difflab
    from difflab import sampling

    model = difflab.load(snap_dir)
    x = model.sample(n, seed=seed)  # library defaults: sampler, steps, grid
    lo, hi = model.data_info["value_range"]
    sampler, steps = model.cfg.sample.sampler, model.cfg.sample.steps
    info = {"sampler": sampler, "steps": steps, "schedule": model.cfg.sample.schedule,
            "nfe": sampling.nfe(sampler, steps)}
    return ((x[:, 0].double().numpy() - lo) / (hi - lo)).clip(0, 1), info


def sample_diffusers(snap: Path, n: int, seed: int, steps: int = 20, batch: int = 250) -> tuple[np.ndarray, dict]:
    import torch
    from diffusers import DPMSolverMultistepScheduler
    from safetensors.torch import load_file

    unet = diffusers_unet().eval().requires_grad_(False)
    unet.load_state_dict(load_file(str(snap)), strict=True)
    s = DIFFUSERS_SETTINGS
    sched = DPMSolverMultistepScheduler(num_train_timesteps=s["num_train_timesteps"], beta_schedule=s["beta_schedule"],
                                        algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon")
    noise = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    outs, calls = [], 0
    with torch.no_grad():
        for xb in noise.split(batch):
            sched.set_timesteps(steps)  # also resets the multistep solver's history
            xb = xb * sched.init_noise_sigma
            calls = 0
            for t in sched.timesteps:
                eps = unet(sched.scale_model_input(xb, t), t).sample
                calls += 1
                xb = sched.step(eps, t, xb).prev_sample
            outs.append(xb)
    x = torch.cat(outs)
    info = {"sampler": "DPMSolverMultistepScheduler (dpmsolver++, order 2)", "steps": steps, "nfe": calls}
    return ((x[:, 0].double().numpy() + 1) / 2).clip(0, 1), info


def sample_worker(spec: dict, lib: str) -> None:
    out = Path(spec["out"])
    log = read_json(out / lib / "train.json")
    done = set()
    for snap in log["snapshots"]:
        tag = snap["tag"]
        if tag in done:
            continue
        done.add(tag)
        path = out / lib / f"samples-{tag}-n{spec['n']}-s{spec['sample_seed']}.npy"
        meta = path.with_suffix(".json")
        if path.exists() and meta.exists():
            continue
        t = time.perf_counter()
        if lib == "difflab":
            x, info = sample_difflab(out / snap["snapshot"], spec["n"], spec["sample_seed"])
        else:
            x, info = sample_diffusers(out / snap["snapshot"], spec["n"], spec["sample_seed"])
        info["sample_s"] = round(time.perf_counter() - t, 2)
        tmp = path.with_name(f".{path.stem}.tmp.npy")
        np.save(tmp, x.astype(np.float32))
        os.replace(tmp, path)
        write_json(meta, info)
        print(f"[{lib}] sampled {tag}: {spec['n']} images, {info['nfe']} calls each, {info['sample_s']} s", flush=True)


def worker_main(args) -> int:
    spec = read_json(Path(args.spec))
    pin_to_core(args.core)
    if args.worker == "train":
        (train_difflab if args.lib == "difflab" else train_diffusers)(spec)
    else:
        sample_worker(spec, args.lib)
    return 0


# --------------------------------------------------------------------------------------------------
# Parent: orchestration
# --------------------------------------------------------------------------------------------------


def run_pair(kind: str, spec_path: Path, out: Path) -> None:
    """Run the two children (difflab on core 0, diffusers on core 1) and wait; report progress lines."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cores = sorted(os.sched_getaffinity(0))
    logs = {lib: out / lib / f"{kind}.log" for lib in LIBS}
    seen = {lib: len(p.read_text(errors="replace").splitlines()) if p.exists() else 0 for lib, p in logs.items()}
    procs = {}
    for i, lib in enumerate(LIBS):
        logf = open(out / lib / f"{kind}.log", "a")  # noqa: SIM115  (closed in the finally below)
        core = cores[i % len(cores)]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", kind, "--_lib", lib, "--_core", str(core),
               "--_spec", str(spec_path)]
        procs[lib] = (subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT), logf)
    failed: list[str] = []
    try:
        while True:
            alive = [lib for lib, (p, _) in procs.items() if p.poll() is None]
            for lib in LIBS:
                lines = logs[lib].read_text(errors="replace").splitlines()
                for line in lines[seen[lib]:]:
                    if line.startswith(f"[{lib}]"):
                        print("  " + line, flush=True)
                seen[lib] = len(lines)
            failed = [lib for lib, (p, _) in procs.items() if p.poll() not in (None, 0)]
            if failed or not alive:
                break
            time.sleep(2)
    finally:
        for lib, (p, f) in procs.items():
            if p.poll() is None:  # only after a failure or an interrupt: a child we started ourselves
                p.terminate()
                p.wait()
            f.close()
    if failed:
        tail = (out / failed[0] / f"{kind}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{kind} worker for {failed[0]} failed; end of its log:\n{tail}")


def interpreter() -> str:
    exe = Path(sys.executable)
    return str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else "python"


def versions() -> dict:
    import diffusers
    import torch

    import difflab

    return {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__,
            "difflab": difflab.__version__}


def train_stage(a, out: Path, spec: dict, spec_path: Path, results: dict) -> None:
    logs = {lib: read_json(out / lib / "train.json") for lib in LIBS}
    reusable = all(lg and lg.get("done") and lg.get("settings") == spec["settings"] for lg in logs.values())
    if reusable and not a.retrain:
        print("training: reusing the finished runs in", out)
    else:
        for lib in LIBS:  # only the folders this script creates
            if (out / lib).exists():
                shutil.rmtree(out / lib)
            (out / lib).mkdir(parents=True)
        if (out / "sync").exists():
            shutil.rmtree(out / "sync")
        (out / "sync").mkdir()
        print(f"training both for {a.minutes:g} min of wall clock, one pinned core each "
              f"(snapshots at {', '.join(f'{m:g}' for m in spec['at'])} min) ...", flush=True)
        run_pair("train", spec_path, out)
    results["train"] = {lib: read_json(out / lib / "train.json") for lib in LIBS}
    write_json(out / "results.json", results)


def classifier_stage(a, out: Path, results: dict):
    import torch
    from tasks import classify, train_classifier

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    images, labels = read_mnist()
    train_idx, ref_idx = data_split()
    x01 = images.astype(np.float32) / 255.0
    t = time.perf_counter()
    net = train_classifier(x01[train_idx], labels[train_idx], out / f"classifier-e{a.clf_epochs}.pt", a.clf_epochs)
    acc = float((classify(net, x01[ref_idx]) == labels[ref_idx]).mean())
    results["classifier"] = {"model": "bench/tasks.py:SmallCNN", "epochs": a.clf_epochs, "train_digits": len(train_idx),
                             "heldout_accuracy": acc, "features": "penultimate layer (128, after ReLU)",
                             "seconds": round(time.perf_counter() - t, 1)}
    print(f"classifier: held-out accuracy {acc:.4f} ({results['classifier']['seconds']} s)", flush=True)
    trunk = net.net[:-1].eval()  # everything but the last Linear

    @torch.no_grad()
    def features(x: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(np.asarray(x, np.float32)).reshape(-1, 1, 28, 28)
        return torch.cat([trunk(b) for b in xt.split(500)]).double().numpy()

    ref_feats = features(x01[ref_idx])
    pick = np.random.default_rng(1).choice(train_idx, size=min(a.n, len(train_idx)), replace=False)
    results["floor"] = {"fd": frechet(features(x01[pick]), ref_feats), "n": len(pick),
                        "what": f"{len(pick)} real training digits vs the {len(ref_idx)} reference digits"}
    results["reference"] = {"digits": len(ref_idx), "train_digits": len(train_idx), "split": "bench/tasks.py:split seed 0"}
    print(f"real-vs-real floor (N={len(pick)}): FD {results['floor']['fd']:.3f}", flush=True)
    write_json(out / "results.json", results)
    return features, ref_feats


def eval_stage(a, out: Path, spec: dict, spec_path: Path, results: dict, features, ref_feats) -> None:
    from difflab.data import save_image_grid

    print(f"sampling every snapshot ({a.n} samples each, both libraries in parallel) ...", flush=True)
    run_pair("sample", spec_path, out)
    results["fd"], results["sampler"] = {}, {}
    for lib in LIBS:
        rows = {}
        last = None
        for snap in results["train"][lib]["snapshots"]:
            path = out / lib / f"samples-{snap['tag']}-n{a.n}-s{spec['sample_seed']}.npy"
            if not path.exists():
                continue
            x = np.load(path)
            info = read_json(path.with_suffix(".json"), {})
            results["sampler"][lib] = {k: v for k, v in info.items() if k != "sample_s"}
            rows[f"{snap['minute']:g}"] = {**snap, "fd": frechet(features(x), ref_feats), "sample_s": info.get("sample_s")}
            last = x
        results["fd"][lib] = rows
        if last is not None:
            grid = (np.asarray(last[:64]) * 255).round().astype(np.uint8)[..., None]
            save_image_grid(grid, out / f"samples_{lib}.png", nrow=8)
        write_json(out / "results.json", results)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def table_rows(results: dict) -> list[dict]:
    """One row per snapshot minute: each library's step and FD there (difflab after its last step: its final
    model, marked), the ratio difflab / diffusers."""
    rows = []
    at = results["settings"]["at"]
    fd = results.get("fd", {})
    for m in at:
        key = f"{m:g}"
        row = {"minute": m}
        for lib in LIBS:
            r = fd.get(lib, {}).get(key)
            ended = False
            if r is None:
                end = (results.get("train", {}).get(lib) or {}).get("end") or {}
                if end.get("reason", "").startswith("train.steps") and fd.get(lib):
                    r, ended = fd[lib][max(fd[lib], key=float)], True
            row[lib] = None if r is None else {"step": r["step"], "fd": r["fd"], "elapsed_s": r["elapsed_s"],
                                               "after_end": ended}
        a, b = row["difflab"], row["diffusers"]
        row["ratio"] = a["fd"] / b["fd"] if a and b and b["fd"] > 0 else None
        row["met"] = None if not (a and b) else a["fd"] <= b["fd"]
        rows.append(row)
    return rows


def verdict(rows: list[dict]) -> str:
    missing = [r["minute"] for r in rows if r["met"] is None]
    failed = [r["minute"] for r in rows if r["met"] is False]
    if failed:
        return "NOT met at minute " + ", ".join(f"{m:g}" for m in failed)
    if missing:
        return "incomplete (no result at minute " + ", ".join(f"{m:g}" for m in missing) + ")"
    return "met"


def render_report(results: dict, md_path: Path, png_path: Path) -> None:
    rows = table_rows(results)
    v = verdict(rows)
    results["verdict"] = v
    tr = results.get("train", {})
    samp = results.get("sampler", {})
    fmt = lambda x, f="{:.3f}": "—" if x is None else f.format(x)
    lines = [
        "# Time to quality: difflab defaults vs diffusers' reference loop (MNIST, CPU)",
        "",
        (f"Generated by `bench/time_to_quality.py` ({results.get('finished', 'unfinished')}). "
        "Frechet distance (FD, lower is better) of samples to held-out real digits in the features of a small "
        "independently trained digit CNN, after each amount of wall-clock training time. Both trainers ran at "
        "the same time, each on its own pinned core with one thread; snapshot-writing time is excluded from "
        "the clock. See the module docstring for every setting."),
        "",
        f"**Target** (difflab FD <= diffusers FD at every point of the curve): **{v}**",
        "",
        "| minute | difflab steps | difflab FD | diffusers steps | diffusers FD | ratio (difflab / diffusers) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d, p = r["difflab"], r["diffusers"]
        mark = " (final model†)" if d and d["after_end"] else ""
        lines.append(f"| {r['minute']:g} | {fmt(d and d['step'], '{}')}{mark} | {fmt(d and d['fd'])} | "
                     f"{fmt(p and p['step'], '{}')} | {fmt(p and p['fd'])} | {fmt(r['ratio'], '{:.3f}')} |")
    end = (tr.get("difflab") or {}).get("end") or {}
    if end.get("reason", "").startswith("train.steps"):
        lines += ["", (f"† difflab's default `train.steps` ({end['step']}) finished after {end['elapsed_s'] / 60:.2f} "
                  "min, before the budget: its curve ends there, and later rows show that final model.")]
    fl, clf = results.get("floor", {}), results.get("classifier", {})
    s = results["settings"]
    lines += [
        "",
        f"- Command: `{results['command']}`",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items()),
        (f"- Data: {results.get('reference', {}).get('train_digits', '?')} MNIST digits (../shared/data/mnist) for "
        f"training both models and the classifier; {results.get('reference', {}).get('digits', '?')} held-out "
        "digits as the FD reference."),
        f"- Samples per snapshot: {s['n']} (seed {s['sample_seed']}), converted to [0, 1] and clipped.",
        (f"- difflab sampler (library defaults): {samp.get('difflab', {}).get('sampler', '?')}, "
        f"{samp.get('difflab', {}).get('steps', '?')} steps, {samp.get('difflab', {}).get('nfe', '?')} network "
        "evaluations per sample (`difflab.sampling.nfe`)."),
        (f"- diffusers sampler: {samp.get('diffusers', {}).get('sampler', '?')}, "
        f"{samp.get('diffusers', {}).get('steps', '?')} steps, {samp.get('diffusers', {}).get('nfe', '?')} network "
        "evaluations per sample."),
        (f"- Feature classifier: {clf.get('model', '?')}, {clf.get('epochs', '?')} epochs, held-out accuracy "
        f"{fmt(clf.get('heldout_accuracy'), '{:.4f}')}; features: {clf.get('features', '?')}."),
        f"- Real-vs-real floor: FD {fmt(fl.get('fd'))} ({fl.get('what', '?')}).",
        f"- diffusers' cosine schedule: 500 warm-up steps, planned over {s['diffusers_total_steps']} steps.",
    ]
    for lib in LIBS:
        t = tr.get(lib) or {}
        e = t.get("end") or {}
        if e:
            lines.append(f"- {lib}: stopped at step {e.get('step')} after {e.get('elapsed_s', 0) / 60:.2f} min of "
                         f"training ({e.get('reason')}); snapshot writing excluded: {t.get('excluded_s', 0):.1f} s.")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for lib, color in zip(LIBS, ("tab:blue", "tab:orange")):
        pts = sorted((r["elapsed_s"] / 60, r["fd"], r["step"]) for r in results.get("fd", {}).get(lib, {}).values())
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=lib)
            for xm, y, st in pts:
                ax.annotate(f"{st}", (xm, y), textcoords="offset points", xytext=(3, 4), fontsize=7, color=color)
    if fl.get("fd") is not None:
        ax.axhline(fl["fd"], ls="--", color="gray", label=f"real vs real (N={fl.get('n')})")
    ax.set_yscale("log")
    ax.set_xlabel("wall-clock training time (min, one core each)")
    ax.set_ylabel("Frechet distance (digit-CNN features)")
    ax.set_title(f"Time to quality on MNIST — target {v}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def write_reports(results: dict, out: Path) -> None:
    render_report(results, out / "results_time_to_quality.md", out / "time_to_quality.png")
    if not results["settings"]["quick"]:
        render_report(results, REPORT_MD, REPORT_PNG)
        print(f"wrote {REPORT_MD.relative_to(ROOT)} and {REPORT_PNG.relative_to(ROOT)}")
    print(f"wrote {out}/results_time_to_quality.md, time_to_quality.png, results.json")


# --------------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=None, help="training budget per library (default 15; quick 1)")
    ap.add_argument("--at", type=float, nargs="+", default=None,
                    help="snapshot times in minutes (default 1 2 4 8 15; quick 0.25 0.5 1); the budget is always one")
    ap.add_argument("--n", type=int, default=None, help="samples per snapshot for the FD (default 500; quick 64)")
    ap.add_argument("--clf-epochs", type=int, default=None, help="classifier epochs (default 4; quick 1)")
    ap.add_argument("--diffusers-total-steps", type=int, default=1000,
                    help="num_training_steps of diffusers' cosine schedule (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="diffusers training seed (difflab uses its default)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default bench/out/time_to_quality, quick bench/out/time_to_quality_quick)")
    ap.add_argument("--quick", action="store_true", help="1 minute, snapshots 0.25 0.5 1, n 64: a smoke test")
    ap.add_argument("--retrain", action="store_true", help="train again even if --out holds finished runs")
    ap.add_argument("--report-only", action="store_true", help="re-render the report and plot from --out/results.json")
    ap.add_argument("--_worker", dest="worker", choices=("train", "sample"), help=argparse.SUPPRESS)
    ap.add_argument("--_lib", dest="lib", choices=LIBS, help=argparse.SUPPRESS)
    ap.add_argument("--_core", dest="core", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--_spec", dest="spec", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    q = a.quick
    a.minutes = a.minutes if a.minutes is not None else (1.0 if q else 15.0)
    a.at = a.at if a.at is not None else ([0.25, 0.5, 1.0] if q else [1.0, 2.0, 4.0, 8.0, 15.0])
    a.at = sorted({m for m in a.at if 0 < m <= a.minutes} | {a.minutes})
    a.n = a.n if a.n is not None else (64 if q else 500)
    a.clf_epochs = a.clf_epochs if a.clf_epochs is not None else (1 if q else 4)
    a.out = a.out or ROOT / "bench" / "out" / ("time_to_quality_quick" if q else "time_to_quality")
    return a


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if a.worker:
        return worker_main(a)
    if not IMAGES.exists():
        print(f"skipped: {IMAGES} not found")
        return 0
    out = a.out.resolve()
    if a.report_only:
        results = read_json(out / "results.json")
        if not results:
            print(f"no results in {out / 'results.json'}; run the benchmark first")
            return 1
        write_reports(results, out)
        write_json(out / "results.json", results)
        return 0
    if not hasattr(os, "sched_setaffinity"):
        print("skipped: needs os.sched_setaffinity (Linux) to pin the two trainers to their own cores")
        return 0
    if len(os.sched_getaffinity(0)) < 2:
        print("warning: fewer than 2 usable cores; both trainers will share one and the timings mean little")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"minutes": a.minutes, "at": a.at, "diffusers_total_steps": a.diffusers_total_steps, "seed": a.seed,
                "quick": a.quick}
    spec = {"out": str(out), "budget_s": 60 * a.minutes, "marks_s": [60 * m for m in a.at], "at": a.at,
            "seed": a.seed, "diffusers_total_steps": a.diffusers_total_steps, "n": a.n, "sample_seed": 0,
            "settings": settings}
    spec_path = out / "spec.json"
    write_json(spec_path, spec)
    results = read_json(out / "results.json", {}) if not a.retrain else {}
    results.update(settings={**settings, "n": a.n, "sample_seed": 0, "clf_epochs": a.clf_epochs},
                   command=shlex.join([interpreter(), "bench/time_to_quality.py", *argv]), versions=versions(),
                   started=time.strftime("%Y-%m-%d %H:%M:%S"), cores=sorted(os.sched_getaffinity(0)))
    results.pop("finished", None)
    write_json(out / "results.json", results)
    t0 = time.perf_counter()
    train_stage(a, out, spec, spec_path, results)
    features, ref_feats = classifier_stage(a, out, results)
    eval_stage(a, out, spec, spec_path, results, features, ref_feats)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["total_s"] = round(time.perf_counter() - t0, 1)
    write_reports(results, out)
    write_json(out / "results.json", results)
    for r in table_rows(results):
        d, p = r["difflab"] or {}, r["diffusers"] or {}
        print(f"  minute {r['minute']:>5g}: difflab step {d.get('step')} FD {d.get('fd', float('nan')):.3f} | "
              f"diffusers step {p.get('step')} FD {p.get('fd', float('nan')):.3f}")
    print(f"floor {results['floor']['fd']:.3f}; target: {results['verdict']}; total {results['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
