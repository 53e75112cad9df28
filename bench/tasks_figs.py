"""Example figures of bench/tasks.py (PIL only): denoising strip and inpainting grid, grey images upscaled."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CELL = 84  # pixels per image cell
LABEL_W = 150
HEAD_H = 30  # two lines of column header, each at most 14 characters (PIL's default font fits ~14 in a cell)


def _tile(x01: np.ndarray) -> Image.Image:
    im = Image.fromarray(np.round(np.clip(x01, 0, 1) * 255).astype(np.uint8), "L")
    return im.resize((CELL, CELL), Image.NEAREST)


def _grid(rows: list[tuple[str, list[np.ndarray]]], header: list[str], path: Path) -> None:
    ncol = max(len(r[1]) for r in rows)
    canvas = Image.new("L", (LABEL_W + ncol * (CELL + 4), HEAD_H + len(rows) * (CELL + 4)), 255)
    draw = ImageDraw.Draw(canvas)
    for j, h in enumerate(header):
        for k, line in enumerate(textwrap.wrap(h, 14, break_long_words=True)[:2]):
            draw.text((LABEL_W + j * (CELL + 4) + 2, 3 + 12 * k), line, fill=0)
    for i, (label, ims) in enumerate(rows):
        y = HEAD_H + i * (CELL + 4)
        for k, line in enumerate(label.split("\n")):
            draw.text((4, y + 4 + 12 * k), line, fill=0)
        for j, im in enumerate(ims):
            canvas.paste(_tile(im), (LABEL_W + j * (CELL + 4), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def denoise_figure(examples: dict, path: Path) -> None:
    """Rows: (sigma, example); columns: clean, noisy, each method."""
    rows, header = [], None
    for s, outs in examples.items():
        names = ["clean", "noisy input"] + [k for k in outs if k not in ("clean", "noisy input")]
        header = [n.replace("difflab ", "") for n in names]
        for i in range(min(2, len(outs["clean"]))):
            rows.append((f"sigma {s}\nexample {i}", [outs[n][i] for n in names]))
    _grid(rows, header, path)


def inpaint_figure(examples: dict, path: Path) -> None:
    """Rows: (mask, example); columns: input (missing = grey), mask, each method, truth."""
    rows, header = [], None
    for kind, ex in examples.items():
        names = [k for k in ex["outs"] if not k.startswith("masked")]
        header = ["input", "mask"] + [n.split(" (")[0].replace("difflab ", "") for n in names] + ["truth"]
        for i in range(len(ex["clean"])):
            m = ex["mask"][i]
            shown = np.where(m, 0.5, ex["clean"][i])
            rows.append((f"{kind}\nexample {i}", [shown, m.astype(float)] + [ex["outs"][n][i] for n in names]
                         + [ex["clean"][i]]))
    _grid(rows, header, path)
