"""Checkpoints: a folder of safetensors files plus JSON, written atomically, verified on load.

Layout of a run folder::

    RUN/config.json                      resolved experiment config, data description, normaliser
    RUN/checkpoints/step-00001000/       one checkpoint
        model.safetensors                raw weights
        ema.safetensors                  EMA weights (used for sampling)
        trainer.safetensors              optimiser tensors and RNG states
        trainer.json                     step, data position, optimiser hyper-parameters
        manifest.json                    sha256 of every file above; written last
    RUN/checkpoints/LATEST               name of the newest complete checkpoint

A checkpoint is first written to a hidden temporary folder, fsynced, and renamed into place; LATEST is
replaced atomically afterwards. A run killed at any moment therefore leaves the previous checkpoint as the
newest complete one. Loading verifies the manifest's checksums and falls back to the previous good
checkpoint when the newest is damaged. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .io import atomic_write_text, fsync_dir

FORMAT = 1
_PREFIX = "step-"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict,
    keep: int = 3,
) -> Path:
    """Write ``tensors[name]`` to ``name.safetensors`` and ``state`` to ``trainer.json``, atomically."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    for name, sd in tensors.items():
        path = tmp / f"{name}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(path))
        files[path.name] = path
    (tmp / "trainer.json").write_text(json.dumps(state, indent=1))
    files["trainer.json"] = tmp / "trainer.json"
    for path in files.values():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    manifest = {"format": FORMAT, "step": step, "sha256": {n: _sha256(p) for n, p in files.items()}}
    atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        _discard(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "LATEST", final.name + "\n")
    _prune(root, keep)
    return final


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder without ever leaving a half-deleted one under a checkpoint name: it is first
    renamed to a hidden ``.tmp-del-*`` name (one atomic step), which loaders ignore and later prunes remove."""
    hidden = folder.with_name(f".tmp-del-{folder.name}-{os.getpid()}")
    os.replace(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root.parent)[:-keep]:
        _discard(old)
    for stale in root.glob(".tmp-*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoint folders, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))


def verify_checkpoint(ckpt: str | Path) -> dict:
    """Check the manifest and every file's sha256; return the manifest or raise CheckpointError."""
    ckpt = Path(ckpt)
    try:
        manifest = json.loads((ckpt / "manifest.json").read_text())
        sums = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{ckpt}: missing or unreadable manifest.json (incomplete checkpoint)") from None
    for name, digest in sums.items():
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"{path}: file missing from checkpoint")
        if _sha256(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted)")
    return manifest


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies; damaged newer ones are reported with a warning and skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(ckpt)
            return ckpt
        except CheckpointError as e:
            warnings.warn(f"skipping damaged checkpoint: {e}", stacklevel=2)
    return None


def load_tensors(ckpt: str | Path, name: str) -> dict[str, torch.Tensor]:
    path = Path(ckpt) / f"{name}.safetensors"
    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load ({e})") from None


def load_state(ckpt: str | Path) -> dict:
    path = Path(ckpt) / "trainer.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load ({e})") from None


# -------------------------------------------------------------------------------------------------
# Optimiser state <-> (tensors, JSON)
# -------------------------------------------------------------------------------------------------


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})
