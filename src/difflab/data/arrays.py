"""Readers for NumPy files (.npy / .npz) and CSV tables.

Label-column policy (CSV and .npz), selected by ``label_column``:

* ``None`` (default): a CSV column named ``label`` (case-insensitive) holds class labels and is not a
  feature; an .npz uses its ``y`` or ``labels`` array.
* ``"auto"``: the first CSV column named ``label``, ``labels``, ``y``, ``class`` or ``target``
  (case-insensitive); .npz as for ``None``.
* any other name: exactly that CSV column / .npz key (a DataError if it does not exist).
* ``""``: no labels; every column is a feature.

CSV label cells that are all non-negative integers are used as class indices; otherwise (e.g. words
such as ``cat``/``dog``) the sorted distinct values become the classes and ``class_names``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from .raw import MAX_LABEL, RawData, check_numeric, dtype_range, fail

AUTO_LABEL_NAMES = ("label", "labels", "y", "class", "target")
NPZ_DATA_KEYS = ("x", "X", "images", "data")
NPZ_LABEL_KEYS = ("y", "labels")


def array_layout(path: Path | str, array: np.ndarray) -> RawData:
    """Interpret an array's shape: 2-D -> table, 3-D (N,H,W) or 4-D (N,H,W,C)/(N,C,H,W) -> images.

    A 4-D array is channels-last when its last axis is 1, 3 or 4, else channels-first when its second
    axis is 1 or 3. Four channels are kept as they are (RGBA stays 4 channels).
    """
    array = check_numeric(path, array)
    shape = tuple(array.shape)
    if array.ndim == 2:
        columns = [f"f{j}" for j in range(shape[1])]
        return RawData(array=array, kind="tabular", columns=columns)
    if array.ndim == 3:
        return RawData(array=array[:, None], kind="image", value_range=dtype_range(array.dtype))
    if array.ndim == 4:
        if shape[3] in (1, 3, 4):
            array = np.ascontiguousarray(array.transpose(0, 3, 1, 2))
        elif shape[1] not in (1, 3):
            fail(path, f"cannot tell the channel axis of shape {shape}; expected (N,H,W,C) with C in 1/3/4 "
                       "or (N,C,H,W) with C in 1/3")
        return RawData(array=array, kind="image", value_range=dtype_range(array.dtype))
    hint = " (is this a labels file?)" if array.ndim == 1 else ""
    fail(path, f"array of shape {shape} is neither a table (N,D) nor images (N,H,W[,C]){hint}")


def load_numpy(path: Path) -> np.ndarray | dict[str, object]:
    """``np.load`` without pickle; returns the array, or a dict of arrays for an .npz archive."""
    with open(path, "rb") as handle:  # our own handle: numpy leaks its own when a zip is damaged
        try:
            obj = np.load(handle, allow_pickle=False)
        except ValueError as err:
            if "pickle" in str(err).lower():
                fail(path, "contains pickled Python objects (object array); difflab never unpickles, "
                           "save a plain numeric array")
            fail(path, f"not a valid NumPy file ({err})")
        except Exception as err:  # numpy's parser can raise many types on arbitrary bytes
            fail(path, f"not a valid NumPy file ({type(err).__name__}: {err})")
        if isinstance(obj, np.ndarray):
            return obj
        out: dict[str, object] = {}
        key = "?"
        try:
            for key in obj.files:
                out[key] = obj[key]
        except ValueError as err:
            if "pickle" in str(err).lower():
                fail(path, f"array {key!r} is an object array; difflab never unpickles")
            fail(path, f"damaged .npz archive, array {key!r} ({err})")
        except Exception as err:  # zipfile / zlib / format errors from a damaged archive
            fail(path, f"damaged .npz archive, array {key!r} ({type(err).__name__}: {err})")
        finally:
            obj.close()
        return out


def read_numpy(path: Path, label_column: str | None) -> RawData:
    """Read a .npy array or an .npz archive (data key x/X/images/data or the only array; labels y/labels)."""
    loaded = load_numpy(path)
    if isinstance(loaded, np.ndarray):
        if label_column not in (None, "auto", ""):
            fail(path, f"label_column={label_column!r} needs a CSV or .npz file; a .npy holds one array")
        return array_layout(path, loaded)
    if not loaded:
        fail(path, "the .npz archive holds no arrays")
    label_key = _npz_label_key(path, loaded, label_column)
    candidates = [k for k in NPZ_DATA_KEYS if k in loaded]
    if not candidates:
        rest = [k for k in loaded if k != label_key]
        if len(rest) != 1:
            fail(path, f"cannot tell which array is the data (keys: {', '.join(sorted(loaded))}); "
                       f"name it one of {', '.join(NPZ_DATA_KEYS)}")
        candidates = rest
    raw = array_layout(f"{path} [{candidates[0]}]", loaded[candidates[0]])
    if label_key is not None:
        raw.labels = check_numeric(f"{path} [{label_key}]", loaded[label_key], "labels")
        raw.labels_source = f"{path} [{label_key}]"
    return raw


def _npz_label_key(path: Path, loaded: dict[str, object], label_column: str | None) -> str | None:
    if label_column == "":
        return None
    if label_column not in (None, "auto"):
        if label_column not in loaded:
            fail(path, f"no array named {label_column!r} for labels (keys: {', '.join(sorted(loaded))})")
        return label_column
    return next((k for k in NPZ_LABEL_KEYS if k in loaded), None)


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_index(path: Path, header: list[str], label_column: str | None) -> int | None:
    lowered = [h.lower() for h in header]
    if label_column == "":
        return None
    if label_column is None:
        return lowered.index("label") if "label" in lowered else None
    if label_column == "auto":
        return next((lowered.index(c) for c in AUTO_LABEL_NAMES if c in lowered), None)
    if label_column not in header:
        fail(path, f"no column named {label_column!r} for labels (columns: {', '.join(header)})")
    return header.index(label_column)


def read_csv(path: Path, label_column: str | None) -> RawData:
    """Read a comma-separated table with a header row; every feature cell must be a finite number."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        fail(path, f"not UTF-8 text (byte {err.start})")
    if "\x00" in text:
        fail(path, "contains NUL bytes; not a text CSV file")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[list[float]] = []
    label_cells: list[str] = []
    label_idx: int | None = None
    feature_idx: list[int] = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            line = reader.line_num
            if header is None:
                header = [cell.strip() for cell in row]
                _check_header(path, header)
                label_idx = _label_index(path, header, label_column)
                feature_idx = [j for j in range(len(header)) if j != label_idx]
                if not feature_idx:
                    fail(path, "the only column is the label column; no features left")
                continue
            if len(row) != len(header):
                fail(path, f"line {line}: {len(row)} cells but the header has {len(header)} columns")
            rows.append([_cell(path, line, len(rows) + 1, header[j], row[j]) for j in feature_idx])
            if label_idx is not None:
                label_cells.append(row[label_idx].strip())
                if not label_cells[-1]:
                    fail(path, f"line {line} (data row {len(rows)}), column {header[label_idx]!r}: empty label")
    except csv.Error as err:
        fail(path, f"line {reader.line_num}: malformed CSV ({err})")
    if header is None:
        fail(path, "no header row (the file has no content)")
    if not rows:
        fail(path, "has a header but no data rows")
    raw = RawData(array=np.asarray(rows, dtype=np.float64), kind="tabular",
                  columns=[header[j] for j in feature_idx])
    if label_idx is not None:
        raw.labels, raw.class_names = _parse_labels(path, header[label_idx], label_cells)
        raw.labels_source = f"{path} [column {header[label_idx]!r}]"
    return raw


def _check_header(path: Path, header: list[str]) -> None:
    if all(is_number(h) for h in header if h):
        fail(path, "line 1 looks like data, but a header row with column names is required")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            fail(path, f"duplicate column name {name!r} in the header")
        seen.add(name)


def _cell(path: Path, line: int, row: int, column: str, cell: str) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        shown = repr(text) if text else "empty cell"
        fail(path, f"line {line} (data row {row}), column {column!r}: {shown} is not a number")
    if not math.isfinite(value):
        what = "NaN" if math.isnan(value) else "infinite"
        fail(path, f"line {line} (data row {row}), column {column!r}: value is {what}")
    return value


def _parse_labels(path: Path, column: str, cells: list[str]) -> tuple[np.ndarray, list[str] | None]:
    """Class indices if every cell is a number (which must then be a non-negative integer), else
    classes = the sorted distinct cell strings (word labels such as ``cat``/``dog``)."""
    try:
        values = [float(cell) for cell in cells]
    except ValueError:
        names = sorted(set(cells))
        index = {name: i for i, name in enumerate(names)}
        return np.asarray([index[c] for c in cells], dtype=np.int64), names
    for row, value in enumerate(values, start=1):
        if not math.isfinite(value) or value != int(value) or not 0 <= value <= MAX_LABEL:
            fail(path, f"data row {row}, label column {column!r}: {cells[row - 1]!r} is not a class index "
                       f"(a whole number 0..{MAX_LABEL}, or a word)")
    return np.asarray(values, dtype=np.int64), None
