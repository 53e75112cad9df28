"""Data loading, validation, normalisation and export for difflab.

Entry point: ``load_data(spec)`` returns a :class:`Dataset` in the data's own units, with a fitted
:class:`Normalizer` (data units <-> model space). Sources: ``"digits"``, synthetic Gaussian mixtures
with exact densities (``gmm2d``, ``gmm<D>d``, ``rings``, ``moons``), image folders, .npy/.npz, CSV
and MNIST IDX files. Every problem with the data raises ``difflab.errors.DataError`` with a one-line
message naming the file (and row/column or image where relevant).
"""

from .dataset import Dataset, load_data
from .export import save_image_grid, save_scatter, to_display_uint8, to_uint8_images, write_csv
from .normalize import Normalizer, fit_normalizer
from .synthetic import SYNTHETIC, GaussianMixture, synthetic

__all__ = [
    "Dataset",
    "load_data",
    "GaussianMixture",
    "synthetic",
    "SYNTHETIC",
    "Normalizer",
    "fit_normalizer",
    "to_uint8_images",
    "to_display_uint8",
    "save_image_grid",
    "save_scatter",
    "write_csv",
]
