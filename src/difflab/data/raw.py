"""Shared plumbing for the file readers: the raw result type and the validation helpers.

Every reader returns a :class:`RawData` (numpy arrays in the source's own dtype); ``dataset.py`` then
validates it once (numeric dtype, non-empty, finite, labels) and turns it into a ``Dataset``.
All problems are reported as :class:`~difflab.errors.DataError` with a one-line message that starts
with the offending file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from ..errors import DataError

#: Upper bound on label values: labels are class indices, not arbitrary numbers.
MAX_LABEL = 100_000


@dataclass
class RawData:
    """What a reader found, before validation.

    ``array`` is (N, C, H, W) for ``kind == "image"`` and (N, D) for ``kind == "tabular"``, in the
    source's own dtype. ``value_range`` is the dtype-based pixel range when the source defines one
    (e.g. (0, 255) for 8-bit images); ``None`` means "use the observed min/max".
    """

    array: np.ndarray
    kind: str
    labels: np.ndarray | None = None
    columns: list[str] | None = None
    class_names: list[str] | None = None
    value_range: tuple[float, float] | None = None
    labels_source: str | None = None


def clean(message: object, limit: int = 160) -> str:
    """Squash an exception text (which may span lines) into one short line."""
    text = " ".join(str(message).split()) or type(message).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(path: Path | str, message: str) -> NoReturn:
    """Raise a one-line ``DataError`` that names ``path``."""
    raise DataError(clean(f"{path}: {message}", limit=400))


def dtype_range(dtype: np.dtype) -> tuple[float, float] | None:
    """The pixel range implied by an image dtype, or ``None`` if only the observed range makes sense."""
    if dtype == np.bool_:
        return (0.0, 1.0)
    if dtype == np.uint8:
        return (0.0, 255.0)
    if dtype == np.uint16:
        return (0.0, 65535.0)
    return None


def check_numeric(path: Path | str, array: object, what: str = "array") -> np.ndarray:
    """Accept only plain bool / integer / float arrays (no objects, strings, complex or records)."""
    if not isinstance(array, np.ndarray):
        fail(path, f"{what} is not a numeric array (got {type(array).__name__})")
    if array.dtype.hasobject:
        fail(path, f"{what} has dtype object; difflab never unpickles, save a numeric array")
    if array.dtype.kind not in "biuf" or array.dtype.fields is not None:
        fail(path, f"{what} has unsupported dtype {array.dtype} (need bool, integer or float)")
    return array


def first_nonfinite(array: np.ndarray) -> tuple[int, ...] | None:
    """Index of the first NaN/inf entry (C order), or ``None`` if all entries are finite."""
    if array.dtype.kind != "f":
        return None
    bad = ~np.isfinite(array)
    if not bad.any():
        return None
    flat = int(np.argmax(bad.reshape(-1)))
    return tuple(int(i) for i in np.unravel_index(flat, array.shape))


def describe_entry(index: tuple[int, ...], kind: str, columns: list[str] | None) -> str:
    """Human description of an entry: 'row 3, column 'f2'' or 'image 7 (channel 0, pixel 4,5)'."""
    if kind == "tabular":
        col = columns[index[1]] if columns is not None else str(index[1])
        return f"row {index[0]} (0-based), column {col!r}"
    return f"image {index[0]} (0-based; channel {index[1]}, pixel y={index[2]} x={index[3]})"


def to_float32(path: Path | str, raw: RawData) -> np.ndarray:
    """Validate ``raw.array`` (numeric, non-empty, finite) and return it as float32."""
    array = check_numeric(path, raw.array)
    if array.size == 0:
        fail(path, f"no data (array shape {tuple(array.shape)})")
    where = first_nonfinite(array)
    if where is not None:
        value = array[where]
        what = "NaN" if np.isnan(value) else "infinite"
        fail(path, f"{describe_entry(where, raw.kind, raw.columns)} is {what}; remove or impute it")
    with np.errstate(over="ignore"):
        out = array.astype(np.float32)
    where = first_nonfinite(out)
    if where is not None:
        fail(path, f"{describe_entry(where, raw.kind, raw.columns)} is outside the float32 range")
    return out


def check_labels(path: Path | str, labels: object, n: int) -> np.ndarray:
    """Validate class labels: numeric, one per sample, integral, in [0, MAX_LABEL]; returns int64 (N,)."""
    labels = check_numeric(path, labels, "labels")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        fail(path, f"labels must be one-dimensional, got shape {tuple(labels.shape)}")
    if labels.shape[0] != n:
        fail(path, f"{labels.shape[0]} labels for {n} samples")
    values = labels.astype(np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values > MAX_LABEL)
    if bad.any():
        i = int(np.argmax(bad))
        fail(path, f"label {i} (0-based) is {labels[i]!r}; labels must be class indices 0..{MAX_LABEL}")
    return values.astype(np.int64)
