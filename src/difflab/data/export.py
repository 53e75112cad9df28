"""Writing data back out: uint8 image arrays, PNG grids and CSV tables (all file writes are atomic).

Atomic means: write to a temporary file in the destination folder, then ``os.replace`` it over the
target, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from ..io import atomic_write
from torch import Tensor


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _channels_last(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W) or (N, H, W), got shape {x.shape}")
    return x.transpose(0, 2, 3, 1)


def to_uint8_images(x: Tensor | np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Images in data units (N, C, H, W) -> uint8 (N, H, W, C), clipped to ``value_range`` and rounded.

    Values are NOT rescaled: digits stay 0..16, 8-bit data stays 0..255. The range must therefore lie
    within [0, 255]; use ``to_display_uint8`` for anything else (or for viewing).
    """
    lo, hi = float(value_range[0]), float(value_range[1])
    if lo < 0 or hi > 255:
        raise ValueError(f"value range [{lo:g}, {hi:g}] does not fit in uint8; use to_display_uint8")
    arr = np.clip(_as_numpy(x).astype(np.float64), lo, hi)
    return np.ascontiguousarray(np.rint(_channels_last(arr)).astype(np.uint8))


def to_display_uint8(x: Tensor | np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Images in data units (N, C, H, W) -> uint8 (N, H, W, C) with [lo, hi] stretched to [0, 255]."""
    lo, hi = float(value_range[0]), float(value_range[1])
    span = hi - lo if hi > lo else 1.0
    arr = (_as_numpy(x).astype(np.float64) - lo) * (255.0 / span)
    return np.ascontiguousarray(np.rint(np.clip(_channels_last(arr), 0, 255)).astype(np.uint8))


def image_grid(images: np.ndarray, nrow: int | None = None, min_cell: int = 32, padding: int = 2) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) into one (rows*cell, cols*cell, C) array, upscaled by an integer
    nearest-neighbour factor so each cell is at least ``min_cell`` pixels; ``nrow`` = images per row."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected uint8 images (N, H, W, C) with C in 1/3/4, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}; use to_display_uint8 first")
    n, h, w, c = images.shape
    cols = nrow if nrow is not None and nrow > 0 else math.ceil(math.sqrt(n))
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    factor = max(1, math.ceil(min_cell / min(h, w)))
    images = images.repeat(factor, axis=1).repeat(factor, axis=2)
    ch, cw = h * factor, w * factor
    fill = 128 if c != 4 else 0
    grid = np.full((rows * (ch + padding) + padding, cols * (cw + padding) + padding, c), fill, np.uint8)
    if c == 4:
        grid[..., 3] = 0
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = padding + r * (ch + padding), padding + col * (cw + padding)
        grid[y:y + ch, x:x + cw] = images[i]
    return grid


def save_image_grid(
    images: np.ndarray, path: str | os.PathLike[str], nrow: int | None = None, *, min_cell: int = 32,
    padding: int = 2,
) -> Path:
    """Write uint8 display images (N, H, W, C) as one PNG grid (atomically); returns the path.

    Tiny images (e.g. 8x8 digits) are upscaled with nearest neighbour to at least ``min_cell`` pixels
    per cell; cells are separated by ``padding`` gray pixels. ``nrow`` is the number of images per row
    (default: about sqrt(N)).
    """
    grid = image_grid(images, nrow=nrow, min_cell=min_cell, padding=padding)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[grid.shape[-1]]
    picture = Image.fromarray(grid[..., 0] if mode == "L" else grid, mode=mode)
    return atomic_write(path, lambda f: picture.save(f, format="PNG"))


def save_scatter(
    points: Tensor | np.ndarray, path: str | os.PathLike[str], reference: Tensor | np.ndarray | None = None,
    size: int = 480,
) -> Path:
    """Plot 2-D ``points`` (N, 2) as a PNG scatter (blue), over ``reference`` points (grey) if given.

    Both share one frame fitted to the reference (or the points) with a 5% margin; written atomically.
    """
    pts = _as_numpy(points).astype(np.float64)[:, :2]
    ref = None if reference is None else _as_numpy(reference).astype(np.float64)[:, :2]
    frame = ref if ref is not None else pts
    lo, hi = frame.min(0), frame.max(0)
    pad = 0.05 * np.maximum(hi - lo, 1e-12)
    lo, hi = lo - pad, hi + pad
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)

    def draw(xy: np.ndarray, color: tuple[int, int, int]) -> None:
        uv = (xy - lo) / (hi - lo) * (size - 1)
        col, row = np.rint(uv[:, 0]).astype(int), np.rint((size - 1) - uv[:, 1]).astype(int)
        keep = (col >= 0) & (col < size) & (row >= 0) & (row < size)
        for dr in (0, 1):
            for dc in (0, 1):
                canvas[np.clip(row[keep] + dr, 0, size - 1), np.clip(col[keep] + dc, 0, size - 1)] = color

    if ref is not None:
        draw(ref, (190, 190, 190))
    draw(pts, (31, 90, 200))
    picture = Image.fromarray(canvas, mode="RGB")
    return atomic_write(path, lambda f: picture.save(f, format="PNG"))


def _format(value: float | int, kind: str) -> str:
    """Shortest text that parses back to the same value (float32 data -> float32 shortest repr)."""
    if kind == "i":
        return str(int(value))
    return repr(float(value)) if kind == "f8" else str(np.float32(value))


def write_csv(
    path: str | os.PathLike[str], array: Tensor | np.ndarray, columns: Sequence[str], *,
    labels: Tensor | np.ndarray | None = None, label_column: str = "label",
) -> Path:
    """Write a table (N, D) with a header row (atomically); values round-trip exactly through
    ``load_data``. Optional ``labels`` (N,) become a trailing ``label_column`` column."""
    arr = _as_numpy(array)
    if arr.ndim != 2 or arr.shape[1] != len(columns):
        raise ValueError(f"array of shape {arr.shape} does not match {len(columns)} column names")
    header = [str(c) for c in columns]
    lab = None
    if labels is not None:
        lab = _as_numpy(labels).reshape(-1)
        if lab.shape[0] != arr.shape[0]:
            raise ValueError(f"{lab.shape[0]} labels for {arr.shape[0]} rows")
        header.append(label_column)
    kind = "i" if arr.dtype.kind in "biu" else ("f8" if arr.dtype == np.float64 else "f4")

    def write(f: IO[bytes]) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        for i, row in enumerate(arr.tolist()):
            cells = [_format(v, kind) for v in row]
            if lab is not None:
                cells.append(str(int(lab[i])))
            writer.writerow(cells)
        text.flush()
        text.detach()

    return atomic_write(path, write)
