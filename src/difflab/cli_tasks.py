"""The task commands of the ``difflab`` CLI: ``inpaint``, ``denoise`` and ``anomaly``.

Like ``difflab.cli`` they hold no math: they read inputs with the data loaders, call the task APIs
(``difflab.tasks.inpaint``, ``difflab.tasks.denoise``, ``difflab.anomaly``) and write outputs atomically.

Units: a run remembers the value range of its training data (0..16 for sklearn digits, 0..255 for 8-bit
images). Image inputs read from 8-bit files (PNG, JPEG, IDX; range 0..255) are mapped linearly onto the run's
range when that differs, and outputs are written back in the input's own range, so a PNG goes in and a PNG
in the same units comes out. Other inputs (.npy/.npz arrays, CSV) are taken to be in the run's units.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, DifflabError

EIGHT_BIT = (0.0, 255.0)


@dataclass
class Inputs:
    """Input samples in the run's data units, and how to map results back to the input's units."""

    x: torch.Tensor
    labels: torch.Tensor | None
    in_range: tuple[float, float] | None  # the input's value range when it was rescaled, else None
    run_range: tuple[float, float] | None

    def to_input_units(self, y: torch.Tensor) -> torch.Tensor:
        if self.in_range is None:
            return y
        (a, b), (c, d) = self.run_range, self.in_range
        return (y - a) * ((d - c) / (b - a)) + c

    @property
    def factor(self) -> float:
        """Input units per run unit (for a noise level stated in the input's units)."""
        if self.in_range is None:
            return 1.0
        (a, b), (c, d) = self.run_range, self.in_range
        return (d - c) / (b - a)

    @property
    def out_range(self):
        return self.in_range or self.run_range


def read_inputs(flag: str, spec: str, model, label_column: str | None = None) -> Inputs:
    """Load ``spec`` with ``difflab.load_data`` and check it against the run (kind, shape)."""
    from .data import load_data

    data = load_data(spec, label_column=label_column)
    if data.kind != model.kind or tuple(data.sample_shape) != tuple(model.shape):
        raise DataError(f"{flag} {spec}: {data.kind} data of shape {list(data.sample_shape)}, but the run "
                        f"was trained on {model.kind} data of shape {list(model.shape)}")
    run_range = model.data_info.get("value_range")
    run_range = None if run_range is None else (float(run_range[0]), float(run_range[1]))
    x, in_range = data.x, None
    if model.kind == "image" and data.value_range == EIGHT_BIT and run_range not in (None, EIGHT_BIT):
        in_range = EIGHT_BIT
        (a, b), (c, d) = in_range, run_range
        x = (x - a) * ((d - c) / (b - a)) + c
    return Inputs(x, data.labels, in_range, run_range)


def read_mask(spec: str, images: torch.Tensor) -> torch.Tensor:
    """A mask file (image, folder, .npy/.npz, CSV) as bool, True = fill: 0/1 values, or a black/white image
    (0/255). Shapes and values are checked by ``tasks.inpaint.broadcast_mask``, the API's own check."""
    from .data import load_data
    from .tasks.inpaint import broadcast_mask

    try:
        m = load_data(spec, label_column="").x
    except DataError as e:
        raise DataError(f"--mask {e}") from None
    if m.shape[0] == 1:
        m = m[0]
    if set(torch.unique(m).tolist()) <= {0.0, 255.0}:
        m = m.to(torch.uint8)  # 8-bit files load as floats; broadcast_mask reads uint8 0/255 as black/white
    try:
        return broadcast_mask(m, tuple(images.shape), "the input")
    except ValueError as e:
        raise DataError(f"--mask {spec}: {e}") from None


def write_outputs(flag: str, out: Path, y: torch.Tensor, model, inputs: Inputs) -> list[Path]:
    """Images: ``.npz`` (uint8 ``images`` N x H x W x C and float32 ``x`` in the input's units) with a PNG grid
    beside it, or a single ``.png`` for one image. Tables: ``.csv`` (or ``.npz`` with ``samples``)."""
    from .data import save_image_grid, to_display_uint8, to_uint8_images, write_csv
    from .io import atomic_path, atomic_write

    y = inputs.to_input_units(y)
    vr = inputs.out_range
    suffix = out.suffix.lower()
    if model.kind == "image":
        if suffix == ".png":
            _check_count(flag, out, y.shape[0])
            from PIL import Image

            img = to_uint8_images(y, vr)[0]
            with atomic_path(out) as tmp:
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(tmp, format="PNG")
            return [out]
        grid = out.with_suffix(".png")
        with atomic_path(out) as tmp_npz, atomic_path(grid) as tmp_grid:
            with open(tmp_npz, "wb") as f:
                np.savez(f, images=to_uint8_images(y, vr), x=y.numpy().astype(np.float32),
                         value_range=np.asarray(vr, dtype=np.float64))
            save_image_grid(to_display_uint8(y[:256], vr), tmp_grid)
        return [out, grid]
    arr = y.numpy().astype(np.float64)
    columns = model.data_info.get("columns") or [f"x{i}" for i in range(arr.shape[1])]
    if suffix == ".npz":
        atomic_write(out, lambda f: np.savez(f, samples=arr, columns=np.asarray(columns)))
    else:
        write_csv(out, arr, columns)
    return [out]


def _check_suffix(flag: str, out: Path, model, allowed_images=(".npz", ".png")) -> None:
    from .cli import _check_output

    allowed = allowed_images if model.kind == "image" else (".csv", ".npz")
    if out.suffix.lower() not in allowed:
        raise DifflabError(f"{flag} {out}: {model.kind} results are written as {' or '.join(allowed)}")
    _check_output(flag, out)
    if model.kind == "image" and out.suffix.lower() == ".npz":
        _check_output(flag, out.with_suffix(".png"))


def _check_count(flag: str, out: Path, n: int) -> None:
    if out.suffix.lower() == ".png" and n != 1:
        raise DifflabError(f"{flag} {out}: a .png holds one image, the input has {n}; write an .npz")


def _open_io(args, flag: str, spec: str):
    """The checked ``--out`` path, the loaded run and its inputs (inpaint and denoise share this)."""
    from .cli import _load_run

    out = Path(args.out)
    model = _load_run(args.run, args.device)
    _check_suffix("--out", out, model)
    inputs = read_inputs(flag, spec, model)
    _check_count("--out", out, inputs.x.shape[0])
    return out, model, inputs


def _class_labels(args, model, n: int):
    if args.class_label is None:
        return None
    if not model.num_classes:
        raise DifflabError("--class: this run was not trained class-conditionally")
    if not 0 <= args.class_label < model.num_classes:
        raise DifflabError(f"--class: must be in [0, {model.num_classes - 1}], got {args.class_label}")
    return [args.class_label] * n


# -------------------------------------------------------------------------------------------------
# inpaint
# -------------------------------------------------------------------------------------------------


def cmd_inpaint(args) -> int:
    from .tasks import inpaint as ip

    out, model, inputs = _open_io(args, "--image", args.image)
    mask = read_mask(args.mask, inputs.x)
    steps = args.steps or ip.DEFAULT_STEPS[args.method]
    options = {k: v for k, v in (("jump_length", args.jump_length), ("resamplings", args.resamplings),
                                 ("eta", args.eta)) if v is not None}
    calls = ip.nfe(args.method, steps, options.get("jump_length", 10), options.get("resamplings"))
    if not args.quiet:
        print(f"{args.method}: {steps} steps = {calls * args.samples} denoiser calls per image"
              + (f" ({args.samples} fills averaged)" if args.samples > 1 else "")
              + (" (x2 with guidance)" if model.num_classes and args.class_label is not None else "")
              + (", each with a backward pass" if args.method == "pigdm" else ""))
    filled = ip.inpaint(model, inputs.x, mask, method=args.method, steps=steps, seed=args.seed,
                        class_labels=_class_labels(args, model, inputs.x.shape[0]), guidance=args.guidance,
                        samples=args.samples, batch_size=args.batch_size, progress=not args.quiet, **options)
    for path in write_outputs("--out", out, filled, model, inputs):
        print(f"wrote {path}")
    return 0


# -------------------------------------------------------------------------------------------------
# denoise
# -------------------------------------------------------------------------------------------------


def _sigma_arg(text: str):
    if text == "auto":
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sigma must be a number or 'auto', got {text!r}") from None
    if not (v > 0 and np.isfinite(v)):
        raise argparse.ArgumentTypeError(f"--sigma must be > 0, got {text}")
    return v


def cmd_denoise(args) -> int:
    from .tasks import denoise as dn

    out, model, inputs = _open_io(args, "--input", args.input)
    sigma = args.sigma
    if sigma != "auto":
        if args.sigma_scale == "unit":
            sigma = sigma * (inputs.out_range[1] - inputs.out_range[0])
        sigma = sigma / inputs.factor  # input units -> the run's units
    res = dn.denoise(model, inputs.x, sigma, method=args.method, steps=args.steps, samples=args.samples,
                     seed=args.seed, class_labels=_class_labels(args, model, inputs.x.shape[0]),
                     batch_size=args.batch_size, progress=not args.quiet)
    used = torch.as_tensor(res.sigma, dtype=torch.float64).reshape(-1) * inputs.factor
    if not args.quiet:
        what = "estimated" if args.sigma == "auto" else "used"
        print(f"sigma {what} (input units): median {float(used.median()):.4g}, "
              f"range [{float(used.min()):.4g}, {float(used.max()):.4g}]")
    for path in write_outputs("--out", out, res.x0, model, inputs):
        print(f"wrote {path}")
    return 0


# -------------------------------------------------------------------------------------------------
# anomaly
# -------------------------------------------------------------------------------------------------


def read_label_file(path: Path) -> torch.Tensor:
    """One numeric label per sample from ``.npy`` (1-D), ``.npz`` (array ``y``/``labels``, else the only
    one) or a text/CSV file with one value per line (an optional header line is skipped)."""
    from .data.arrays import is_number

    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arr = z[next((k for k in ("y", "labels") if k in z.files), z.files[0])]
        else:
            lines = [ln.strip().split(",")[-1] for ln in path.read_text().splitlines() if ln.strip()]
            if lines and not is_number(lines[0]):
                lines = lines[1:]
            arr = np.asarray([float(v) for v in lines])
        arr = np.asarray(arr, dtype=np.float64)
    except (OSError, ValueError, IndexError, KeyError) as e:
        raise DataError(f"--labels {path}: not a readable label file ({' '.join(str(e).split())[:120]})") from None
    if arr.ndim != 1 and not (arr.ndim == 2 and arr.shape[1] == 1):
        raise DataError(f"--labels {path}: expected one label per sample, got an array of shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise DataError(f"--labels {path}: labels must be finite numbers (1 = anomaly, 0 = normal)")
    return torch.from_numpy(arr.reshape(-1))


def _anomaly_labels(args, spec: str, model) -> tuple[Inputs, torch.Tensor | None]:
    """The --data samples and the --labels (1 = anomaly): a column of the --data CSV/.npz, or a file
    (.npy, .csv, ...) with one numeric label per sample."""
    if args.labels is None:
        return read_inputs("--data", spec, model), None
    path = Path(args.labels)
    if not path.is_file():  # a column name
        inputs = read_inputs("--data", spec, model, label_column=args.labels)
        if inputs.labels is None:
            raise DataError(f"--labels {args.labels}: no such column in {spec} (and no such file)")
        return inputs, inputs.labels
    inputs = read_inputs("--data", spec, model)
    lab = read_label_file(path)
    if lab.numel() != inputs.x.shape[0]:
        raise DataError(f"--labels {path}: {lab.numel()} labels for {inputs.x.shape[0]} samples")
    return inputs, lab


def cmd_anomaly(args) -> int:
    from . import anomaly
    from .cli import _check_output, _load_run
    from .data import load_data, write_csv

    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise DifflabError(f"--out {out}: anomaly scores are written as .csv")
    if args.combine != "auto" and args.score != "recon":
        raise DifflabError(f"--combine {args.combine}: applies to --score recon only, not {args.score}")
    _check_output("--out", out)
    model = _load_run(args.run, args.device)
    maps_path = Path(args.maps) if args.maps else out.with_name(out.stem + "_maps.png")
    if model.kind == "image" and args.score == "recon":
        _check_output("--maps", maps_path)
    inputs, labels = _anomaly_labels(args, args.data, model)
    reference = None
    if args.score == "recon":
        spec = args.reference or model.data_info.get("spec")
        try:
            ref = load_data(spec, n=min(512, model.data_info.get("count", 512)))
            if tuple(ref.sample_shape) == tuple(model.shape):
                reference = ref.x
            elif args.reference:
                raise DataError(f"--reference {spec}: samples of shape {tuple(ref.sample_shape)}, the run's are "
                                f"{tuple(model.shape)}")
        except DifflabError:
            if args.reference:
                raise
    if args.combine == "profile" and reference is None:
        raise DifflabError("--combine profile: needs reference data; pass --reference (normal samples)")
    res = anomaly.anomaly_scores(model, inputs.x, score=args.score, reference=reference, combine=args.combine,
                                 seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    scores = res.scores.double().numpy()
    is_anomaly = None if labels is None else (labels.double().numpy() != 0).astype(np.int64)
    write_csv(out, scores[:, None], ["score"], labels=is_anomaly)
    print(f"wrote {out} ({args.score} scores; higher = more anomalous)")
    if res.maps is not None and model.kind == "image":
        anomaly.save_anomaly_maps(res.maps[:64], inputs.to_input_units(inputs.x[:64]), maps_path,
                                  value_range=inputs.out_range)
        print(f"wrote {maps_path} (per-pixel maps of the first {min(64, scores.shape[0])} samples)")
    if labels is not None:
        auroc, auprc = anomaly.auroc_auprc(scores, is_anomaly)
        print(f"AUROC {auroc:.4f}  AUPRC {auprc:.4f}  ({int(is_anomaly.sum())} anomalies of {scores.shape[0]})")
    return 0


# -------------------------------------------------------------------------------------------------
# parsers
# -------------------------------------------------------------------------------------------------


def add_task_commands(sub, formatter, positive_int, float_in, device, seed_type) -> None:
    """Register ``inpaint``, ``denoise`` and ``anomaly`` on the ``difflab`` subparsers."""
    from .tasks.denoise import METHODS as DENOISE_METHODS
    from .tasks.inpaint import METHODS as INPAINT_METHODS

    def common(p, batch=256):
        p.add_argument("run", help="run folder written by 'difflab train'")
        p.add_argument("--seed", type=seed_type, default=0, help="sample i uses seed + i")
        p.add_argument("--batch-size", type=positive_int("--batch-size"), dest="batch_size", default=batch)
        p.add_argument("--device", type=device("--device"), default="cpu")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    ip = sub.add_parser(
        "inpaint", help="fill masked pixels (or missing table cells) with a trained run", formatter_class=formatter,
        description="Fill the pixels a mask marks (1 or white = fill, 0 or black = keep); kept pixels are\n"
        "returned exactly as given. --image is a PNG/JPEG, a folder of them, an .npy/.npz batch or an IDX file;\n"
        "--mask is an image or array of the image's shape (one channel, one mask for all, or one per image).\n"
        "Methods: pigdm (default; Song et al. 2023, pseudoinverse guidance: 100 calls, each with a backward\n"
        "pass, ~2.5x DDNM's time; the best fills measured), ddnm (Wang et al. 2023, null-space projection; 100\n"
        "calls) and repaint (Lugmayr et al. 2022, with resampling jumps; 2410 calls at its defaults).",
        epilog="""examples:
  difflab inpaint runs/digits --image photo.png --mask mask.png --out filled.png
  difflab inpaint runs/digits --image batch.npz --mask centre.npy --out filled.npz --method ddnm
  difflab inpaint runs/digits --image batch.npz --mask m.npy --out f.npz --method repaint --steps 100 --resamplings 5
  difflab inpaint runs/digits --image batch.npz --mask m.npy --out mean.npz --samples 8
  difflab inpaint runs/digits --image batch.npz --mask m.npy --out f.npz --method ddnm --resamplings 5 --jump-length 5""",
    )
    common(ip)
    ip.add_argument("--image", "--input", dest="image", required=True, help="image(s) to fill")
    ip.add_argument("--mask", required=True, help="mask image or array: 1/white = fill")
    ip.add_argument("--out", required=True, help="output: .png (one image) or .npz (+ a PNG grid beside it); "
                    "tables: .csv or .npz")
    ip.add_argument("--method", choices=INPAINT_METHODS, default="pigdm",
                    help="pigdm (default; the best fills measured), ddnm (cheapest) or repaint")
    ip.add_argument("--steps", type=positive_int("--steps", 10_000), default=None,
                    help="sigma grid steps (default: 250 for repaint, 100 for ddnm and pigdm)")
    ip.add_argument("--jump-length", type=positive_int("--jump-length"), default=None,
                    help="RePaint's j (10); ddnm/pigdm: the time-travel jump (5 did best on digits)")
    ip.add_argument("--resamplings", type=positive_int("--resamplings"), default=None,
                    help="RePaint's r (10); for ddnm/pigdm > 1 turns on time travel")
    ip.add_argument("--eta", type=float_in("--eta", 0.0, 1.0), default=None,
                    help="ddnm/pigdm: fraction of fresh noise per step (0.85); repaint: DDIM eta (1)")
    ip.add_argument("--samples", type=positive_int("--samples", 1024), default=1,
                    help="fills averaged per image (the posterior mean as K grows: best PSNR, blurrier; K x cost)")
    ip.add_argument("--class", type=int, dest="class_label", default=None, help="class for class-conditional runs")
    ip.add_argument("--guidance", type=float_in("--guidance", 0.0), default=None)
    ip.set_defaults(func=cmd_inpaint)

    dn = sub.add_parser(
        "denoise", help="remove Gaussian noise of a known or estimated level", formatter_class=formatter,
        description="Restore data corrupted by additive Gaussian noise. --sigma is the noise std in the input's\n"
        "own units (0-255 for 8-bit images; with --sigma-scale unit, a fraction of the value range), or 'auto'\n"
        "to estimate it per image. Methods: tweedie (the posterior mean D(y, sigma), one denoiser call) and\n"
        "posterior (the reverse SDE from the input's noise level; --samples K averages K draws).",
        epilog="""examples:
  difflab denoise runs/digits --input noisy.png --sigma 25 --out clean.png
  difflab denoise runs/digits --input noisy.npz --sigma 0.1 --sigma-scale unit --out clean.npz
  difflab denoise runs/digits --input noisy.npz --sigma auto --out clean.npz --method posterior --samples 8""",
    )
    common(dn)
    dn.add_argument("--input", required=True, help="noisy image(s) or table")
    dn.add_argument("--sigma", required=True, type=_sigma_arg, help="noise std, or 'auto' (images)")
    dn.add_argument("--sigma-scale", choices=["data", "unit"], default="data",
                    help="data: --sigma in the input's units; unit: as a fraction of the value range")
    dn.add_argument("--out", required=True, help="output: .png (one image) or .npz; tables: .csv or .npz")
    dn.add_argument("--method", choices=DENOISE_METHODS, default="tweedie")
    dn.add_argument("--samples", type=positive_int("--samples", 1024), default=1,
                    help="posterior: average this many draws")
    dn.add_argument("--steps", type=positive_int("--steps", 10_000), default=None, help="posterior: sampler steps")
    dn.add_argument("--class", type=int, dest="class_label", default=None, help="class for class-conditional runs")
    dn.set_defaults(func=cmd_denoise)

    an = sub.add_parser(
        "anomaly", help="anomaly scores (and per-pixel maps) under a trained run", formatter_class=formatter,
        description="Score how unlikely each sample is under the run's model; higher = more anomalous.\n"
        "--score recon (default): noise to several levels, denoise, measure the distance (AnoDDPM-style);\n"
        "nll: exact negative log-likelihood through the probability-flow ODE; elbo: the variational bound.\n"
        "For images, recon also writes per-pixel heat maps. With --labels it prints AUROC and AUPRC.",
        epilog="""examples:
  difflab anomaly runs/cardio --data cardio_test.csv --out scores.csv --labels label
  difflab anomaly runs/digits --data test.npz --out scores.csv --labels test_labels.npy
  difflab anomaly runs/points --data new.csv --out scores.csv --score nll
  difflab anomaly runs/mnist --data test.npz --out scores.csv --reference normal.npz --combine mean""",
    )
    common(an)
    an.add_argument("--data", required=True, help="samples to score (same kind and shape as the run's)")
    an.add_argument("--out", required=True, help="scores .csv, one row per sample in input order (score[, label])")
    an.add_argument("--score", choices=["recon", "nll", "elbo"], default="recon")
    an.add_argument("--labels", default=None,
                    help="1 = anomaly: a column of the --data CSV/.npz, or a file with one label per sample")
    an.add_argument("--reference", default=None,
                    help="recon: normal data that calibrates each noise level (default: the run's training data)")
    an.add_argument("--combine", choices=["auto", "profile", "mean"], default="auto",
                    help="recon: combine the noise levels by the reference's error profile (Mahalanobis) or by "
                    "their mean; auto = profile for images, mean for tables")
    an.add_argument("--maps", default=None, help="images: PNG of per-pixel maps (default: OUT_maps.png)")
    an.set_defaults(func=cmd_anomaly)
