"""The ``difflab`` command line: ``train``, ``sample``, ``likelihood`` and ``demo`` (the task commands
``inpaint``, ``denoise`` and ``anomaly`` live in ``difflab.cli_tasks``).

The CLI holds no math: each command parses arguments, calls the Python API and writes files atomically.
Errors a user can fix (bad file, bad argument) are printed as one line and exit with status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

from .errors import DifflabError

DEMO_STEPS = 2500
MAX_SAMPLER_STEPS = 10_000  # more sampler steps than this is a typo, not a request (EDM uses <= 256)


def _fmt(text: str) -> str:
    return text.strip("\n")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line (not the whole usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(name, hi: int | None = None):
    return _int_in(name, 1, hi)


def _int_in(name, lo: int, hi: int | None = None):
    """An integer in [lo, hi] (hi=None: no upper bound)."""

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{name} must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{name} must be <= {hi}, got {v}")
        return v

    return parse


SEED = _int_in("--seed", -(2**62), 2**62)  # seeds become torch generator seeds (seed + i per sample)


def _float_in(name, lo: float, hi: float | None = None, *, strict: bool = False):
    """A finite float >= lo (> lo with ``strict``) and <= hi; NaN and infinities are refused."""

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text}")
        if not (v > lo if strict else v >= lo):
            raise argparse.ArgumentTypeError(f"{name} must be {'>' if strict else '>='} {lo:g}, got {text}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{name} must be <= {hi:g}, got {text}")
        return v

    return parse


def _nonempty(name):
    def parse(text):
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{name} must not be empty")
        return text

    return parse


def _device(name):
    """A torch device that exists here: cpu, cuda, cuda:N (N < the number of GPUs), mps ..."""

    def parse(text):
        import torch

        try:
            dev = torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"{name}: unknown device {text!r} (e.g. cpu, cuda, cuda:1)") from None
        if dev.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise argparse.ArgumentTypeError(f"{name} {text}: CUDA is not available here")
            if dev.index is not None and dev.index >= count:
                raise argparse.ArgumentTypeError(f"{name} {text}: only {count} CUDA device(s) here")
        elif dev.type == "mps" and not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{name} {text}: MPS is not available here")
        return text

    return parse


@contextlib.contextmanager
def _no_partial_run(out: Path, resume: bool):
    """A new run that fails before its first checkpoint leaves ``out`` as it found it: whatever it added
    (config.json, metrics.csv, the folder itself) is removed. A run with a checkpoint is kept for --resume."""
    from .checkpoint import list_checkpoints

    if resume or os.environ.get("RANK", "0") != "0" or (out.exists() and not out.is_dir()):
        yield
        return
    before = set(out.iterdir()) if out.is_dir() else None
    try:
        yield
    except Exception:
        if out.is_dir() and not list_checkpoints(out):
            added = [out] if before is None else [p for p in out.iterdir() if p not in before]
            for path in added:
                with contextlib.suppress(OSError):
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        raise


def _load_run(run: str, device: str):
    """``difflab.load``; when no checkpoint loads, the reasons (warnings about skipped damaged checkpoints)
    go into the one-line error instead of separate warning lines."""
    from . import load
    from .errors import CheckpointError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = load(run, device=device)
        except CheckpointError as e:
            reasons = "; ".join(str(w.message) for w in caught)
            raise CheckpointError(f"{e} ({reasons})" if reasons else str(e)) from e
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings reach the user as ``difflab: warning: ...`` on one line (no source line)."""
    text = " ".join(str(message).split())
    print(f"difflab: warning: {text}", file=file or sys.stderr)


# -------------------------------------------------------------------------------------------------
# train
# -------------------------------------------------------------------------------------------------


def _build_config(args):
    """Defaults (or, with --resume, the run's saved config), then --config, --set and the flags."""
    from .config import ExperimentCfg, config_from_dict, load_config_file, parse_override
    from .model import read_run_config

    base = read_run_config(args.out)[0] if args.resume else ExperimentCfg()
    cfg = load_config_file(args.config, base) if args.config else base
    overrides: dict = {}
    for text in args.set or []:
        for section, values in parse_override(text).items():
            overrides.setdefault(section, {}).update(values)
    flags = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "device": args.device, "max_minutes": args.minutes, "checkpoint_every": args.checkpoint_every}
    train = {k: v for k, v in flags.items() if v is not None}
    if train:
        overrides.setdefault("train", {}).update(train)
    if args.backbone:
        overrides.setdefault("model", {})["backbone"] = args.backbone
    if args.preset:
        overrides.setdefault("model", {})["preset"] = args.preset
    if args.class_conditional:
        overrides.setdefault("model", {})["class_conditional"] = True
    return config_from_dict(overrides, cfg) if overrides else cfg


def cmd_train(args) -> int:
    import json

    from .data import load_data
    from .training import train

    cfg = _build_config(args)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    data = load_data(args.data)
    with _no_partial_run(Path(args.out), args.resume):
        result = train(cfg, data, args.out, resume=args.resume, data_spec=args.data, progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    print(f"trained {result.step} steps; checkpoints in {Path(args.out) / 'checkpoints'}")
    if (Path(args.out) / "samples.png").exists():
        print(f"sample grid: {Path(args.out) / 'samples.png'}")
    return 0


# -------------------------------------------------------------------------------------------------
# sample
# -------------------------------------------------------------------------------------------------


def write_samples(model, samples, out: Path) -> list[Path]:
    """Images: ``.npz`` with uint8 ``images`` (N, H, W, C) in the data's units, plus a PNG grid.
    Tabular: ``.csv`` with the data's column names (or ``.npz`` with ``samples`` and ``columns``)."""
    import numpy as np

    from .data import save_image_grid, to_display_uint8, to_uint8_images, write_csv
    from .io import atomic_path, atomic_write

    vr = model.data_info.get("value_range")
    written = []
    if model.kind == "image":
        images = to_uint8_images(samples, vr)
        grid = out.with_suffix(".png")
        # both files are complete under temporary names before either is renamed into place, so a failure
        # while writing either leaves neither (only the two renames themselves are not one atomic step)
        with atomic_path(out) as tmp_npz, atomic_path(grid) as tmp_grid:
            with open(tmp_npz, "wb") as f:
                np.savez(f, images=images, value_range=np.asarray(vr, dtype=np.float64))
            save_image_grid(to_display_uint8(samples[:256], vr), tmp_grid)
        written += [out, grid]
    else:
        columns = model.data_info.get("columns") or [f"x{i}" for i in range(samples.shape[1])]
        arr = samples.numpy().astype(np.float64)
        if out.suffix.lower() == ".npz":
            atomic_write(out, lambda f: np.savez(f, samples=arr, columns=np.asarray(columns)))
        else:
            write_csv(out, arr, columns)
        written.append(out)
    return written


def _check_output(flag: str, path: Path) -> None:
    """Fail before any work when ``path`` cannot be written: no such folder, or a folder in the way."""
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise DifflabError(f"{flag} {path}: folder {path.parent} {what}")
    if path.is_dir():
        raise DifflabError(f"{flag} {path}: is a folder; give a file name")
    if not os.access(path.parent, os.W_OK):
        raise DifflabError(f"{flag} {path}: folder {path.parent} is not writable")


def cmd_sample(args) -> int:
    out = Path(args.out)
    _check_output("--out", out)
    model = _load_run(args.run, args.device)
    steps = _steps_from(args, args.sampler or model.cfg.sample.sampler, guided=bool(model.num_classes))
    allowed = (".npz",) if model.kind == "image" else (".csv", ".npz")
    if out.suffix.lower() not in allowed:
        raise DifflabError(f"--out {out}: {model.kind} samples are written as {' or '.join(allowed)}")
    if model.kind == "image":
        _check_output("--out", out.with_suffix(".png"))  # the PNG grid written beside the .npz
    labels = None
    if args.class_label is not None:
        labels = [args.class_label] * args.n
    samples = model.sample(
        args.n, sampler=args.sampler, steps=steps, schedule=args.schedule, seed=args.seed,
        class_labels=labels, guidance=args.guidance, batch_size=args.batch_size, progress=not args.quiet,
        sigma_last=args.sigma_last,
    )
    for path in write_samples(model, samples, out):
        print(f"wrote {path}")
    return 0


def _steps_from(args, sampler: str, guided: bool = False) -> int | None:
    """--steps, or the most steps whose denoiser calls fit in --nfe (printed), or None for the run's default."""
    if args.nfe is None:
        return args.steps
    from .sampling import nfe, steps_for_nfe

    if args.steps is not None:
        raise DifflabError("--steps and --nfe: give one or the other")
    steps = steps_for_nfe(sampler, args.nfe)
    print(f"{sampler}: {steps} steps = {nfe(sampler, steps)} denoiser calls per sample"
          + (" (x2 with guidance)" if guided else ""))
    return steps


def cmd_tune(args) -> int:
    if args.n < 2:
        raise DifflabError(f"--n: must be >= 2 (half of the samples are held out), got {args.n}")
    from .sampling.tuned import tunable_samplers

    model = _load_run(args.run, args.device)
    sampler = args.sampler or model.cfg.sample.sampler
    if sampler not in tunable_samplers():
        raise DifflabError(f"--sampler {sampler}: only deterministic fixed-grid samplers can be tuned "
                           f"({', '.join(tunable_samplers())})")
    result = model.tune_schedule(sampler, _steps_from(args, sampler), n=args.n, seed=args.seed,
                                 max_evals=args.max_evals, progress=not args.quiet)
    steps, kept = result.steps, result.info["kept"]
    print(f"{sampler}, {steps} steps ({result.nfe} calls): ODE error on {result.n - result.info['n_calibration']} "
          f"held-out samples {result.error:.4g} with the tuned grid vs {result.baseline_error:.4g} with "
          f"{result.baseline} ({result.error / result.baseline_error:.2f}x)"
          + ("" if kept == "tuned" else f"; the tuned grid did not generalise, kept {kept}"))
    print("grid: " + " ".join(f"{v:.4g}" for v in result.sigmas))
    print(f"tuning cost: {result.calls} denoiser calls on batches of <= {result.info['n_calibration']}")
    print(f"wrote {model.schedules_file}; use it with: difflab sample {args.run} --sampler {sampler} "
          f"--steps {steps} --schedule tuned")
    return 0


# -------------------------------------------------------------------------------------------------
# likelihood
# -------------------------------------------------------------------------------------------------


def cmd_likelihood(args) -> int:
    import math

    import numpy as np

    from .data import load_data, write_csv
    from .likelihood import nll_in_data_units

    if args.csv:
        _check_output("--csv", Path(args.csv))
    model = _load_run(args.run, args.device)
    data = load_data(args.data, n=args.n, seed=args.seed)
    if list(data.x.shape[1:]) != list(model.shape):
        raise DifflabError(f"{args.data}: samples of shape {list(data.x.shape[1:])}, the model expects {list(model.shape)}")
    integers = bool((data.x == data.x.round()).all()) if args.dequantize == "auto" else args.dequantize == "on"
    nll = nll_in_data_units(model, data.x, dequantize_integers=integers, trace=args.trace, probes=args.probes,
                            rtol=args.rtol, atol=args.atol, seed=args.seed, progress=not args.quiet)
    dims = math.prod(model.shape)
    se = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    bpd = nll / (dims * math.log(2))
    print(f"NLL {float(nll.mean()):.4f} +- {se:.4f} nats per sample, {float(bpd.mean()):.4f} +- "
          f"{se / (dims * math.log(2)):.4f} bits/dim ({len(nll)} samples of {dims} dims"
          + ("; integer data dequantised: an upper bound on the discrete NLL)" if integers else ")"))
    if args.csv:
        write_csv(args.csv, np.stack([nll.numpy(), bpd.numpy()], 1), ["nll_nats", "bits_per_dim"])
        print(f"wrote {args.csv}")
    return 0


# -------------------------------------------------------------------------------------------------
# demo
# -------------------------------------------------------------------------------------------------


def demo_config(steps: int, minutes: float):
    """The demo: a class-conditional UNet (label dropout 0.1) sampled with classifier-free guidance 2, so
    each digit class is drawn equally often and the samples are crisp. Measured in docs/benchmarks.md."""
    from .config import ExperimentCfg

    cfg = ExperimentCfg().replace("train", steps=steps, max_minutes=minutes, checkpoint_every=500)
    return cfg.replace("model", class_conditional=True).replace("sample", guidance=2.0)


def cmd_demo(args) -> int:
    from . import load
    from .data import load_data
    from .training import train

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise DifflabError(f"{out}: already exists; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    cfg = demo_config(args.steps, args.minutes)
    t0 = time.perf_counter()
    print(f"difflab demo: training a class-conditional UNet on scikit-learn's digits "
          f"({args.steps} steps, <= {args.minutes} min)")
    with _no_partial_run(out, resume=False):
        train(cfg, load_data("digits"), out, data_spec="digits", progress=not args.quiet)
    model = load(out)
    samples = model.sample(100, seed=0, progress=not args.quiet)
    written = write_samples(model, samples, out / "demo_samples.npz")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    print(f"  checkpoint: {out / 'checkpoints'}")
    print(f"  sample grid: {out / 'samples.png'}")
    for path in written:
        print(f"  samples: {path}")
    print(f"next: difflab sample {out} --n 64 --out my_samples.npz")
    return 0


# -------------------------------------------------------------------------------------------------
# parser
# -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .sampling import SAMPLERS, SCHEDULES

    p = _Parser(
        prog="difflab",
        description="Diffusion models on your own data: train, sample, and more.",
        epilog="example:\n  difflab demo\n  difflab train --data digits --out runs/digits --steps 2000",
        formatter_class=_Formatter,
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser(
        "train", help="train a model on a dataset", formatter_class=_Formatter,
        description="Train a diffusion model. DATA is 'digits', a synthetic name (gmm2d, moons, rings, ...),\n"
        "a folder of PNG/JPEG images, a .npy/.npz array, an MNIST-style IDX file, or a CSV file.",
        epilog=_fmt("""
examples:
  difflab train --data digits --out runs/digits --steps 2000
  difflab train --data points.npy --out runs/points --set train.lr=1e-3
  difflab train --data digits --out runs/digits --resume --steps 4000
"""),
    )
    t.add_argument("--data", required=True, help="dataset name or path")
    t.add_argument("--out", required=True, type=_nonempty("--out"),
                   help="run folder (checkpoints, config.json, metrics.csv)")
    t.add_argument("--steps", type=_positive_int("--steps"), help="optimiser steps (config: train.steps)")
    t.add_argument("--config", help="a .json or .toml config file")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=1e-3")
    t.add_argument("--batch-size", type=_positive_int("--batch-size"), dest="batch_size")
    t.add_argument("--lr", type=_float_in("--lr", 0.0, strict=True))
    t.add_argument("--seed", type=SEED)
    t.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    t.add_argument("--minutes", type=_float_in("--minutes", 0.0), help="stop after this many minutes of training (with a checkpoint)")
    t.add_argument("--checkpoint-every", type=_positive_int("--checkpoint-every"), dest="checkpoint_every")
    t.add_argument("--backbone", help="unet, dit or mlp (default: chosen from the data)")
    t.add_argument("--preset", help="backbone preset, e.g. tiny/small/base for unet")
    t.add_argument("--class-conditional", action="store_true", help="train on the data's labels")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "sample", help="draw samples from a trained run", formatter_class=_Formatter,
        description="Draw samples. Images go to an .npz (uint8 'images', N x H x W x C, in the data's own\n"
        "units) with a PNG grid beside it; tabular samples go to a .csv (or .npz).",
        epilog=_fmt("""
examples:
  difflab sample runs/digits --n 64 --out samples.npz
  difflab sample runs/digits --n 500 --out samples.npz --sampler euler --steps 40 --seed 1
  difflab sample runs/digits --n 64 --out samples.npz --sampler heun --nfe 19
  difflab sample runs/points --n 1000 --out points.csv
"""),
    )
    s.add_argument("run", help="run folder written by 'difflab train'")
    s.add_argument("--n", type=_positive_int("--n"), default=64, help="number of samples")
    s.add_argument("--out", required=True, help="output file (.npz for images; .csv or .npz for tables)")
    s.add_argument("--sampler", choices=SAMPLERS.names(), default=None, help="default: the run's (heun)")
    s.add_argument("--steps", type=_positive_int("--steps", MAX_SAMPLER_STEPS), default=None, help="sampler steps (default: the run's; 18 for images, 64 for tables)")
    s.add_argument("--nfe", type=_positive_int("--nfe", 4 * MAX_SAMPLER_STEPS), default=None,
                   help="budget of denoiser calls per sample; picks the most steps that fit (instead of --steps)")
    s.add_argument("--schedule", choices=[*SCHEDULES.names(), "tuned"], default=None,
                   help="sigma grid (default: karras); 'tuned' = the run's grid from 'difflab tune'")
    s.add_argument("--sigma-last", type=_float_in("--sigma-last", 0.0, strict=True), dest="sigma_last", default=None,
                   help="smallest nonzero grid level, in model units (default: the run's, else sigma_min); "
                   "0.05-0.1 helps at few steps")
    s.add_argument("--seed", type=SEED, default=0, help="sample i uses seed + i")
    s.add_argument("--class", type=int, dest="class_label", default=None,
                   help="class label for class-conditional runs (default: all classes in turn)")
    s.add_argument("--guidance", type=_float_in("--guidance", 0.0), default=None,
                   help="classifier-free guidance weight: 1 = conditional model, 0 = unconditional (default: the run's)")
    s.add_argument("--batch-size", type=_positive_int("--batch-size"), dest="batch_size", default=256)
    s.add_argument("--device", type=_device("--device"), default="cpu")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sample)

    tu = sub.add_parser(
        "tune", help="fit a sigma grid to a trained run for few-step sampling", formatter_class=_Formatter,
        description="Fit the noise levels of a deterministic sampler's grid to this model, so that with few\n"
        "denoiser calls its samples land closer to the exact probability-flow ODE endpoint (LD3-style:\n"
        "Nelder-Mead on the endpoint error against an adaptive rk45 solve; half of --n is held out, and\n"
        "the tuned grid is kept only if it also wins there). Stored in RUN/schedules.json.",
        epilog=_fmt("""
examples:
  difflab tune runs/digits --sampler dpmpp_2m --nfe 5
  difflab sample runs/digits --n 64 --out samples.npz --sampler dpmpp_2m --nfe 5 --schedule tuned
"""),
    )
    tu.add_argument("run", help="run folder written by 'difflab train'")
    tu.add_argument("--sampler", choices=SAMPLERS.names(), default=None, help="default: the run's (heun)")
    tu.add_argument("--steps", type=_positive_int("--steps", MAX_SAMPLER_STEPS), default=None,
                    help="sampler steps (default: the run's)")
    tu.add_argument("--nfe", type=_positive_int("--nfe", 4 * MAX_SAMPLER_STEPS), default=None,
                    help="budget of denoiser calls per sample (instead of --steps)")
    tu.add_argument("--n", type=_positive_int("--n", 1 << 16), default=64,
                    help="noise samples (half calibrate, half are held out)")
    tu.add_argument("--max-evals", type=_positive_int("--max-evals"), dest="max_evals", default=None,
                    help="sampler runs the search may spend (default: 60 per free grid level)")
    tu.add_argument("--seed", type=SEED, default=1, help="seed of the tuning noise")
    tu.add_argument("--device", type=_device("--device"), default="cpu")
    tu.add_argument("--quiet", action="store_true")
    tu.set_defaults(func=cmd_tune)

    lk = sub.add_parser(
        "likelihood", help="negative log-likelihood of data under a trained run", formatter_class=_Formatter,
        description="Exact NLL through the probability-flow ODE (instantaneous change of variables), in nats\n"
        "per sample and bits per dimension, in the data's own units, with a standard error.",
        epilog=_fmt("""
examples:
  difflab likelihood runs/points --data heldout.npy
  difflab likelihood runs/digits --data digits --n 200 --trace hutchinson --probes 2 --csv nll.csv
"""),
    )
    lk.add_argument("run", help="run folder written by 'difflab train'")
    lk.add_argument("--data", required=True, help="dataset name or path (same kind and shape as the run's)")
    lk.add_argument("--n", type=_positive_int("--n"), default=None, help="score a random subset of this size")
    lk.add_argument("--trace", choices=["auto", "exact", "hutchinson"], default="auto",
                    help="divergence: exact (small dims) or Hutchinson's estimator; auto = exact up to 32 dims")
    lk.add_argument("--probes", type=_positive_int("--probes", 1024), default=1, help="Hutchinson probes per sample")
    lk.add_argument("--rtol", type=_float_in("--rtol", 0.0, 1.0, strict=True), default=1e-5)
    lk.add_argument("--atol", type=_float_in("--atol", 0.0, 1.0), default=1e-5)
    lk.add_argument("--dequantize", choices=["auto", "on", "off"], default="auto",
                    help="add U[0,1) noise to integer-valued data (auto: when every value is an integer)")
    lk.add_argument("--csv", help="write per-sample nll_nats and bits_per_dim here")
    lk.add_argument("--seed", type=SEED, default=0)
    lk.add_argument("--device", type=_device("--device"), default="cpu")
    lk.add_argument("--quiet", action="store_true")
    lk.set_defaults(func=cmd_likelihood)

    from .cli_tasks import add_task_commands

    add_task_commands(sub, _Formatter, _positive_int, _float_in, _device, SEED)

    d = sub.add_parser(
        "demo", help="train on the bundled digits and write a sample grid (a few minutes on a CPU)",
        formatter_class=_Formatter,
        description="The main job in one command: train on scikit-learn's bundled 8x8 digits,\n"
        "write a checkpoint and a PNG grid of samples, and print where they are.",
        epilog="example:\n  difflab demo --out difflab-demo",
    )
    d.add_argument("--out", type=_nonempty("--out"), default="difflab-demo", help="run folder")
    d.add_argument("--steps", type=_positive_int("--steps"), default=DEMO_STEPS)
    d.add_argument("--minutes", type=_float_in("--minutes", 0.0), default=3.5,
                   help="training time limit (0 = none)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show = warnings.showwarning
    if not args.debug:
        warnings.showwarning = _one_line_warning
    try:
        return args.func(args)
    except DifflabError as e:
        if args.debug:
            raise
        print(f"difflab: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        if args.debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        msg = str(e.strerror if isinstance(e, OSError) and e.strerror else e).splitlines()[0]
        print(f"difflab: error: {where}{msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if args.debug:
            raise
        print("difflab: error: out of memory; try a smaller --n, --batch-size or model", file=sys.stderr)
        return 2
    except Exception as e:  # a bug or an unforeseen input: still one line; --debug shows the traceback
        if args.debug:
            raise
        msg = " ".join(str(e).split())[:300] or "(no message)"
        print(f"difflab: error: unexpected {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
