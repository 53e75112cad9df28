"""Every CLI command against a matrix of bad inputs (issue 6).

Each row must give: a non-zero exit, exactly one non-empty line on stderr (no traceback, no warning
block), a message that names the offending file or field, and no partial output: the output file or
folder does not exist afterwards, or is byte-for-byte unchanged when it existed before.

Most rows run ``difflab.cli.main`` in-process (fast); a few run ``python -m difflab`` in a subprocess to
check the real exit status and stderr, warnings included.

To add a command (e.g. ``inpaint``, ``denoise``, ``anomaly``): append rows to ``CASES``, one per bad input,
with ``_c(id, argv, needle, outputs)``. ``argv``, ``needle`` and ``outputs`` are templates formatted with
``{bad}`` (the folder of bad files built by ``bad_files``: corrupt.png, sizes/, nonnumeric.csv, ...),
``{tab}`` / ``{img}`` (tiny trained tabular / image runs), ``{runs}`` (damaged run folders: ``empty``,
``nockpt``, ``truncated``, ``forged``, ``reshaped``, ``badjson``) and ``{tmp}`` (this test's own empty
folder). ``outputs`` lists what the command would write: a trailing ``/`` marks a folder; each output is
absent in the ``fresh`` variant and created beforehand (with placeholder content) in the ``preexisting``
variant, and must be unchanged afterwards. A leading ``+`` marks an obstacle that exists in both variants
(e.g. a folder where the PNG grid would go). ``needle`` is the file, flag or config key the one-line
message must name. Add a row to ``SUBPROCESS_CASES`` to also check it in a real process.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflab.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TAB_TRAIN = ["--steps", "4", "--batch-size", "32", "--quiet", "--set", 'model.preset="small"']


# -------------------------------------------------------------------------------------------------
# fixtures: bad files, tiny runs, damaged runs
# -------------------------------------------------------------------------------------------------


def _png(path: Path, size=(8, 8), mode="L") -> None:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    for name in ("empty.csv", "empty.npy", "empty.png", "empty.json"):
        (d / name).write_bytes(b"")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    (d / "corruptdir").mkdir()
    _png(d / "corruptdir" / "good.png")
    (d / "corruptdir" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 5)
    (d / "sizes").mkdir()
    _png(d / "sizes" / "a.png", (8, 8))
    _png(d / "sizes" / "b.png", (9, 8))
    (d / "channels").mkdir()
    _png(d / "channels" / "a.png", mode="L")
    _png(d / "channels" / "b.png", mode="RGB")
    (d / "nonnumeric.csv").write_text("x0,x1\n1.0,2.0\n3.0,abc\n")
    (d / "header.csv").write_text("x0,x1\n")
    (d / "nan.csv").write_text("x0,x1\n1.0,2.0\nnan,0.5\n")
    (d / "inf.csv").write_text("x0,x1\n1.0,inf\n0.0,0.5\n")
    np.save(d / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0]]))
    np.save(d / "inf.npy", np.array([[0.0, 1.0], [2.0, -np.inf]]))
    np.save(d / "three.npy", np.random.default_rng(0).normal(size=(20, 3)))
    np.save(d / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    (d / "badtype.json").write_text(json.dumps({"train": {"lr": "fast"}}))
    (d / "badtype.toml").write_text('[train]\nsteps = "many"\n')
    (d / "notjson.json").write_text("{train: ")
    (d / "afile").write_text("a regular file, not a folder\n")
    (d / "ragged.csv").write_text("x0,x1\n1,2\n3\n")
    (d / "latin1.csv").write_bytes("x0,x1\n1,2\n3,\xe9\n".encode("latin-1"))
    (d / "truncated.npy").write_bytes((d / "three.npy").read_bytes()[:200])
    (d / "text.npy").write_text("hello, not numpy")
    (d / "notzip.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(d / "transparent.png")
    (d / "noimages").mkdir()
    (d / "noimages" / "readme.txt").write_text("no images here\n")
    mask = np.zeros((1, 8, 8), np.float32)
    mask[:, 2:6, 2:6] = 1
    np.save(d / "mask8.npy", mask)
    np.save(d / "mask7.npy", mask[:, :7])
    np.save(d / "softmask.npy", mask * 0.5)
    np.save(d / "labels3.npy", np.array([0, 1, 0]))
    np.save(d / "digits4.npy", np.full((4, 1, 8, 8), 3.0, np.float32))
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny tabular run, a tiny image run, and damaged copies of the tabular run."""
    d = tmp_path_factory.mktemp("runs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--data", "gmm2d", "--out", str(d / "tab"), *TAB_TRAIN]) == 0
        assert main(["train", "--data", "digits", "--out", str(d / "img"), "--steps", "2", "--batch-size", "8",
                     "--quiet", "--set", 'model.params={"model_channels": 16}', "--set", "train.sample_grid=0"]) == 0
    (d / "empty").mkdir()
    (d / "nockpt").mkdir()
    shutil.copy(d / "tab" / "config.json", d / "nockpt" / "config.json")
    shutil.copytree(d / "tab", d / "reshaped")  # config.json disagrees with the weights
    cfg = json.loads((d / "reshaped" / "config.json").read_text())
    cfg["data"]["shape"] = [3]
    (d / "reshaped" / "config.json").write_text(json.dumps(cfg))
    shutil.copytree(d / "tab", d / "badjson")
    (d / "badjson" / "config.json").write_text("{")
    for name in ("truncated", "forged"):
        shutil.copytree(d / "tab", d / name)
        ckpt = next((d / name / "checkpoints").glob("step-*"))
        blob = (ckpt / "ema.safetensors").read_bytes()
        if name == "truncated":  # checksum no longer matches
            (ckpt / "ema.safetensors").write_bytes(blob[: len(blob) // 2])
        else:  # garbage with a forged, matching manifest
            _forge(ckpt, "ema.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + blob[100:])
    return {"tab": d / "tab", "img": d / "img", "runs": d}


def _forge(ckpt: Path, name: str, payload: bytes) -> None:
    (ckpt / name).write_bytes(payload)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["sha256"][name] = hashlib.sha256(payload).hexdigest()
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


# -------------------------------------------------------------------------------------------------
# the matrix
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    needle: str  # must appear in the one-line message: the offending file, flag or config key
    outputs: tuple[str, ...] = ()  # what the command would write; must not appear / must stay unchanged
    root_only_skip: bool = False  # relies on file permissions, which root ignores


def _c(id, argv, needle, outputs=(), **kw) -> Case:
    return Case(id, tuple(argv), needle, tuple(outputs), **kw)


TRAIN = ["train", "--out", "{tmp}/run", *TAB_TRAIN]
SAMPLE_TAB = ["sample", "{tab}", "--n", "4", "--steps", "2", "--quiet"]
LIK_TAB = ["likelihood", "{tab}", "--quiet", "--csv", "{tmp}/nll.csv"]

INPAINT = ["inpaint", "{img}", "--quiet", "--method", "ddnm", "--steps", "2", "--out", "{tmp}/o.npz"]
INPAINT_OUT = ["{tmp}/o.npz", "{tmp}/o.png"]
DENOISE = ["denoise", "{img}", "--quiet", "--out", "{tmp}/d.npz"]
DENOISE_OUT = ["{tmp}/d.npz", "{tmp}/d.png"]
ANOMALY = ["anomaly", "{tab}", "--quiet", "--out", "{tmp}/s.csv"]

CASES = [
    # --- train: data -------------------------------------------------------------------------------
    _c("train-missing-file", [*TRAIN, "--data", "{bad}/missing.npy"], "missing.npy", ["{tmp}/run/"]),
    _c("train-empty-csv", [*TRAIN, "--data", "{bad}/empty.csv"], "empty.csv", ["{tmp}/run/"]),
    _c("train-empty-npy", [*TRAIN, "--data", "{bad}/empty.npy"], "empty.npy", ["{tmp}/run/"]),
    _c("train-empty-png", [*TRAIN, "--data", "{bad}/empty.png"], "empty.png", ["{tmp}/run/"]),
    _c("train-corrupt-png", [*TRAIN, "--data", "{bad}/corrupt.png"], "corrupt.png", ["{tmp}/run/"]),
    _c("train-corrupt-png-in-folder", [*TRAIN, "--data", "{bad}/corruptdir"], "broken.png", ["{tmp}/run/"]),
    _c("train-mixed-sizes", [*TRAIN, "--data", "{bad}/sizes"], "{bad}/sizes/b.png", ["{tmp}/run/"]),
    _c("train-mixed-channels", [*TRAIN, "--data", "{bad}/channels"], "{bad}/channels/b.png", ["{tmp}/run/"]),
    _c("train-csv-non-numeric", [*TRAIN, "--data", "{bad}/nonnumeric.csv"], "nonnumeric.csv", ["{tmp}/run/"]),
    _c("train-csv-header-only", [*TRAIN, "--data", "{bad}/header.csv"], "header.csv", ["{tmp}/run/"]),
    _c("train-csv-nan", [*TRAIN, "--data", "{bad}/nan.csv"], "nan.csv", ["{tmp}/run/"]),
    _c("train-csv-inf", [*TRAIN, "--data", "{bad}/inf.csv"], "inf.csv", ["{tmp}/run/"]),
    _c("train-npy-nan", [*TRAIN, "--data", "{bad}/nan.npy"], "nan.npy", ["{tmp}/run/"]),
    _c("train-npy-inf", [*TRAIN, "--data", "{bad}/inf.npy"], "inf.npy", ["{tmp}/run/"]),
    _c("train-npy-objects", [*TRAIN, "--data", "{bad}/objects.npy"], "objects.npy", ["{tmp}/run/"]),
    _c("train-data-is-folder-of-nothing", [*TRAIN, "--data", "{runs}/empty"], "{runs}/empty", ["{tmp}/run/"]),
    _c("train-folder-without-images", [*TRAIN, "--data", "{bad}/noimages"], "noimages", ["{tmp}/run/"]),
    _c("train-transparent-png", [*TRAIN, "--data", "{bad}/transparent.png"], "transparent.png", ["{tmp}/run/"]),
    _c("train-csv-ragged", [*TRAIN, "--data", "{bad}/ragged.csv"], "ragged.csv", ["{tmp}/run/"]),
    _c("train-csv-not-utf8", [*TRAIN, "--data", "{bad}/latin1.csv"], "latin1.csv", ["{tmp}/run/"]),
    _c("train-npy-truncated", [*TRAIN, "--data", "{bad}/truncated.npy"], "truncated.npy", ["{tmp}/run/"]),
    _c("train-npy-is-text", [*TRAIN, "--data", "{bad}/text.npy"], "text.npy", ["{tmp}/run/"]),
    _c("train-npz-not-zip", [*TRAIN, "--data", "{bad}/notzip.npz"], "notzip.npz", ["{tmp}/run/"]),
    # --- train: arguments and config ---------------------------------------------------------------
    _c("train-zero-steps", [*TRAIN, "--data", "gmm2d", "--steps", "0"], "--steps", ["{tmp}/run/"]),
    _c("train-negative-steps", [*TRAIN, "--data", "gmm2d", "--steps", "-3"], "--steps", ["{tmp}/run/"]),
    _c("train-zero-batch", [*TRAIN, "--data", "gmm2d", "--batch-size", "0"], "--batch-size", ["{tmp}/run/"]),
    _c("train-unknown-set-key", [*TRAIN, "--data", "gmm2d", "--set", "train.nosuch=1"], "train.nosuch",
       ["{tmp}/run/"]),
    _c("train-set-wrong-type", [*TRAIN, "--data", "gmm2d", "--set", "train.lr=fast"], "train.lr", ["{tmp}/run/"]),
    _c("train-set-malformed", [*TRAIN, "--data", "gmm2d", "--set", "lr"], "--set", ["{tmp}/run/"]),
    _c("train-negative-sigma", [*TRAIN, "--data", "gmm2d", "--set", "model.sigma_data=-0.5"], "model.sigma_data",
       ["{tmp}/run/"]),
    _c("train-negative-lr", [*TRAIN, "--data", "gmm2d", "--lr", "-1"], "--lr", ["{tmp}/run/"]),
    _c("train-nan-lr", [*TRAIN, "--data", "gmm2d", "--lr", "nan"], "--lr", ["{tmp}/run/"]),
    _c("train-inf-lr", [*TRAIN, "--data", "gmm2d", "--lr", "inf"], "--lr", ["{tmp}/run/"]),
    _c("train-nan-minutes", [*TRAIN, "--data", "gmm2d", "--minutes", "nan"], "--minutes", ["{tmp}/run/"]),
    _c("train-huge-seed", [*TRAIN, "--data", "gmm2d", "--seed", str(2**70)], "--seed", ["{tmp}/run/"]),
    _c("train-unknown-device", [*TRAIN, "--data", "gmm2d", "--device", "tpu"], "train.device", ["{tmp}/run/"]),
    _c("train-empty-out", ["train", "--out", "", "--data", "gmm2d", *TAB_TRAIN], "--out"),
    _c("train-config-wrong-type-json", [*TRAIN, "--data", "gmm2d", "--config", "{bad}/badtype.json"], "badtype.json",
       ["{tmp}/run/"]),
    _c("train-config-wrong-type-toml", [*TRAIN, "--data", "gmm2d", "--config", "{bad}/badtype.toml"], "badtype.toml",
       ["{tmp}/run/"]),
    _c("train-config-not-json", [*TRAIN, "--data", "gmm2d", "--config", "{bad}/notjson.json"], "notjson.json",
       ["{tmp}/run/"]),
    _c("train-config-empty", [*TRAIN, "--data", "gmm2d", "--config", "{bad}/empty.json"], "empty.json",
       ["{tmp}/run/"]),
    _c("train-config-missing", [*TRAIN, "--data", "gmm2d", "--config", "{bad}/nope.toml"], "nope.toml",
       ["{tmp}/run/"]),
    _c("train-mlp-on-images", [*TRAIN, "--data", "digits", "--backbone", "mlp"], "model.backbone", ["{tmp}/run/"]),
    _c("train-unconditional-data-conditional", [*TRAIN, "--data", "{bad}/three.npy", "--class-conditional"],
       "class_conditional", ["{tmp}/run/"]),
    _c("train-out-parent-is-file", ["train", "--out", "{bad}/afile/run", *TAB_TRAIN, "--data", "gmm2d"], "afile"),
    _c("train-out-read-only", ["train", "--out", "{tmp}/ro/run", *TAB_TRAIN, "--data", "gmm2d"], "{tmp}/ro",
       ["{tmp}/ro/run/"], root_only_skip=True),
    _c("train-resume-no-run", [*TRAIN, "--data", "gmm2d", "--resume"], "{tmp}/run", ["{tmp}/run/"]),
    _c("train-resume-other-shape", ["train", "--out", "{tab}", *TAB_TRAIN, "--data", "{bad}/three.npy",
                                    "--resume"], "shape"),
    # --- sample -----------------------------------------------------------------------------------
    _c("sample-missing-run", ["sample", "{tmp}/norun", "--out", "{tmp}/s.csv"], "norun", ["{tmp}/s.csv"]),
    _c("sample-run-is-empty-folder", ["sample", "{runs}/empty", "--out", "{tmp}/s.csv"], "{runs}/empty",
       ["{tmp}/s.csv"]),
    _c("sample-run-config-not-json", ["sample", "{runs}/badjson", "--out", "{tmp}/s.csv"], "config.json",
       ["{tmp}/s.csv"]),
    _c("sample-weights-do-not-fit-config", ["sample", "{runs}/reshaped", "--out", "{tmp}/s.csv"], "config.json",
       ["{tmp}/s.csv"]),
    _c("sample-no-checkpoint", ["sample", "{runs}/nockpt", "--out", "{tmp}/s.csv"], "nockpt", ["{tmp}/s.csv"]),
    _c("sample-truncated-checkpoint", ["sample", "{runs}/truncated", "--out", "{tmp}/s.csv"], "truncated",
       ["{tmp}/s.csv"]),
    _c("sample-forged-checkpoint", ["sample", "{runs}/forged", "--out", "{tmp}/s.csv"], "ema.safetensors",
       ["{tmp}/s.csv"]),
    _c("sample-unknown-sampler", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--sampler", "magic"], "magic",
       ["{tmp}/s.csv"]),
    _c("sample-unknown-schedule", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--schedule", "wavy"], "wavy",
       ["{tmp}/s.csv"]),
    _c("sample-zero-steps", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--steps", "0"], "--steps", ["{tmp}/s.csv"]),
    _c("sample-negative-steps", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--steps", "-2"], "--steps",
       ["{tmp}/s.csv"]),
    _c("sample-zero-nfe", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--nfe", "0"], "--nfe", ["{tmp}/s.csv"]),
    _c("sample-nfe-and-steps", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--nfe", "5"], "--nfe", ["{tmp}/s.csv"]),
    _c("sample-negative-n", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--n", "-5"], "--n", ["{tmp}/s.csv"]),
    _c("sample-zero-n", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--n", "0"], "--n", ["{tmp}/s.csv"]),
    _c("sample-huge-steps", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--steps", str(10**12)], "--steps",
       ["{tmp}/s.csv"]),
    _c("sample-huge-seed", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--seed", str(2**70)], "--seed", ["{tmp}/s.csv"]),
    _c("sample-nan-guidance", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--guidance", "nan"], "--guidance",
       ["{tmp}/s.csv"]),
    _c("sample-unknown-device", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--device", "tpu"], "--device",
       ["{tmp}/s.csv"]),
    _c("sample-absent-gpu", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--device", "cuda:99"], "--device",
       ["{tmp}/s.csv"]),
    _c("sample-empty-out", [*SAMPLE_TAB, "--out", ""], "--out"),
    _c("sample-negative-guidance", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--guidance", "-1"], "guidance",
       ["{tmp}/s.csv"]),
    _c("sample-class-on-unconditional", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--class", "3"], "class",
       ["{tmp}/s.csv"]),
    _c("sample-wrong-suffix", [*SAMPLE_TAB, "--out", "{tmp}/s.png"], "s.png", ["{tmp}/s.png"]),
    _c("sample-out-folder-missing", [*SAMPLE_TAB, "--out", "{tmp}/no/such/s.csv"], "no/such"),
    _c("sample-out-parent-is-file", [*SAMPLE_TAB, "--out", "{bad}/afile/s.csv"], "afile"),
    _c("sample-out-is-folder", [*SAMPLE_TAB, "--out", "{tmp}/dir.csv"], "dir.csv", ["+{tmp}/dir.csv/"]),
    _c("sample-out-read-only", [*SAMPLE_TAB, "--out", "{tmp}/ro/s.csv"], "{tmp}/ro", ["{tmp}/ro/s.csv"],
       root_only_skip=True),
    # the PNG grid beside an image .npz cannot be written: neither file may appear
    _c("sample-image-grid-blocked", ["sample", "{img}", "--n", "2", "--steps", "1", "--sampler", "euler", "--quiet",
                                     "--out", "{tmp}/s.npz"], "s.png", ["{tmp}/s.npz", "+{tmp}/s.png/"]),
    _c("sample-tuned-grid-missing", [*SAMPLE_TAB, "--out", "{tmp}/s.csv", "--schedule", "tuned"], "difflab tune",
       ["{tmp}/s.csv"]),
    # --- tune (writes RUN/schedules.json: the check that {tab} is unchanged covers it) ------------------
    _c("tune-missing-run", ["tune", "{tmp}/norun", "--quiet"], "norun"),
    _c("tune-truncated-checkpoint", ["tune", "{runs}/truncated", "--quiet"], "truncated"),
    _c("tune-stochastic-sampler", ["tune", "{tab}", "--sampler", "ddpm", "--quiet"], "--sampler ddpm"),
    _c("tune-unknown-sampler", ["tune", "{tab}", "--sampler", "magic", "--quiet"], "magic"),
    _c("tune-one-sample", ["tune", "{tab}", "--n", "1", "--quiet"], "--n"),
    _c("tune-steps-and-nfe", ["tune", "{tab}", "--steps", "3", "--nfe", "3", "--quiet"], "--nfe"),
    _c("tune-zero-max-evals", ["tune", "{tab}", "--max-evals", "0", "--quiet"], "--max-evals"),
    _c("tune-nfe-below-one-step", ["tune", "{tab}", "--sampler", "heun", "--nfe", "0", "--quiet"], "--nfe"),
    # --- likelihood -------------------------------------------------------------------------------
    _c("likelihood-missing-run", ["likelihood", "{tmp}/norun", "--data", "gmm2d", "--csv", "{tmp}/nll.csv"],
       "norun", ["{tmp}/nll.csv"]),
    _c("likelihood-no-checkpoint", ["likelihood", "{runs}/nockpt", "--data", "gmm2d", "--csv", "{tmp}/nll.csv"],
       "nockpt", ["{tmp}/nll.csv"]),
    _c("likelihood-truncated-checkpoint", ["likelihood", "{runs}/truncated", "--data", "gmm2d", "--csv",
                                           "{tmp}/nll.csv"], "truncated", ["{tmp}/nll.csv"]),
    _c("likelihood-forged-checkpoint", ["likelihood", "{runs}/forged", "--data", "gmm2d", "--csv",
                                        "{tmp}/nll.csv"], "ema.safetensors", ["{tmp}/nll.csv"]),
    _c("likelihood-missing-file", [*LIK_TAB, "--data", "{bad}/missing.csv"], "missing.csv", ["{tmp}/nll.csv"]),
    _c("likelihood-empty-file", [*LIK_TAB, "--data", "{bad}/empty.csv"], "empty.csv", ["{tmp}/nll.csv"]),
    _c("likelihood-csv-non-numeric", [*LIK_TAB, "--data", "{bad}/nonnumeric.csv"], "nonnumeric.csv",
       ["{tmp}/nll.csv"]),
    _c("likelihood-csv-header-only", [*LIK_TAB, "--data", "{bad}/header.csv"], "header.csv", ["{tmp}/nll.csv"]),
    _c("likelihood-csv-nan", [*LIK_TAB, "--data", "{bad}/nan.csv"], "nan.csv", ["{tmp}/nll.csv"]),
    _c("likelihood-npy-inf", [*LIK_TAB, "--data", "{bad}/inf.npy"], "inf.npy", ["{tmp}/nll.csv"]),
    _c("likelihood-corrupt-png", [*LIK_TAB, "--data", "{bad}/corrupt.png"], "corrupt.png", ["{tmp}/nll.csv"]),
    _c("likelihood-wrong-dims", [*LIK_TAB, "--data", "{bad}/three.npy"], "three.npy", ["{tmp}/nll.csv"]),
    _c("likelihood-images-on-tabular", [*LIK_TAB, "--data", "digits"], "digits", ["{tmp}/nll.csv"]),
    _c("likelihood-tabular-on-images", ["likelihood", "{img}", "--data", "gmm2d", "--csv", "{tmp}/nll.csv"],
       "gmm2d", ["{tmp}/nll.csv"]),
    _c("likelihood-zero-n", [*LIK_TAB, "--data", "gmm2d", "--n", "0"], "--n", ["{tmp}/nll.csv"]),
    _c("likelihood-zero-probes", [*LIK_TAB, "--data", "gmm2d", "--probes", "0"], "--probes", ["{tmp}/nll.csv"]),
    _c("likelihood-negative-rtol", [*LIK_TAB, "--data", "gmm2d", "--n", "2", "--rtol", "-1"], "--rtol",
       ["{tmp}/nll.csv"]),
    _c("likelihood-infinite-rtol", [*LIK_TAB, "--data", "gmm2d", "--n", "2", "--rtol", "inf"], "--rtol",
       ["{tmp}/nll.csv"]),
    _c("likelihood-nan-atol", [*LIK_TAB, "--data", "gmm2d", "--n", "2", "--atol", "nan"], "--atol",
       ["{tmp}/nll.csv"]),
    _c("likelihood-huge-probes", [*LIK_TAB, "--data", "gmm2d", "--probes", str(10**9)], "--probes",
       ["{tmp}/nll.csv"]),
    _c("likelihood-weights-do-not-fit-config", ["likelihood", "{runs}/reshaped", "--data", "gmm2d", "--csv",
                                                "{tmp}/nll.csv"], "config.json", ["{tmp}/nll.csv"]),
    _c("likelihood-npy-truncated", [*LIK_TAB, "--data", "{bad}/truncated.npy"], "truncated.npy", ["{tmp}/nll.csv"]),
    _c("likelihood-unknown-trace", [*LIK_TAB, "--data", "gmm2d", "--trace", "guess"], "guess", ["{tmp}/nll.csv"]),
    _c("likelihood-csv-parent-is-file", ["likelihood", "{tab}", "--data", "gmm2d", "--n", "2", "--quiet",
                                         "--csv", "{bad}/afile/nll.csv"], "afile"),
    _c("likelihood-csv-folder-missing", ["likelihood", "{tab}", "--data", "gmm2d", "--n", "2", "--quiet",
                                         "--csv", "{tmp}/no/such/nll.csv"], "no/such"),
    # --- inpaint -------------------------------------------------------------------------------------
    _c("inpaint-missing-image", [*INPAINT, "--image", "{bad}/missing.png", "--mask", "{bad}/mask8.npy"],
       "missing.png", INPAINT_OUT),
    _c("inpaint-corrupt-png", [*INPAINT, "--image", "{bad}/corrupt.png", "--mask", "{bad}/mask8.npy"],
       "corrupt.png", INPAINT_OUT),
    _c("inpaint-mixed-sizes", [*INPAINT, "--image", "{bad}/sizes", "--mask", "{bad}/mask8.npy"], "{bad}/sizes",
       INPAINT_OUT),
    _c("inpaint-missing-mask", [*INPAINT, "--image", "{bad}/digits4.npy", "--mask", "{bad}/missing.npy"],
       "missing.npy", INPAINT_OUT),
    _c("inpaint-mask-wrong-shape", [*INPAINT, "--image", "{bad}/digits4.npy", "--mask", "{bad}/mask7.npy"],
       "--mask", INPAINT_OUT),
    _c("inpaint-mask-soft", [*INPAINT, "--image", "{bad}/digits4.npy", "--mask", "{bad}/softmask.npy"], "--mask",
       INPAINT_OUT),
    _c("inpaint-table-into-image-run", [*INPAINT, "--image", "{bad}/three.npy", "--mask", "{bad}/mask8.npy"],
       "three.npy", INPAINT_OUT),
    _c("inpaint-zero-steps", [*INPAINT, "--image", "{bad}/digits4.npy", "--mask", "{bad}/mask8.npy", "--steps", "0"],
       "--steps", INPAINT_OUT),
    _c("inpaint-zero-samples", [*INPAINT, "--image", "{bad}/digits4.npy", "--mask", "{bad}/mask8.npy",
                                "--samples", "0"], "--samples", INPAINT_OUT),
    _c("inpaint-unknown-method", [*INPAINT, "--image", "{bad}/digits4.npy", "--mask", "{bad}/mask8.npy",
                                  "--method", "magic"], "--method", INPAINT_OUT),
    _c("inpaint-out-bad-suffix", [*INPAINT, "--image", "{bad}/digits4.npy", "--mask", "{bad}/mask8.npy",
                                  "--out", "{tmp}/o.txt"], "o.txt", ["{tmp}/o.txt"]),
    _c("inpaint-several-images-into-one-png", [*INPAINT, "--image", "{bad}/digits4.npy", "--mask", "{bad}/mask8.npy",
                                               "--out", "{tmp}/o1.png"], "o1.png", ["{tmp}/o1.png"]),
    _c("inpaint-out-folder-missing", [*INPAINT, "--image", "{bad}/digits4.npy", "--mask", "{bad}/mask8.npy",
                                      "--out", "{tmp}/no/such/o.npz"], "no/such"),
    _c("inpaint-no-checkpoint", ["inpaint", "{runs}/nockpt", "--image", "{bad}/digits4.npy", "--mask",
                                 "{bad}/mask8.npy", "--out", "{tmp}/o.npz"], "nockpt", INPAINT_OUT),
    # --- denoise -------------------------------------------------------------------------------------
    _c("denoise-negative-sigma", [*DENOISE, "--input", "{bad}/digits4.npy", "--sigma", "-1"], "--sigma", DENOISE_OUT),
    _c("denoise-nan-sigma", [*DENOISE, "--input", "{bad}/digits4.npy", "--sigma", "nan"], "--sigma", DENOISE_OUT),
    _c("denoise-sigma-above-model-range", [*DENOISE, "--input", "{bad}/digits4.npy", "--sigma", "1e9"], "sigma",
       DENOISE_OUT),
    _c("denoise-missing-input", [*DENOISE, "--input", "{bad}/missing.npy", "--sigma", "1"], "missing.npy",
       DENOISE_OUT),
    _c("denoise-corrupt-png", [*DENOISE, "--input", "{bad}/corrupt.png", "--sigma", "1"], "corrupt.png",
       DENOISE_OUT),
    _c("denoise-npy-nan", [*DENOISE, "--input", "{bad}/nan.npy", "--sigma", "1"], "nan.npy", DENOISE_OUT),
    _c("denoise-auto-sigma-on-a-table", ["denoise", "{tab}", "--input", "gmm2d", "--sigma", "auto", "--quiet",
                                         "--out", "{tmp}/d.csv"], "sigma", ["{tmp}/d.csv"]),
    _c("denoise-zero-samples", [*DENOISE, "--input", "{bad}/digits4.npy", "--sigma", "1", "--samples", "0"],
       "--samples", DENOISE_OUT),
    # --- anomaly -------------------------------------------------------------------------------------
    _c("anomaly-missing-data", [*ANOMALY, "--data", "{bad}/missing.csv"], "missing.csv", ["{tmp}/s.csv"]),
    _c("anomaly-csv-non-numeric", [*ANOMALY, "--data", "{bad}/nonnumeric.csv"], "nonnumeric.csv", ["{tmp}/s.csv"]),
    _c("anomaly-csv-header-only", [*ANOMALY, "--data", "{bad}/header.csv"], "header.csv", ["{tmp}/s.csv"]),
    _c("anomaly-csv-nan", [*ANOMALY, "--data", "{bad}/nan.csv"], "nan.csv", ["{tmp}/s.csv"]),
    _c("anomaly-wrong-shape", [*ANOMALY, "--data", "{bad}/three.npy"], "three.npy", ["{tmp}/s.csv"]),
    _c("anomaly-labels-wrong-count", [*ANOMALY, "--data", "gmm2d", "--labels", "{bad}/labels3.npy"], "labels3.npy",
       ["{tmp}/s.csv"]),
    _c("anomaly-labels-no-such-column", [*ANOMALY, "--data", "{bad}/three.npy", "--labels", "nosuchcol"],
       "nosuchcol", ["{tmp}/s.csv"]),
    _c("anomaly-unknown-score", [*ANOMALY, "--data", "gmm2d", "--score", "vibes"], "--score", ["{tmp}/s.csv"]),
    _c("anomaly-out-not-csv", ["anomaly", "{tab}", "--data", "gmm2d", "--out", "{tmp}/s.npz"], "s.npz",
       ["{tmp}/s.npz"]),
    _c("anomaly-out-parent-is-file", ["anomaly", "{tab}", "--data", "gmm2d", "--out", "{bad}/afile/s.csv"], "afile"),
    # --- demo (its only inputs are the output folder and the numbers) ------------------------------
    _c("demo-out-parent-is-file", ["demo", "--out", "{bad}/afile/demo", "--steps", "1", "--quiet"], "afile"),
    _c("demo-out-read-only", ["demo", "--out", "{tmp}/ro/demo", "--steps", "1", "--quiet"], "{tmp}/ro",
       ["{tmp}/ro/demo/"], root_only_skip=True),
    _c("demo-out-not-empty", ["demo", "--out", "{tmp}/demo", "--steps", "1", "--quiet"], "{tmp}/demo", ["+{tmp}/demo/"]),
    _c("demo-out-is-a-file", ["demo", "--out", "{tmp}/demo", "--steps", "1", "--quiet"], "{tmp}/demo", ["+{tmp}/demo"]),
    _c("demo-empty-out", ["demo", "--out", " ", "--steps", "1"], "--out"),
    _c("demo-zero-steps", ["demo", "--out", "{tmp}/demo", "--steps", "0"], "--steps", ["{tmp}/demo/"]),
    _c("demo-negative-minutes", ["demo", "--out", "{tmp}/demo", "--steps", "1", "--minutes", "-1"], "--minutes",
       ["{tmp}/demo/"]),
]


# -------------------------------------------------------------------------------------------------
# running a case
# -------------------------------------------------------------------------------------------------


def _fmt(text: str, tmp: Path, bad: Path, runs: dict) -> str:
    return text.format(tmp=tmp, bad=bad, tab=runs["tab"], img=runs["img"], runs=runs["runs"])


def _snapshot(path: Path):
    """Bytes of a file, {relative path: bytes} of a folder, or None when it does not exist."""
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}
    return path.read_bytes() if path.exists() else None


def _prepare(case: Case, tmp: Path, bad: Path, runs: dict, preexisting: bool) -> list[Path]:
    if case.root_only_skip:
        if os.geteuid() == 0:
            pytest.skip("root ignores file permissions")
        (tmp / "ro").mkdir()
        (tmp / "ro").chmod(0o555)
    outs = []
    for template in case.outputs:
        obstacle = template.startswith("+")
        path = Path(_fmt(template.lstrip("+").rstrip("/"), tmp, bad, runs))
        if (obstacle or preexisting) and path.parent.is_dir() and os.access(path.parent, os.W_OK):
            if template.endswith("/"):
                path.mkdir()
                (path / "keep.txt").write_text("keep me\n")
            else:
                path.write_bytes(b"old contents\n")
        outs.append(path)
    return outs


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of ``difflab ARGV``; Python warnings count as stderr lines (as they would)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
        except BaseException as e:  # noqa: BLE001 - an uncaught exception is what this test looks for
            pytest.fail(f"uncaught {type(e).__name__} (a traceback for the user): {e}")
    err = capsys.readouterr().err
    lines = [f"warning: {w.message}" for w in caught] + [line for line in err.splitlines() if line.strip()]
    return rc, "\n".join(lines)


def _params():
    out = []
    for case in CASES:
        out.append(pytest.param(case, False, id=f"{case.id}-fresh"))
        if any(not t.startswith("+") for t in case.outputs):
            out.append(pytest.param(case, True, id=f"{case.id}-preexisting"))
    return out


@pytest.mark.parametrize("case, preexisting", _params())
def test_bad_input(case, preexisting, tmp_path, bad_files, runs, capsys):
    outs = _prepare(case, tmp_path, bad_files, runs, preexisting)
    before = {p: _snapshot(p) for p in outs}
    tab_before = _snapshot(runs["tab"])
    argv = [_fmt(a, tmp_path, bad_files, runs) for a in case.argv]
    rc, err = run_in_process(argv, capsys)
    assert rc not in (0, None), f"exit status {rc}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    needle = _fmt(case.needle, tmp_path, bad_files, runs)
    assert needle in lines[0], f"{needle!r} not named in: {lines[0]}"
    for p in outs:
        assert _snapshot(p) == before[p], f"{p} was created or changed"
    leftovers = [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert _snapshot(runs["tab"]) == tab_before  # a failed command never touches the run it read


# -------------------------------------------------------------------------------------------------
# the real process: exit status, stderr (warnings included), --debug
# -------------------------------------------------------------------------------------------------

SUBPROCESS_CASES = ["sample-truncated-checkpoint", "sample-unknown-sampler"]  # a warning path, an argparse path


def _start(argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "difflab", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_bad_input_subprocess(tmp_path, bad_files, runs):
    """Real processes (started together, to overlap their imports): exit status 2, one stderr line that
    starts with 'difflab' (warnings included), no outputs; with --debug, the traceback."""
    started = []
    for case_id in SUBPROCESS_CASES:
        case = next(c for c in CASES if c.id == case_id)
        tmp = tmp_path / case_id
        tmp.mkdir()
        outs = _prepare(case, tmp, bad_files, runs, preexisting=False)
        started.append((case, tmp, outs, _start([_fmt(a, tmp, bad_files, runs) for a in case.argv])))
    debug = _start(["--debug", "train", "--data", str(bad_files / "corrupt.png"), "--out", str(tmp_path / "dbg")])
    for case, tmp, outs, proc in started:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, (case.id, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in stderr, (case.id, stderr)
        assert lines[0].startswith("difflab") and _fmt(case.needle, tmp, bad_files, runs) in lines[0], lines[0]
        assert all(not p.exists() for p in outs), case.id
    _, stderr = debug.communicate(timeout=120)
    assert debug.returncode != 0 and "Traceback" in stderr and "corrupt.png" in stderr


# -------------------------------------------------------------------------------------------------
# two outputs (image .npz + PNG grid): a failure while writing the second leaves neither
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preexisting", [False, True])
def test_failed_grid_leaves_neither_output(preexisting, tmp_path, runs, monkeypatch, capsys):
    import difflab.data

    out, grid = tmp_path / "s.npz", tmp_path / "s.png"
    if preexisting:
        out.write_bytes(b"old npz")
        grid.write_bytes(b"old png")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", str(args[1]))

    monkeypatch.setattr(difflab.data, "save_image_grid", broken)
    rc, err = run_in_process(["sample", str(runs["img"]), "--n", "2", "--steps", "1", "--sampler", "euler",
                              "--quiet", "--out", str(out)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "No space left" in err, err
    assert _snapshot(out) == (b"old npz" if preexisting else None)
    assert _snapshot(grid) == (b"old png" if preexisting else None)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["s.npz", "s.png"] if preexisting else [])


# -------------------------------------------------------------------------------------------------
# a planted pickle payload is refused by every command that loads a run, and never runs
# -------------------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("command", ["sample", "likelihood"])
def test_planted_pickle_is_refused(command, tmp_path, runs, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["tab"], run)
    marker = tmp_path / "PWNED"
    for ckpt in (run / "checkpoints").glob("step-*"):
        for name in ("model.safetensors", "ema.safetensors"):
            _forge(ckpt, name, pickle.dumps(_Payload(str(marker))))
    argv = {"sample": ["sample", str(run), "--out", str(tmp_path / "s.csv"), "--n", "2", "--steps", "1"],
            "likelihood": ["likelihood", str(run), "--data", "gmm2d", "--n", "2", "--csv", str(tmp_path / "l.csv")]}
    rc, err = run_in_process(argv[command], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "ema.safetensors" in err, err
    assert not marker.exists()
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "l.csv").exists()
