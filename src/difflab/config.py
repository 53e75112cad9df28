"""Experiment configuration: frozen dataclasses, validated on load, round-tripped through JSON or TOML.

A config file (``--config FILE``, ``.json`` or ``.toml``) holds any subset of the sections below; unknown
keys, wrong types and out-of-range values are rejected with a one-line error naming the key, e.g.
``config.train.lr: expected a number, got 'fast'``. ``--set train.lr=1e-3`` overrides single keys.

Values left at ``"auto"`` / ``None`` are filled in from the data when training starts (see
``resolve_auto``), and the resolved config is what ``config.json`` in the run folder records.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class ModelCfg:
    backbone: str = "auto"  # "unet", "dit", "mlp" or "auto" (UNet for images, MLP for tabular)
    preset: str = "auto"  # a preset of the backbone, or "auto" (chosen from the data size)
    params: dict = field(default_factory=dict)  # backbone keyword arguments, override the preset
    prediction: str = "edm"  # what the backbone predicts: edm (F), eps, x0 or v
    sigma_data: float | None = None  # std of the normalised data; None = measured from the data
    class_conditional: bool = False  # train on the data's labels (with label dropout for guidance)


@dataclass(frozen=True)
class ProcessCfg:
    name: str = "edm"  # edm, vp, ve or ddpm
    params: dict = field(default_factory=dict)  # e.g. {"schedule": "cosine"} for ddpm


@dataclass(frozen=True)
class LossCfg:
    sigma_dist: str = "lognormal"  # lognormal (EDM), log_uniform, or process (the process's own t)
    p_mean: float = -1.2  # lognormal: mean of ln sigma
    p_std: float = 1.2  # lognormal: std of ln sigma
    weighting: str = "edm"  # edm, min_snr, likelihood or uniform
    gamma: float = 5.0  # min_snr: the clamp
    label_dropout: float = 0.1  # class-conditional models: probability of training unconditionally


@dataclass(frozen=True)
class TrainCfg:
    steps: int = 2000  # optimiser steps
    batch_size: int | None = None  # global batch size; None: 128 for images, 512 for tabular data
    grad_accum: int = 1  # split each batch into this many micro-batches (same result, less memory)
    precision: str = "fp32"  # fp32; bf16 (autocast, CPU and CUDA); fp16 (autocast + gradient scaler, CUDA only)
    compile: bool = False  # torch.compile the backbone for training (first steps are slow while it compiles)
    channels_last: str = "auto"  # channels-last memory format: auto (CUDA; fp32 UNet on CPU), on, off
    lr: float = 2e-3  # AdamW peak learning rate
    lr_schedule: str = "cosine"  # constant or cosine (decay to lr_min_ratio * lr after warm-up)
    lr_min_ratio: float = 0.05
    warmup: int = 100  # linear warm-up steps
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.99)
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    ema_decay: float = 0.999  # EMA of weights; warms up as min(decay, (1 + step) / (10 + step))
    seed: int = 0
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # how many recent checkpoints to keep
    log_every: int = 10  # steps between rows of metrics.csv
    max_minutes: float = 0.0  # stop (with a checkpoint) after this much training time; 0 = no limit
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1 ...
    sample_grid: int = 64  # images in the samples.png written at the end (0 = none)
    # "integers": train on x + u, u ~ U(-1/2, 1/2) in data units, fresh every step, in each column (tables) or
    # for the whole image set whose training values are all integers (uniform dequantisation); "off": as given;
    # "auto": "integers" for tables, "off" for images (8-bit pixels are a fine lattice; EDM trains on them as is)
    dequantize: str = "auto"


@dataclass(frozen=True)
class SampleCfg:
    sampler: str = "heun"
    steps: int | None = None  # None: 18 for images (EDM's setting), 64 for tabular data (sharp low-dim densities)
    schedule: str = "karras"
    guidance: float = 1.0  # classifier-free guidance weight for class-conditional models (1 = none)
    # smallest nonzero level of the sampling grid (the last step jumps from it to 0 with x = D(x, sigma_last));
    # None: the process's sigma_min. Raising it (0.05-0.1 in model units) cuts few-step ODE error ~2x
    # (docs/benchmarks.md, bench/samplers.py).
    sigma_last: float | None = None


@dataclass(frozen=True)
class ExperimentCfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    process: ProcessCfg = field(default_factory=ProcessCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    sample: SampleCfg = field(default_factory=SampleCfg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, section: str, **changes) -> ExperimentCfg:
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


_RANGES = {
    "train.steps": (1, None),
    "train.batch_size": (1, 1 << 20),
    "train.grad_accum": (1, None),
    "train.lr": (0.0, None),
    "train.warmup": (0, None),
    "train.weight_decay": (0.0, None),
    "train.grad_clip": (0.0, None),
    "train.ema_decay": (0.0, 1.0),
    "train.checkpoint_every": (1, None),
    "train.keep_checkpoints": (1, None),
    "train.log_every": (1, None),
    "train.max_minutes": (0.0, None),
    "train.sample_grid": (0, None),
    "train.lr_min_ratio": (0.0, 1.0),
    "loss.p_std": (1e-6, None),
    "loss.gamma": (1e-6, None),
    "loss.label_dropout": (0.0, 1.0),
    "model.sigma_data": (1e-6, None),
    "sample.steps": (1, None),
    "sample.guidance": (0.0, None),
    "sample.sigma_last": (1e-6, None),
}
_CHOICES = {
    "train.lr_schedule": ("constant", "cosine"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.channels_last": ("auto", "on", "off"),
    "train.dequantize": ("auto", "off", "integers"),
    "loss.sigma_dist": ("lognormal", "log_uniform", "process"),
    "loss.weighting": ("edm", "min_snr", "likelihood", "uniform"),
    "model.prediction": ("edm", "eps", "x0", "v"),
}


def _check_value(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config.{key}: expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config.{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config.{key}: expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config.{key}: expected a string, got {value!r}")
    elif tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config.{key}: expected a table/object, got {value!r}")
    elif tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
            raise ConfigError(f"config.{key}: expected a list of numbers, got {value!r}")
        value = tuple(float(v) for v in value)
    if key in _RANGES and value is not None:
        lo, hi = _RANGES[key]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise ConfigError(f"config.{key}: must be {bound}, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"config.{key}: unknown {value!r}; valid: {', '.join(_CHOICES[key])}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config.{prefix.rstrip('.') or '(top)'}: expected a table/object, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"config.{prefix}{key}: unknown key; valid: {', '.join(sorted(fields))}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_value(f"{prefix}{key}", value, tp)
    return cls(**kwargs)


def resolve_auto(cfg: ExperimentCfg, kind: str) -> ExperimentCfg:
    """Fill the data-dependent defaults (``None`` and ``"auto"`` values) for data of ``kind`` ("image" or "tabular").

    Tabular data is low-dimensional and cheap per sample: a larger batch (less gradient noise) and a finer
    sampling grid pay off there. Sharp modes are blurred by a coarse grid: on held-out 2-D mixtures, Heun
    with 18 steps loses ~0.16 nats of log-density even with the exact denoiser, with 64 steps ~0.03
    (bench/mixture_quality.py, docs/benchmarks.md).
    """
    image = kind == "image"
    if cfg.train.batch_size is None:
        cfg = cfg.replace("train", batch_size=128 if image else 512)
    if cfg.sample.steps is None:
        cfg = cfg.replace("sample", steps=18 if image else 64)
    if cfg.train.dequantize == "auto":
        cfg = cfg.replace("train", dequantize="off" if image else "integers")
    return cfg


def config_from_dict(data: dict, base: ExperimentCfg | None = None) -> ExperimentCfg:
    """Validate ``data`` and merge it over ``base`` (section by section, key by key)."""
    merged = (base or ExperimentCfg()).to_dict()
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a table/object at the top level, got {type(data).__name__}")
    for section, values in data.items():
        if section in merged and isinstance(values, dict) and isinstance(merged[section], dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return _build(ExperimentCfg, merged, "")


def load_config_file(path: str | Path, base: ExperimentCfg | None = None) -> ExperimentCfg:
    """Read a JSON or TOML config file (never anything executable)."""
    path = Path(path)
    if path.suffix.lower() not in (".json", ".toml"):
        raise ConfigError(f"{path}: config must be a .json or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e.__class__.__name__}: {e})") from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from None
    try:
        return config_from_dict(data, base)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def parse_override(text: str) -> dict:
    """``"train.lr=1e-3"`` -> ``{"train": {"lr": 0.001}}``; the value is parsed as JSON, else a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2:
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    out: dict = {}
    node = out
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def write_json_atomic(path: str | Path, data: Any) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
