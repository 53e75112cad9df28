"""The ``difflab`` command line: ``train``, ``sample`` and ``demo``.

The CLI holds no math: each command parses arguments, calls the Python API and writes files atomically.
Errors a user can fix (bad file, bad argument) are printed as one line and exit with status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from .errors import DifflabError

DEMO_STEPS = 2500


def _fmt(text: str) -> str:
    return text.strip("\n")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line (not the whole usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v

    return parse


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
    from .io import atomic_write

    vr = model.data_info.get("value_range")
    written = []
    if model.kind == "image":
        images = to_uint8_images(samples, vr)
        atomic_write(out, lambda f: np.savez(f, images=images, value_range=np.asarray(vr, dtype=np.float64)))
        grid = out.with_suffix(".png")
        save_image_grid(to_display_uint8(samples[:256], vr), grid)
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


def cmd_sample(args) -> int:
    from . import load

    out = Path(args.out)
    if not out.parent.is_dir():
        raise DifflabError(f"--out {out}: folder {out.parent} does not exist")
    model = load(args.run, device=args.device)
    steps = args.steps
    if args.nfe is not None:
        from .sampling import nfe, steps_for_nfe

        if steps is not None:
            raise DifflabError("--steps and --nfe: give one or the other")
        sampler = args.sampler or model.cfg.sample.sampler
        steps = steps_for_nfe(sampler, args.nfe)
        print(f"{sampler}: {steps} steps = {nfe(sampler, steps)} denoiser calls per sample"
              + (" (x2 with guidance)" if model.num_classes else ""))
    allowed = (".npz",) if model.kind == "image" else (".csv", ".npz")
    if out.suffix.lower() not in allowed:
        raise DifflabError(f"--out {out}: {model.kind} samples are written as {' or '.join(allowed)}")
    labels = None
    if args.class_label is not None:
        labels = [args.class_label] * args.n
    samples = model.sample(
        args.n, sampler=args.sampler, steps=steps, schedule=args.schedule, seed=args.seed,
        class_labels=labels, guidance=args.guidance, batch_size=args.batch_size, progress=not args.quiet,
    )
    for path in write_samples(model, samples, out):
        print(f"wrote {path}")
    return 0


# -------------------------------------------------------------------------------------------------
# likelihood
# -------------------------------------------------------------------------------------------------


def cmd_likelihood(args) -> int:
    import math

    import numpy as np

    from . import load
    from .data import load_data, write_csv
    from .likelihood import nll_in_data_units

    model = load(args.run, device=args.device)
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
    t.add_argument("--out", required=True, help="run folder (checkpoints, config.json, metrics.csv)")
    t.add_argument("--steps", type=_positive_int("--steps"), help="optimiser steps (config: train.steps)")
    t.add_argument("--config", help="a .json or .toml config file")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=1e-3")
    t.add_argument("--batch-size", type=_positive_int("--batch-size"), dest="batch_size")
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    t.add_argument("--minutes", type=float, help="stop after this many minutes of training (with a checkpoint)")
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
    s.add_argument("--steps", type=_positive_int("--steps"), default=None, help="sampler steps (default: the run's; 18 for images, 64 for tables)")
    s.add_argument("--nfe", type=_positive_int("--nfe"), default=None,
                   help="budget of denoiser calls per sample; picks the most steps that fit (instead of --steps)")
    s.add_argument("--schedule", choices=SCHEDULES.names(), default=None, help="sigma grid (default: karras)")
    s.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    s.add_argument("--class", type=int, dest="class_label", default=None,
                   help="class label for class-conditional runs (default: all classes in turn)")
    s.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight: 1 = conditional model, 0 = unconditional (default: the run's)")
    s.add_argument("--batch-size", type=_positive_int("--batch-size"), dest="batch_size", default=256)
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sample)

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
    lk.add_argument("--probes", type=_positive_int("--probes"), default=1, help="Hutchinson probes per sample")
    lk.add_argument("--rtol", type=float, default=1e-5)
    lk.add_argument("--atol", type=float, default=1e-5)
    lk.add_argument("--dequantize", choices=["auto", "on", "off"], default="auto",
                    help="add U[0,1) noise to integer-valued data (auto: when every value is an integer)")
    lk.add_argument("--csv", help="write per-sample nll_nats and bits_per_dim here")
    lk.add_argument("--seed", type=int, default=0)
    lk.add_argument("--device", default="cpu")
    lk.add_argument("--quiet", action="store_true")
    lk.set_defaults(func=cmd_likelihood)

    d = sub.add_parser(
        "demo", help="train on the bundled digits and write a sample grid (a few minutes on a CPU)",
        formatter_class=_Formatter,
        description="The main job in one command: train on scikit-learn's bundled 8x8 digits,\n"
        "write a checkpoint and a PNG grid of samples, and print where they are.",
        epilog="example:\n  difflab demo --out difflab-demo",
    )
    d.add_argument("--out", default="difflab-demo", help="run folder")
    d.add_argument("--steps", type=_positive_int("--steps"), default=DEMO_STEPS)
    d.add_argument("--minutes", type=float, default=3.5, help="training time limit")
    d.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
