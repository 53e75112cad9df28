"""Building a denoiser from a config, and the loaded-model object returned by ``difflab.load``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor

from . import sampling
from .backbones import backbone_presets, build_backbone
from .checkpoint import find_checkpoint, load_tensors, verify_checkpoint
from .config import ExperimentCfg, config_from_dict, resolve_auto
from .data import Normalizer
from .denoiser import CFGDenoiser, Denoiser
from .errors import CheckpointError, ConfigError
from .generate import generate
from .process import NoiseProcess, process_from_dict


def auto_backbone(cfg: ExperimentCfg, data_info: dict) -> tuple[str, str]:
    """Resolve ``backbone="auto"`` and ``preset="auto"`` from the data: UNet for images, MLP for tables."""
    kind = data_info["kind"]
    name = cfg.model.backbone
    if name == "auto":
        name = "unet" if kind == "image" else "mlp"
    preset = cfg.model.preset
    if preset == "auto":
        if name == "mlp":
            preset = "base"
        elif name == "dit":
            preset = "S/2"
        else:
            h, w = data_info["shape"][1:]
            preset = "tiny" if h * w <= 16 * 16 else "small"
    return name, preset


def pin_architecture(cfg: ExperimentCfg, data_info: dict) -> ExperimentCfg:
    """Resolve ``auto`` backbone/preset and copy the preset's values into ``model.params`` (user values win).

    A new run's saved config then describes its network by itself, so a later change to a preset (the UNet
    ``small`` preset went from 32/64/64 to 16/48/80 channels) never changes how an existing run is rebuilt.
    An unknown backbone or preset is left alone for ``build_denoiser`` to report.
    """
    name, preset = auto_backbone(cfg, data_info)
    try:
        values = backbone_presets(name).get(preset)
    except ValueError:
        values = None
    if values is None:
        return cfg
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in {**values, **cfg.model.params}.items()}
    return cfg.replace("model", backbone=name, preset=preset, params=params)


def process_of(cfg: ExperimentCfg) -> NoiseProcess:
    """The run's noise process; a bad ``process.name``/``process.params`` is a ConfigError naming the key."""
    try:
        return process_from_dict({"name": cfg.process.name, **cfg.process.params})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.process: {e}") from None


def build_denoiser(cfg: ExperimentCfg, data_info: dict) -> Denoiser:
    """Backbone + preconditioning for data described by ``data_info`` (kind, shape, num_classes...)."""
    name, preset = auto_backbone(cfg, data_info)
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.model.params.items()}
    num_classes = data_info.get("num_classes", 0) if cfg.model.class_conditional else 0
    shape = data_info["shape"]
    if data_info["kind"] == "image":
        if name == "mlp":
            raise ConfigError("config.model.backbone: 'mlp' needs tabular data; use 'unet' or 'dit' for images")
        params.setdefault("in_channels", shape[0])
        if name == "dit":
            params.setdefault("image_size", tuple(shape[1:]))
    else:
        if name != "mlp":
            raise ConfigError(f"config.model.backbone: {name!r} needs image data; use 'mlp' for tabular data")
        params.setdefault("in_features", shape[0])
    if num_classes:
        params.setdefault("num_classes", num_classes)
    try:
        backbone = build_backbone(name, preset=preset, **params)
    except ConfigError as e:
        raise ConfigError(f"config.model: {e}") from None
    return Denoiser(backbone, prediction=cfg.model.prediction, sigma_data=data_info["sigma_data"])


class DiffusionModel:
    """A trained model: ``denoiser(x, sigma)`` in EDM coordinates, normalisation, and ``sample``.

    Attributes:
        denoiser: D(x, sigma, class_labels=None) -> x0 estimate, where x = x0 + sigma * noise lives in the
            model's normalised space and sigma is a float or a tensor of shape (N,).
        process: the noise process the model was trained under (for its native sigma grids).
        sigma_min, sigma_max: the noise range the model was trained for.
        kind: "image" or "tabular"; shape: one sample's shape in model space ((C, H, W) or (D,)).
    """

    def __init__(self, denoiser: Denoiser, cfg: ExperimentCfg, data_info: dict, device="cpu",
                 run_dir: str | Path | None = None, checkpoint: str | None = None):
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.checkpoint = checkpoint  # the checkpoint folder's name, when loaded from a run
        self.denoiser = denoiser.eval().requires_grad_(False).to(device)
        self.cfg = resolve_auto(cfg, data_info["kind"])
        self.data_info = data_info
        self.device = torch.device(device)
        self.process: NoiseProcess = process_of(cfg)
        self.normalizer = Normalizer.from_dict(data_info["normalizer"])
        self.kind: str = data_info["kind"]
        self.shape: tuple[int, ...] = tuple(data_info["shape"])
        self.num_classes: int = data_info.get("num_classes", 0) if cfg.model.class_conditional else 0

    @property
    def sigma_min(self) -> float:
        return self.process.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.process.sigma_max

    def normalize(self, x: Tensor) -> Tensor:
        """Data units -> model space."""
        return self.normalizer.forward(torch.as_tensor(x, dtype=torch.float32))

    def denormalize(self, z: Tensor) -> Tensor:
        """Model space -> data units."""
        return self.normalizer.inverse(torch.as_tensor(z, dtype=torch.float32))

    def sigmas(
        self,
        steps: int | None = None,
        schedule: str | None = None,
        sigma_last: float | None = None,
        sampler: str | None = None,
        options: dict | None = None,
    ) -> Tensor:
        """The sampling grid (descending, ending in 0): ``steps`` intervals of ``schedule`` from sigma_max down to
        ``sigma_last`` (default: the run's ``sample.sigma_last``, else the process's sigma_min), then 0.

        ``schedule="tuned"`` reads the grid that ``tune_schedule`` (``difflab tune``) fitted for ``sampler``
        (with ``options``) and ``steps`` from the run's ``schedules.json``.
        """
        schedule = schedule or self.cfg.sample.schedule
        steps = steps or self.cfg.sample.steps
        if schedule == "tuned":
            if sigma_last is not None:
                raise ValueError("sigma_last: a tuned grid already places its last level; leave sigma_last unset")
            return self._tuned_sigmas(sampler or self.cfg.sample.sampler, steps, options)
        last = sigma_last if sigma_last is not None else self.cfg.sample.sigma_last
        last = self.sigma_min if last is None else float(last)
        if not self.sigma_min <= last < self.sigma_max:
            raise ValueError(f"sigma_last: must be in [{self.sigma_min:g}, {self.sigma_max:g}), got {last:g}")
        return sampling.get_sigmas(schedule, steps, sigma_min=last, sigma_max=self.sigma_max, process=self.process)

    @property
    def schedules_file(self) -> Path | None:
        """Where tuned grids of this run are stored (``RUN/schedules.json``); None for a model not loaded from a run."""
        return None if self.run_dir is None else self.run_dir / "schedules.json"

    def _tuned_sigmas(self, sampler: str, steps: int, options: dict | None) -> Tensor:
        from .sampling import tuned

        path = self.schedules_file
        if path is None:
            raise ValueError("schedule: 'tuned' needs a model loaded from a run folder (difflab.load)")
        found = tuned.find_schedule(path, sampler, steps, options)
        if found is None:
            have = ", ".join(tuned.available(path)) or "none"
            raise ValueError(f"schedule: no tuned grid for {tuned.schedule_key(sampler, steps, options)} in {path} "
                             f"(have: {have}); make one with: difflab tune {self.run_dir} --sampler {sampler} "
                             f"--steps {steps}")
        schedule, record = found
        if record.get("checkpoint") and self.checkpoint and record["checkpoint"] != self.checkpoint:
            warnings.warn(f"{path}: the {sampler} grid was tuned on {record['checkpoint']}, this model is "
                          f"{self.checkpoint}; rerun difflab tune", stacklevel=3)
        return schedule.grid()

    def tune_schedule(
        self,
        sampler: str | None = None,
        steps: int | None = None,
        *,
        n: int = 64,
        seed: int = 1,
        rtol: float = 1e-5,
        max_evals: int | None = None,
        guidance: float | None = None,
        save: bool = True,
        progress: bool = False,
        **options,
    ):
        """Fit a ``steps``-interval grid for the deterministic ``sampler`` to this model's ODE endpoints.

        See :func:`difflab.sampling.tuned.tune_sigmas` (``n`` noise samples drawn from ``seed``, half of them
        held out). With ``save`` the grid is stored in the run's ``schedules.json``, and
        ``sample(..., schedule="tuned")`` then uses it. Class-conditional models are tuned with every class in
        turn and the run's guidance weight (or ``guidance``). Returns a ``TunedSchedule``.
        """
        from tqdm.auto import tqdm

        from .sampling import tuned

        sampler = sampler or self.cfg.sample.sampler
        steps = steps or self.cfg.sample.steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"n: must be an integer >= 2, got {n!r}")
        if save and self.schedules_file is None:
            raise ValueError("save: this model was not loaded from a run folder; use save=False")
        guidance = self.cfg.sample.guidance if guidance is None else float(guidance)
        denoiser, cond = self.denoiser, None
        if self.num_classes:
            cond = {"class_labels": (torch.arange(n) % self.num_classes).to(self.device)}
            if guidance != 1.0:
                denoiser = CFGDenoiser(self.denoiser, self.num_classes, guidance)
        noise = torch.randn(n, *self.shape, generator=torch.Generator().manual_seed(int(seed))).to(self.device)
        bar = tqdm(desc=f"tuning {sampler} ({steps} steps)", unit="eval", disable=not progress, leave=False)

        def tick(evals, best):
            bar.update(1)
            bar.set_postfix(error=f"{best:.3g}")

        result = tuned.tune_sigmas(
            denoiser, noise, sampler=sampler, steps=steps, sigma_min=self.sigma_min, sigma_max=self.sigma_max,
            options=options, cond=cond, rtol=rtol, max_evals=max_evals, progress=tick,
        )
        bar.close()
        result.info.update(seed=int(seed), guidance=guidance if self.num_classes else None)
        if save:
            tuned.write_schedule(self.schedules_file, result, checkpoint=self.checkpoint)
        return result

    def sample(
        self,
        n: int,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        schedule: str | None = None,
        sigma_last: float | None = None,
        seed: int = 0,
        class_labels: Tensor | list[int] | int | None = None,
        guidance: float | None = None,
        batch_size: int = 256,
        progress: bool = False,
        **options,
    ) -> Tensor:
        """Draw ``n`` samples and return them in data units (float32 tensor of shape (n, *shape)).

        For a class-conditional model, ``class_labels`` (one label, or one per sample) picks the classes;
        by default sample i gets class ``i % num_classes``, so every class is equally represented.
        ``guidance`` is the classifier-free guidance weight (default: the run's ``sample.guidance``;
        1 = the plain conditional model, 0 = the unconditional one). ``sigma_last``: see :meth:`sigmas`.
        """
        if n < 1:
            raise ValueError(f"n: must be >= 1, got {n}")
        if guidance is None:
            guidance = self.cfg.sample.guidance
        if guidance < 0:
            raise ValueError(f"guidance: must be >= 0, got {guidance}")
        if class_labels is None and self.num_classes:
            class_labels = torch.arange(n) % self.num_classes
        class_labels = check_class_labels(self, class_labels, n)
        z = generate(
            self.denoiser,
            self.shape,
            n,
            sigmas=self.sigmas(steps, schedule, sigma_last, sampler, options).to(self.device),
            sampler=sampler or self.cfg.sample.sampler,
            seed=seed,
            class_labels=class_labels,
            guidance=guidance,
            num_classes=self.num_classes,
            batch_size=batch_size,
            device=self.device,
            progress=progress,
            **options,
        )
        return self.denormalize(z)


def check_class_labels(model, class_labels, n: int) -> Tensor | None:
    """``class_labels`` (None, one label, or one per sample) as a LongTensor of n labels in [0, num_classes),
    checked against ``model.num_classes``; errors are ValueErrors naming ``class_labels``."""
    if class_labels is None:
        return None
    num_classes = getattr(model, "num_classes", 0)
    if not num_classes:
        raise ValueError("class_labels: this model was not trained class-conditionally")
    labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
    if labels.numel() not in (1, n):
        raise ValueError(f"class_labels: needs one label or one per sample ({n}), got {labels.numel()}")
    labels = labels.expand(n).clone()
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"class_labels: must be in [0, {num_classes - 1}]")
    return labels


def read_run_config(run_dir: str | Path) -> tuple[ExperimentCfg, dict]:
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    try:
        raw = json.loads(path.read_text())
        return config_from_dict(raw["config"]), raw["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: missing or unreadable run config ({e.__class__.__name__})") from None


def load(run_dir: str | Path, *, checkpoint: str | Path | None = None, ema: bool = True, device="cpu"):
    """Load a trained run folder (written by ``difflab train``) as a :class:`DiffusionModel`.

    ``checkpoint`` picks a specific checkpoint folder; by default the newest one that verifies.
    ``ema=True`` loads the EMA weights (what sampling should use).
    """
    cfg, data_info = read_run_config(run_dir)
    if checkpoint is None:
        ckpt = find_checkpoint(run_dir)
        if ckpt is None:
            raise CheckpointError(f"{run_dir}: no complete checkpoint found")
    else:
        ckpt = Path(checkpoint)
        verify_checkpoint(ckpt)
    denoiser = build_denoiser(cfg, data_info)
    weights = load_tensors(ckpt, "ema" if ema else "model")
    try:
        missing, unexpected = denoiser.load_state_dict(weights, strict=False)
        problem = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected else None
    except RuntimeError as e:  # the same names with other shapes
        problem = "tensor shapes differ: " + " ".join(str(e).split())[:160]
    if problem:
        hint = ""
        if not cfg.model.params:  # a run from before presets were pinned (see pin_architecture)
            preset = auto_backbone(cfg, data_info)[1]
            hint = (f"; it may come from an older difflab whose preset {preset!r} had another layout: "
                    f"give that layout as model.params in config.json")
        raise CheckpointError(f"{ckpt}: weights do not fit {Path(run_dir) / 'config.json'} ({problem}){hint}")
    return DiffusionModel(denoiser, cfg, data_info, device=device, run_dir=run_dir, checkpoint=Path(ckpt).name)
