"""The ``Dataset`` container and ``load_data``, the single entry point for every data source."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .arrays import read_csv, read_numpy
from .images import IMAGE_SUFFIXES, is_idx_name, read_idx, read_image_files, read_image_folder
from .normalize import Normalizer, fit_normalizer
from .raw import RawData, check_labels, clean, fail, to_float32
from .synthetic import SYNTHETIC, GaussianMixture, is_synthetic, synthetic

DEFAULT_SYNTHETIC_N = 10_000
BUILTIN_NAMES = ("digits", *SYNTHETIC, "gmm<D>d")
SUPPORTED = ("a folder of PNG/JPEG images (optionally one subfolder per class), .png/.jpg/.jpeg, .npy, "
             ".npz, .csv, MNIST IDX (*-idx3-ubyte, *-idx3-ubyte.gz)")


@dataclass
class Dataset:
    """A loaded dataset, in the data's own units.

    Attributes:
        x: float32, (N, C, H, W) for images or (N, D) for tables, in the source's units
            (0..16 for digits, 0..255 for 8-bit images, raw values for CSV).
        labels: class indices (N,) as int64, or None.
        kind: "image" or "tabular".
        name: short dataset name (built-in name or file/folder stem).
        columns: feature column names for tables, else None.
        num_classes: number of classes (0 without labels).
        normalizer: data units <-> model space map (fitted from the data when not given).
        value_range: (lo, hi) of the data: the pixel range for images (dtype-based when the source
            has one), the observed min/max for tables.
        class_names: class names when known (class subfolders, word labels in a CSV), else None.
        source: the path that was loaded, or None for built-in data.
        mixture: the exact distribution for synthetic datasets, else None.
    """

    x: Tensor
    labels: Tensor | None
    kind: str
    name: str
    columns: list[str] | None = None
    num_classes: int = 0
    normalizer: Normalizer | None = None
    value_range: tuple[float, float] | None = None
    class_names: list[str] | None = None
    source: str | None = None
    mixture: GaussianMixture | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("image", "tabular"):
            raise ValueError(f"kind must be 'image' or 'tabular', got {self.kind!r}")
        expected_ndim = 4 if self.kind == "image" else 2
        if self.x.ndim != expected_ndim:
            raise ValueError(f"{self.kind} data must have {expected_ndim} dimensions, got {tuple(self.x.shape)}")
        if self.value_range is None and self.x.numel():
            self.value_range = (float(self.x.min()), float(self.x.max()))
        if self.normalizer is None:
            self.normalizer = fit_normalizer(self)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) or (D,)."""
        return tuple(self.x.shape[1:])

    def subset(self, index: Tensor | np.ndarray | list[int]) -> Dataset:
        """Rows ``index`` as a new Dataset that keeps this one's normalizer and value range."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        labels = None if self.labels is None else self.labels[idx]
        return replace(self, x=self.x[idx], labels=labels)


def load_data(spec: str, *, label_column: str | None = None, n: int | None = None, seed: int = 0) -> Dataset:
    """Load a built-in dataset or a file/folder; every problem with the data raises DataError.

    Args:
        spec: ``"digits"`` (scikit-learn's 8x8 digits, pixel range 0..16), a synthetic mixture name
            (``gmm2d``, ``gmm<D>d``, ``rings``, ``moons``), or a path: a folder of PNG/JPEG images
            (subfolders = classes), a single image, ``.npy``, ``.npz``, ``.csv`` or an MNIST IDX file.
            Built-in names win over same-named paths (write ``./digits`` for the path).
        label_column: which CSV column / .npz array holds labels. ``None`` (default): a CSV column
            named ``label``, or the .npz array ``y``/``labels``; ``"auto"``: the first of ``label``,
            ``labels``, ``y``, ``class``, ``target``; a name: that column/array; ``""``: no labels.
            The label column is never a feature.
        n: synthetic data: number of samples (default 10000). Other data: keep a random subset of
            ``n`` rows (in their original order) when the source has more.
        seed: seed for synthetic sampling and for the subset.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise DataError(f"{spec}: n must be a positive integer, got {n!r}")
    if spec == "digits":
        dataset = _digits(label_column)
    elif is_synthetic(spec):
        return _synthetic(spec, DEFAULT_SYNTHETIC_N if n is None else n, seed, label_column)
    else:
        dataset = _load_path(Path(spec).expanduser(), label_column)
    if n is not None and n < len(dataset):
        keep = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
        dataset = dataset.subset(keep)
    return dataset


def _digits(label_column: str | None) -> Dataset:
    from sklearn.datasets import load_digits

    _check_label_column("digits", label_column)
    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)[:, None])
    labels = None if label_column == "" else torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return Dataset(x=x, labels=labels, kind="image", name="digits", num_classes=0 if labels is None else 10,
                   value_range=(0.0, 16.0))


def _synthetic(name: str, n: int, seed: int, label_column: str | None) -> Dataset:
    _check_label_column(name, label_column)
    mixture = synthetic(name)
    x, comp = mixture.sample_with_components(n, seed)
    labels = None if label_column == "" else mixture.groups[comp]
    return Dataset(x=x, labels=labels, kind="tabular", name=name, columns=[f"x{i}" for i in range(mixture.dim)],
                   num_classes=0 if labels is None else mixture.num_groups, mixture=mixture)


def _check_label_column(where: str | Path, label_column: str | None) -> None:
    if label_column not in (None, "auto", ""):
        fail(where, f"label_column={label_column!r} only applies to .csv and .npz data")


def _stem(path: Path) -> str:
    name = path.resolve().name if path.name in ("", ".", "..") else path.name
    lowered = name.lower()
    if lowered.endswith(".gz"):
        name, lowered = name[:-3], lowered[:-3]
    for suffix in ("-idx3-ubyte", ".idx3-ubyte", ".npy", ".npz", ".csv", ".png", ".jpg", ".jpeg", ".idx"):
        if lowered.endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _read(path: Path, label_column: str | None) -> RawData:
    if not path.exists():
        hint = "" if path.suffix or len(path.parts) > 1 else f" (built-in datasets: {', '.join(BUILTIN_NAMES)})"
        fail(path, f"no such file or directory{hint}")
    if path.is_dir():
        _check_label_column(path, label_column)
        return read_image_folder(path)
    if not path.is_file():
        fail(path, "not a regular file or folder")
    if path.stat().st_size == 0:
        fail(path, "file is empty")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv(path, label_column)
    if suffix in (".npy", ".npz"):
        return read_numpy(path, label_column)
    _check_label_column(path, label_column)
    if is_idx_name(path):
        return read_idx(path)
    if suffix in IMAGE_SUFFIXES:
        array = read_image_files([path])
        return RawData(array=array, kind="image", value_range=(0.0, 65535.0 if array.dtype == np.uint16 else 255.0))
    fail(path, f"unsupported file type {suffix or '(no extension)'!r}; supported: {SUPPORTED}")


def _load_path(path: Path, label_column: str | None) -> Dataset:
    try:
        raw = _read(path, label_column)
        x = to_float32(path, raw)
        labels = None
        if label_column == "":
            raw.labels = raw.class_names = None
        if raw.labels is not None:
            labels = check_labels(raw.labels_source or path, raw.labels, x.shape[0])
    except DataError:
        raise
    except (OSError, ValueError, EOFError, MemoryError, OverflowError) as err:
        raise DataError(clean(f"{path}: cannot read ({type(err).__name__}: {err})", limit=400)) from err
    if raw.value_range is not None:
        value_range = raw.value_range
    else:
        lo, hi = float(x.min()), float(x.max())
        value_range = (lo, hi if hi > lo else lo + 1.0) if raw.kind == "image" else (lo, hi)
    num_classes = 0
    if labels is not None:
        num_classes = len(raw.class_names) if raw.class_names else int(labels.max()) + 1
    return Dataset(
        x=torch.from_numpy(x), labels=None if labels is None else torch.from_numpy(labels), kind=raw.kind,
        name=_stem(path), columns=raw.columns, num_classes=num_classes, value_range=value_range,
        class_names=raw.class_names, source=str(path),
    )
