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
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import (
    find_checkpoint,
    load_state,
    load_tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from .config import ExperimentCfg, resolve_auto, write_json_atomic
from . import distributed
from .data import Dataset, Normalizer
from .errors import ConfigError, DifflabError
from .losses import DenoisingLoss, make_sigma_distribution
from .model import build_denoiser, load, read_run_config
from .process import process_from_dict
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


def accumulate_gradients(
    model, loss_fn, x0, labels, sigma, noise, micro_batches: int, autocast, sync=contextlib.nullcontext
) -> float:
    """Backpropagate the mean loss over ``x0`` in ``micro_batches`` pieces; returns the loss value.

    ``sigma`` and ``noise`` are drawn for the whole batch beforehand (``DenoisingLoss.draw``), so the gradient
    is the same, up to float summation order, for any number of micro-batches. ``sync()`` is entered for all
    but the last piece (DDP's ``no_sync``).
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
            loss.backward()
        total += float(loss.detach())
    return total


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def _prepare(cfg, data, run_dir: Path, resume: bool, data_spec):
    """The run's config and data description (saved ones on resume) and the checkpoint to resume from."""
    if not resume:
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise DifflabError(f"{run_dir}: already holds a run; use --resume to continue it or pick a new --out")
        return resolve_auto(cfg, data.kind), describe_data(data, cfg, data_spec), None
    saved_cfg, data_info = read_run_config(run_dir)
    if list(data.x.shape[1:]) != data_info["shape"]:
        raise DifflabError(f"--resume: data shape {list(data.x.shape[1:])} differs from the run's {data_info['shape']}")
    cfg = saved_cfg.replace("train", steps=cfg.train.steps, max_minutes=cfg.train.max_minutes)
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        warnings.warn(f"{run_dir}: no complete checkpoint yet; starting from step 0", stacklevel=3)
    return cfg, data_info, ckpt


def _loss_fn(cfg: ExperimentCfg, data_info: dict) -> DenoisingLoss:
    process = process_from_dict({"name": cfg.process.name, **cfg.process.params})
    lognormal = cfg.loss.sigma_dist == "lognormal"
    params = {"p_mean": cfg.loss.p_mean, "p_std": cfg.loss.p_std} if lognormal else {}
    dist_ = make_sigma_distribution(cfg.loss.sigma_dist, process, **params)
    return DenoisingLoss(dist_, cfg.loss.weighting, sigma_data=data_info["sigma_data"], gamma=cfg.loss.gamma)


def train(
    cfg: ExperimentCfg,
    data: Dataset,
    run_dir: str | Path,
    *,
    resume: bool = False,
    data_spec: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train a denoiser on ``data`` and write checkpoints into ``run_dir``.

    ``resume=True`` continues from the newest good checkpoint in ``run_dir`` with the config saved there;
    only ``train.steps`` and ``train.max_minutes`` are taken from ``cfg`` (a run killed before its first
    checkpoint starts again from step 0). ``stop_after`` stops after that many steps in this call without a
    final checkpoint (it simulates an interrupted run in tests). Under torchrun, every rank calls this; rank 0
    alone writes files.
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
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    with RunLock(run_dir) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:  # on resume this records a changed train.steps / max_minutes
            write_json_atomic(run_dir / "config.json", {"config": cfg.to_dict(), "data": data_info})
        torch.manual_seed(tc.seed)
        model = build_denoiser(cfg, data_info).to(device)
        ema = copy.deepcopy(model).requires_grad_(False)
        impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay,
                                **impl)
        loss_fn = _loss_fn(cfg, data_info)
        gen = torch.Generator().manual_seed(tc.seed + 1)
        x_all = Normalizer.from_dict(data_info["normalizer"]).forward(data.x).to(device)
        labels_all = None
        if cfg.model.class_conditional:
            if data.labels is None:
                raise ConfigError("config.model.class_conditional: the data has no labels")
            labels_all = data.labels.to(device)
        order = DataOrder(x_all.shape[0], tc.seed)
        step, position = 0, 0
        if ckpt is not None:
            model.load_state_dict(load_tensors(ckpt, "model"))
            ema.load_state_dict(load_tensors(ckpt, "ema"))
            state, extra = load_tensors(ckpt, "trainer"), load_state(ckpt)
            optimizer_from_flat(opt, state, extra["optimizer"])
            torch.set_rng_state(state["rng.torch"])
            gen.set_state(state["rng.loss"])
            step, position = extra["step"], extra["position"]
        net = distributed.wrap(model, ctx)
        metrics = _MetricsLog(run_dir / "metrics.csv", truncate_after=step) if ctx.is_main else None

        def checkpoint(at_step: int) -> None:
            if ctx.is_main:
                opt_tensors, opt_meta = optimizer_to_flat(opt)
                trainer_tensors = {**opt_tensors, "rng.torch": torch.get_rng_state(), "rng.loss": gen.get_state()}
                save_checkpoint(run_dir, at_step,
                                {"model": model.state_dict(), "ema": ema.state_dict(), "trainer": trainer_tensors},
                                {"step": at_step, "position": position, "optimizer": opt_meta},
                                keep=tc.keep_checkpoints)
            ctx.barrier()

        net.train()
        bar = tqdm(total=tc.steps, initial=step, desc="training", unit="step", disable=not (progress and ctx.is_main))
        t_start, last_loss, smooth, done_here, bad_steps = time.perf_counter(), float("nan"), None, 0, 0
        while step < tc.steps:
            idx = order.batch(position, tc.batch_size)
            position += tc.batch_size
            labels = None
            if labels_all is not None:  # label dropout: the "unconditional" label num_classes
                labels = labels_all[idx].clone()
                drop = torch.rand(labels.shape[0], generator=gen) < cfg.loss.label_dropout
                labels[drop.to(labels.device)] = data_info["num_classes"]
            sigma, noise = loss_fn.draw((tc.batch_size, *x_all.shape[1:]), gen)
            mine = ctx.shard(tc.batch_size)
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            opt.zero_grad(set_to_none=True)
            loss_value = accumulate_gradients(
                net, loss_fn, x_all[idx[mine]], None if labels is None else labels[mine], sigma[mine], noise[mine],
                tc.grad_accum, autocast, sync=lambda: distributed.no_sync(net),
            )
            loss_value = ctx.mean(loss_value)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf")))
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                bad_steps += 1
                warnings.warn(f"step {step}: non-finite loss or gradient; step skipped", stacklevel=2)
                if bad_steps >= 5:
                    raise DifflabError(f"training stopped: {bad_steps} non-finite steps in a row (last good checkpoint kept)")
                step += 1
                continue
            bad_steps = 0
            opt.step()
            step += 1
            done_here += 1
            _ema_update(ema, model, min(tc.ema_decay, (1 + step) / (10 + step)))
            last_loss = loss_value
            smooth = last_loss if smooth is None else 0.95 * smooth + 0.05 * last_loss
            bar.update(1)
            bar.set_postfix(loss=f"{smooth:.4f}")
            elapsed = time.perf_counter() - t_start
            if metrics and (step % tc.log_every == 0 or step == tc.steps):
                metrics.write(step, last_loss, opt.param_groups[0]["lr"], grad_norm, done_here * tc.batch_size / elapsed, elapsed)
            if stop_after is not None and done_here >= stop_after:
                bar.close()
                return TrainResult(run_dir, step, last_loss)
            out_of_time = ctx.any(tc.max_minutes > 0 and elapsed > 60 * tc.max_minutes)
            if step % tc.checkpoint_every == 0 or step == tc.steps or out_of_time:
                checkpoint(step)
            if out_of_time:
                bar.write(f"stopping at step {step}: train.max_minutes={tc.max_minutes} reached")
                break
        bar.close()
        if ctx.is_main and tc.sample_grid > 0 and (data_info["kind"] == "image" or data_info["shape"] == [2]):
            write_sample_grid(run_dir, tc.sample_grid, seed=tc.seed, reference=data.x)
    return TrainResult(run_dir, step, last_loss)


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
