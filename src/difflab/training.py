"""The training loop: AdamW with warm-up, EMA of weights, gradient clipping, atomic checkpoints, exact resume.

Exact resume: the data order is a pure function of (seed, epoch), the position in it is saved, and the
optimiser state, EMA weights, the loss's random generator and the global torch RNG (dropout) are all in the
checkpoint. On the CPU, a run resumed from step k ends with the same weights, bit for bit, as a run that was
never interrupted (``tests/test_training.py`` checks this).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import (
    find_checkpoint,
    load_state,
    load_tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from .config import ExperimentCfg, resolve_auto, write_json_atomic
from .data import Dataset, Normalizer
from .errors import ConfigError, DifflabError
from .losses import DenoisingLoss, make_sigma_distribution
from .model import auto_backbone, build_denoiser, load, pin_architecture, process_of, read_run_config
from .runlock import RunLock


def describe_data(data: Dataset, cfg: ExperimentCfg, spec: str | None = None) -> dict:
    """What the run needs to know about its data: kind, shape, classes, normaliser, sigma_data."""
    normalizer = data.normalizer  # fitted by the loader (on all rows, also when it keeps a subset)
    z = normalizer.forward(data.x)
    sigma_data = cfg.model.sigma_data or float(z.std())
    return {
        "spec": spec or data.name,
        "name": data.name,
        "kind": data.kind,
        "shape": list(data.x.shape[1:]),
        "count": int(data.x.shape[0]),
        "num_classes": int(data.num_classes),
        "columns": data.columns,
        "value_range": list(data.value_range) if getattr(data, "value_range", None) is not None else None,
        "normalizer": normalizer.to_dict(),
        "sigma_data": max(sigma_data, 1e-3),
    }


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config.train.device: unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config.train.device: {name!r} requested but CUDA is not available")
    return dev


def learning_rate(cfg, step: int) -> float:
    """Linear warm-up to ``lr``, then constant or cosine decay to ``lr_min_ratio * lr``."""
    tc = cfg.train
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    return tc.lr * (tc.lr_min_ratio + (1 - tc.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class DataOrder:
    """An endless stream of sample indices: epoch e is ``randperm(N)`` seeded by (seed, e)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def _perm_for(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def batch(self, position: int, size: int) -> torch.Tensor:
        out, pos = [], position
        while size > 0:
            epoch, off = divmod(pos, self.n)
            take = min(size, self.n - off)
            out.append(self._perm_for(epoch)[off : off + take])
            pos, size = pos + take, size - take
        return torch.cat(out)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float


@dataclass(frozen=True)
class TrainProgress:
    """What a ``train(..., callback=fn)`` callback receives after every completed step.

    ``elapsed_s`` is training wall time in this call (what ``train.max_minutes`` compares against);
    ``ema`` is the EMA denoiser (the weights sampling uses), ``model`` the raw one. Return True to stop the
    run now, with a checkpoint, as the time limit does.
    """

    step: int
    loss: float
    lr: float
    elapsed_s: float
    ema: torch.nn.Module
    model: torch.nn.Module


def accumulate_gradients(
    model, loss_fn, x0, labels, sigma, noise, micro_batches: int, autocast, sync=contextlib.nullcontext, scale=None
) -> float:
    """Backpropagate the mean loss over ``x0`` in ``micro_batches`` pieces; returns the loss value.

    ``sigma`` and ``noise`` are drawn for the whole batch beforehand (``DenoisingLoss.draw``), so the gradient
    is the same, up to float summation order, for any number of micro-batches. ``sync()`` is entered for all
    but the last piece (DDP's ``no_sync``). ``scale`` (a GradScaler's ``scale``) multiplies each piece's loss
    before its backward pass (fp16 loss scaling); the returned value is unscaled.
    """
    n = x0.shape[0]
    parts = torch.arange(n).chunk(micro_batches)
    total = 0.0
    for i, part in enumerate(parts):
        sl = slice(int(part[0]), int(part[-1]) + 1)
        with sync() if i < len(parts) - 1 else contextlib.nullcontext():
            with autocast:
                part_labels = None if labels is None else labels[sl]
                loss = loss_fn(model, x0[sl], part_labels, sigma=sigma[sl], noise=noise[sl]).sum() / n
            (scale(loss) if scale is not None else loss).backward()
        total += float(loss.detach())
    return total


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def _check_run(cfg: ExperimentCfg, data: Dataset) -> None:
    if cfg.model.class_conditional and data.labels is None:
        raise ConfigError("config.model.class_conditional: the data has no labels")
    process_of(cfg)  # a bad process name fails here rather than after config.json is written


def _prepare(cfg, data, run_dir: Path, resume: bool, data_spec):
    """The run's config and data description (saved ones on resume) and the checkpoint to resume from.

    Problems with the config or the data are raised here, before anything is written."""
    if not resume:
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise DifflabError(f"{run_dir}: already holds a run; use --resume to continue it or pick a new --out")
        _check_run(cfg, data)
        info = describe_data(data, cfg, data_spec)
        return pin_architecture(resolve_auto(cfg, data.kind), info), info, None
    saved_cfg, data_info = read_run_config(run_dir)
    if list(data.x.shape[1:]) != data_info["shape"]:
        raise DifflabError(f"--resume: data shape {list(data.x.shape[1:])} differs from the run's {data_info['shape']}")
    cfg = saved_cfg.replace("train", steps=cfg.train.steps, max_minutes=cfg.train.max_minutes)
    _check_run(cfg, data)
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        warnings.warn(f"{run_dir}: no complete checkpoint yet; starting from step 0", stacklevel=3)
    return cfg, data_info, ckpt


def _loss_fn(cfg: ExperimentCfg, data_info: dict) -> DenoisingLoss:
    process = process_of(cfg)
    lognormal = cfg.loss.sigma_dist == "lognormal"
    params = {"p_mean": cfg.loss.p_mean, "p_std": cfg.loss.p_std} if lognormal else {}
    dist_ = make_sigma_distribution(cfg.loss.sigma_dist, process, **params)
    return DenoisingLoss(dist_, cfg.loss.weighting, sigma_data=data_info["sigma_data"], gamma=cfg.loss.gamma)


def _precision(tc, device: torch.device):
    """Autocast context and gradient scaler for ``train.precision`` (Micikevicius et al. 2018 for fp16 loss
    scaling; bf16 has fp32's exponent range and needs no scaler)."""
    if tc.precision == "fp16" and device.type != "cuda":
        raise ConfigError("config.train.precision: 'fp16' needs a CUDA device; use 'bf16' on the CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.precision)
    autocast = torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    scaler = torch.amp.GradScaler("cuda") if tc.precision == "fp16" else None
    return autocast, scaler


def use_channels_last(tc, device: torch.device, kind: str, backbone: str = "unet") -> bool:
    """``train.channels_last``: "on", "off", or "auto" = on for image backbones on CUDA (cuDNN's NHWC kernels)
    and for the fp32 UNet on the CPU, where oneDNN's NHWC convolutions made a whole training step 1.1-1.2x
    faster; with bf16 on the CPU it was slower, so auto leaves it off there (bench/throughput.py,
    docs/benchmarks.md). The memory format does not change the values (tested)."""
    if kind != "image" or tc.channels_last == "off":
        return False
    cpu_fp32_unet = device.type == "cpu" and backbone == "unet" and tc.precision == "fp32"
    return tc.channels_last == "on" or device.type == "cuda" or cpu_fp32_unet


class BatchSource:
    """The training set in model space, indexed one batch at a time.

    Data is decoded once at load time, so there is no per-item work for DataLoader worker processes to
    overlap: on the CPU, and on CUDA when the set takes under half the free device memory, the whole set lives
    on the device and a batch is one index operation. A larger set stays in page-locked host memory and each
    batch is gathered into one of two pinned buffers and copied asynchronously (``non_blocking``), which is
    what ``DataLoader(pin_memory=True)`` would give, without worker processes.
    """

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None, device: torch.device, channels_last: bool):
        self.device, self.channels_last = device, channels_last
        self.labels = None if labels is None else labels.to(device)
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        self.resident = device.type != "cuda" or x.numel() * x.element_size() < 0.5 * free
        self.x = x.to(device) if self.resident else x.pin_memory()
        self._buffers: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
        self._turn = 0

    def _gather_pinned(self, idx: torch.Tensor) -> torch.Tensor:
        shape = (idx.numel(), *self.x.shape[1:])
        if not self._buffers or self._buffers[0][0].shape != shape:
            self._buffers = [(torch.empty(shape, dtype=self.x.dtype).pin_memory(), None) for _ in range(2)]
        self._turn ^= 1
        buf, event = self._buffers[self._turn]
        if event is not None:
            event.synchronize()  # the copy that last read this buffer has finished
        torch.index_select(self.x, 0, idx, out=buf)
        out = buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._buffers[self._turn] = (buf, event)
        return out

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.x[idx.to(self.x.device)] if self.resident else self._gather_pinned(idx)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class _Run:
    """Everything one training run updates, with the checkpoint round-trip."""

    cfg: ExperimentCfg
    data_info: dict
    ctx: distributed.DistContext
    model: torch.nn.Module
    ema: torch.nn.Module
    net: torch.nn.Module  # what the step calls: the model, DDP-wrapped and/or compiled
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: object
    loss_fn: DenoisingLoss
    gen: torch.Generator
    batches: BatchSource
    order: DataOrder
    step: int = 0
    position: int = 0
    dequant: torch.Tensor | None = None  # per-element width of the uniform dequantisation (model space)

    def save(self, run_dir: Path) -> None:
        if self.ctx.is_main:
            opt_tensors, opt_meta = optimizer_to_flat(self.opt)
            trainer = {**opt_tensors, "rng.torch": torch.get_rng_state(), "rng.loss": self.gen.get_state()}
            extra = {"step": self.step, "position": self.position, "optimizer": opt_meta}
            if self.scaler is not None:
                extra["grad_scaler"] = self.scaler.state_dict()
            save_checkpoint(run_dir, self.step,
                            {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "trainer": trainer},
                            extra, keep=self.cfg.train.keep_checkpoints)
        self.ctx.barrier()

    def restore(self, ckpt: Path) -> None:
        self.model.load_state_dict(load_tensors(ckpt, "model"))
        self.ema.load_state_dict(load_tensors(ckpt, "ema"))
        state, extra = load_tensors(ckpt, "trainer"), load_state(ckpt)
        optimizer_from_flat(self.opt, state, extra["optimizer"])
        torch.set_rng_state(state["rng.torch"])
        self.gen.set_state(state["rng.loss"])
        if self.scaler is not None and "grad_scaler" in extra:
            self.scaler.load_state_dict(extra["grad_scaler"])
        self.step, self.position = extra["step"], extra["position"]

    def train_step(self) -> tuple[float, float, bool]:
        """One optimiser step on the next global batch; returns (loss, grad norm, whether it was applied)."""
        tc, ctx = self.cfg.train, self.ctx
        idx = self.order.batch(self.position, tc.batch_size)
        self.position += tc.batch_size
        labels = None
        if self.batches.labels is not None:  # label dropout: the "unconditional" label num_classes
            labels = self.batches.labels[idx.to(self.batches.labels.device)].clone()
            drop = torch.rand(labels.shape[0], generator=self.gen) < self.cfg.loss.label_dropout
            labels[drop.to(labels.device)] = self.data_info["num_classes"]
        sigma, noise = self.loss_fn.draw((tc.batch_size, *self.batches.x.shape[1:]), self.gen)
        mine = ctx.shard(tc.batch_size)
        noise = noise[mine].contiguous(memory_format=torch.channels_last) if self.batches.channels_last else noise[mine]
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(self.cfg, self.step)
        self.opt.zero_grad(set_to_none=True)
        scale = self.scaler.scale if self.scaler is not None else None
        x = self.batches.get(idx[mine])
        if self.dequant is not None:  # drawn for the global batch, like the noise, then this rank's rows
            u = torch.rand((tc.batch_size, *x.shape[1:]), generator=self.gen)[mine] - 0.5
            x = x + (u * self.dequant).to(device=x.device, dtype=x.dtype)
        loss = accumulate_gradients(
            self.net, self.loss_fn, x, None if labels is None else labels[mine],
            sigma[mine], noise, tc.grad_accum, self.autocast, sync=lambda: distributed.no_sync(self.net), scale=scale,
        )
        loss = ctx.mean(loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip or float("inf")))
        self.step += 1
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if self.scaler is not None:
            # fp16: the scaler skips a step whose gradients overflowed and lowers the scale (expected now and
            # then, not a fault); step() and update() run every time so the scaler's per-step state is reset
            self.scaler.step(self.opt)
            self.scaler.update()
        elif finite:
            self.opt.step()
        if finite:
            _ema_update(self.ema, self.model, min(tc.ema_decay, (1 + self.step) / (10 + self.step)))
        # a non-finite loss is a fault; with fp16, an overflow of the scaled gradients alone is not
        return loss, grad_norm, math.isfinite(loss) and (finite or self.scaler is not None)


def _build_run(cfg: ExperimentCfg, data_info: dict, data: Dataset, device: torch.device, ctx) -> _Run:
    tc = cfg.train
    autocast, scaler = _precision(tc, device)
    channels_last = use_channels_last(tc, device, data_info["kind"], auto_backbone(cfg, data_info)[0])
    torch.manual_seed(tc.seed)
    model = build_denoiser(cfg, data_info).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay, **impl)
    labels = data.labels if cfg.model.class_conditional else None
    normalizer = Normalizer.from_dict(data_info["normalizer"])
    x = normalizer.forward(data.x)
    dequant = dequantization_width(data.x, normalizer) if tc.dequantize == "integers" else None  # auto: resolved
    net = distributed.wrap(model, ctx)
    if tc.compile:
        net = torch.compile(net)
    return _Run(cfg, data_info, ctx, model, ema, net, opt, scaler, autocast, _loss_fn(cfg, data_info),
                torch.Generator().manual_seed(tc.seed + 1), BatchSource(x, labels, device, channels_last),
                DataOrder(x.shape[0], tc.seed), dequant=dequant)


def dequantization_width(x: torch.Tensor, normalizer: Normalizer) -> torch.Tensor | None:
    """Model-space width of uniform dequantisation for data ``x`` (data units): 1 / scale in every column of a
    table whose values are all integers (0 elsewhere), or for images if every value is an integer; ``None``
    if nothing is integer-valued.

    Adding u ~ U(-1/2, 1/2) in data units to integer data during training makes the model's density that of
    the dequantised data, so it is finite, and log p of a lattice point bounds the discrete log-probability
    (Theis, van den Oord & Bethge 2016; Ho et al. 2019, Flow++ Sec. 3.1). Without it, a model of integer data
    concentrates on the lattice and rewards being on it, which every integer row is, normal or not.
    """
    integer = x == x.round()
    scale = torch.tensor(normalizer.scale, dtype=torch.float32)
    if normalizer.kind == "tabular":
        columns = integer.reshape(-1, x.shape[-1]).all(0)
        return torch.where(columns, 1.0 / scale, 0.0) if bool(columns.any()) else None
    return (1.0 / scale[0]).reshape(()) if bool(integer.all()) else None


def train(
    cfg: ExperimentCfg,
    data: Dataset,
    run_dir: str | Path,
    *,
    resume: bool = False,
    data_spec: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    callback: Callable[[TrainProgress], bool | None] | None = None,
) -> TrainResult:
    """Train a denoiser on ``data`` and write checkpoints into ``run_dir``.

    ``resume=True`` continues from the newest good checkpoint in ``run_dir`` with the config saved there;
    only ``train.steps`` and ``train.max_minutes`` are taken from ``cfg`` (a run killed before its first
    checkpoint starts again from step 0). ``stop_after`` stops after that many steps in this call without a
    final checkpoint (it simulates an interrupted run in tests). ``callback(TrainProgress)`` runs after every
    step on every rank; when it returns True on any rank, the run stops with a checkpoint. Under torchrun,
    every rank calls this; rank 0 alone writes files.
    """
    run_dir = Path(run_dir)
    cfg, data_info, ckpt = _prepare(cfg, data, run_dir, resume, data_spec)
    tc = cfg.train
    requested = pick_device(tc.device)
    ctx = distributed.setup(requested.type)
    device = ctx.device(requested)
    if tc.batch_size % (tc.grad_accum * ctx.world):
        raise ConfigError(f"config.train.batch_size: {tc.batch_size} is not divisible by grad_accum x world size "
                          f"({tc.grad_accum} x {ctx.world})")
    with RunLock(run_dir) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:  # on resume this records a changed train.steps / max_minutes
            write_json_atomic(run_dir / "config.json", {"config": cfg.to_dict(), "data": data_info})
        run = _build_run(cfg, data_info, data, device, ctx)
        if ckpt is not None:
            run.restore(ckpt)
        result, finished = _loop(run, run_dir, progress and ctx.is_main, stop_after, callback)
        if finished and ctx.is_main and tc.sample_grid > 0 and (data_info["kind"] == "image" or data_info["shape"] == [2]):
            write_sample_grid(run_dir, tc.sample_grid, seed=tc.seed, reference=data.x)
    return result


def _loop(run: _Run, run_dir: Path, progress: bool, stop_after: int | None,
          callback: Callable[[TrainProgress], bool | None] | None = None) -> tuple[TrainResult, bool]:
    """Steps until ``train.steps``, the time limit or ``stop_after``; checkpoints, metrics, progress bar.

    Returns the result and whether the run ended normally (False after ``stop_after``).
    """
    tc, ctx = run.cfg.train, run.ctx
    metrics = _MetricsLog(run_dir / "metrics.csv", truncate_after=run.step) if ctx.is_main else None
    run.net.train()
    bar = tqdm(total=tc.steps, initial=run.step, desc="training", unit="step", disable=not progress)
    t_start, last_loss, smooth, done_here, bad_steps = time.perf_counter(), float("nan"), None, 0, 0
    with bar:
        while run.step < tc.steps:
            loss, grad_norm, ok = run.train_step()
            if not ok:
                bad_steps += 1
                warnings.warn(f"step {run.step - 1}: non-finite loss or gradient; step skipped", stacklevel=2)
                if bad_steps >= 5:
                    raise DifflabError(f"training stopped: {bad_steps} non-finite steps in a row (last good checkpoint kept)")
                continue
            bad_steps, done_here, last_loss = 0, done_here + 1, loss
            smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{smooth:.4f}")
            elapsed = time.perf_counter() - t_start
            if metrics and (run.step % tc.log_every == 0 or run.step == tc.steps):
                lr = run.opt.param_groups[0]["lr"]
                metrics.write(run.step, loss, lr, grad_norm, done_here * tc.batch_size / elapsed, elapsed)
            if stop_after is not None and done_here >= stop_after:
                return TrainResult(run_dir, run.step, last_loss), False
            asked = bool(callback(TrainProgress(run.step, loss, run.opt.param_groups[0]["lr"], elapsed, run.ema,
                                                run.model))) if callback is not None else False
            timed_out = tc.max_minutes > 0 and elapsed > 60 * tc.max_minutes
            out_of_time = ctx.any(timed_out or asked)
            if run.step % tc.checkpoint_every == 0 or run.step == tc.steps or out_of_time:
                run.save(run_dir)
            if out_of_time:
                why = f"train.max_minutes={tc.max_minutes} reached" if timed_out else "the callback asked to stop"
                bar.write(f"stopping at step {run.step}: {why}")
                break
    return TrainResult(run_dir, run.step, last_loss), True


def write_sample_grid(run_dir: Path, n: int, seed: int = 0, reference=None) -> Path:
    """Picture of what the newest checkpoint (EMA weights) generates, as ``run_dir/samples.png``: a grid of
    ``n`` images, or for 2-D tabular data a scatter of 16 n samples over (up to 5,000 of) the ``reference`` data."""
    from .data import save_image_grid, save_scatter, to_display_uint8

    model = load(run_dir)
    path = Path(run_dir) / "samples.png"
    if model.kind == "image":
        images = model.sample(n, seed=seed)
        save_image_grid(to_display_uint8(images, model.data_info["value_range"]), path)
    else:
        save_scatter(model.sample(16 * n, seed=seed), path, None if reference is None else reference[:5000])
    return path


class _MetricsLog:
    """metrics.csv; on resume, rows after the resumed step are dropped so the log matches the weights."""

    HEADER = "step,loss,lr,grad_norm,samples_per_s,elapsed_s\n"

    def __init__(self, path: Path, truncate_after: int):
        self.path = path
        rows = []
        if truncate_after > 0 and path.exists():
            for line in path.read_text().splitlines()[1:]:
                try:
                    if int(line.split(",")[0]) <= truncate_after:
                        rows.append(line + "\n")
                except ValueError:
                    continue
        with open(path, "w") as f:
            f.write(self.HEADER + "".join(rows))

    def write(self, step, loss, lr, grad_norm, rate, elapsed) -> None:
        with open(self.path, "a") as f:
            f.write(f"{step},{loss:.6g},{lr:.6g},{grad_norm:.6g},{rate:.1f},{elapsed:.2f}\n")
            f.flush()
            os.fsync(f.fileno())
