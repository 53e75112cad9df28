"""Readers for image folders (PNG/JPEG) and MNIST-style IDX files.

Image folder rules:

* every image must have the same width, height, channel count and bit depth; the first image that
  differs from the first one (in sorted order) is named in the error;
* grayscale stays 1 channel, RGB 3 channels; palette, CMYK and YCbCr images become RGB;
* alpha (RGBA, LA, palette transparency) is dropped only if every pixel is fully opaque; an image with
  transparent pixels is a DataError (flatten it onto the background you want first), because any
  automatic choice of background would silently change the data;
* 16-bit grayscale PNGs keep their values (range 0..65535);
* if the folder has subfolders that contain images, each such subfolder is a class: labels follow
  the sorted subfolder names (``class_names``). Loose images next to class subfolders are an error.
  Hidden files/folders (names starting with ".") and non-image files are ignored.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .arrays import array_layout
from .raw import RawData, fail

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IDX_NAME = re.compile(r"idx\d-ubyte(\.gz)?$|\.idx\d?(\.gz)?$", re.IGNORECASE)
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def is_idx_name(path: Path) -> bool:
    """True for names like ``train-images-idx3-ubyte``, ``x.idx3-ubyte.gz`` or ``x.idx``."""
    return IDX_NAME.search(path.name) is not None


# ---------------------------------------------------------------------------------------------
# PNG / JPEG
# ---------------------------------------------------------------------------------------------


def _drop_alpha(path: Path, array: np.ndarray, opaque: int) -> np.ndarray:
    if (array[..., -1] != opaque).any():
        fail(path, "has transparent pixels; flatten the image onto a background (difflab drops the alpha "
                   "channel only from fully opaque images)")
    return array[..., :-1]


def read_image(path: Path) -> np.ndarray:
    """Decode one PNG/JPEG into an (H, W, C) array (uint8, or uint16 for 16-bit grayscale)."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "1":
                image, mode = image.convert("L"), "L"
            elif mode in ("P", "PA"):
                mode = "RGBA" if mode == "PA" or "transparency" in image.info else "RGB"
                image = image.convert(mode)
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                image, mode = image.convert("RGB"), "RGB"
            array = np.asarray(image)
    except Exception as err:  # PIL raises many exception types on damaged files
        fail(path, f"not a readable PNG/JPEG image ({type(err).__name__}: {err})")
    if mode in ("L", "RGB"):
        pass
    elif mode in ("LA", "RGBA"):
        array = _drop_alpha(path, array, 255)
    elif mode.startswith("I;16") or mode == "I":
        if array.size and (array.min() < 0 or array.max() > 65535):
            fail(path, f"32-bit integer pixels outside 0..65535 (mode {mode}) are not supported")
        array = array.astype(np.uint16)
    else:
        fail(path, f"unsupported image mode {mode!r}")
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def read_image_files(paths: list[Path]) -> np.ndarray:
    """Decode images that must agree in size, channels and bit depth; returns (N, C, H, W)."""
    first = read_image(paths[0])
    out = np.empty((len(paths),) + first.shape, dtype=first.dtype)
    out[0] = first
    h0, w0, c0 = first.shape
    for i, path in enumerate(paths[1:], start=1):
        img = read_image(path)
        h, w, c = img.shape
        if (h, w) != (h0, w0):
            fail(path, f"image is {w}x{h} pixels but {paths[0].name} is {w0}x{h0}; all images must share "
                       "one size")
        if c != c0:
            fail(path, f"image has {c} channel(s) but {paths[0].name} has {c0}; all images must share one "
                       "channel count (1 = grayscale, 3 = RGB)")
        if img.dtype != first.dtype:
            fail(path, f"image has {img.dtype.itemsize * 8}-bit samples but {paths[0].name} has "
                       f"{first.dtype.itemsize * 8}-bit; all images must share one bit depth")
        out[i] = img
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def read_image_folder(folder: Path) -> RawData:
    """Read a folder of images, or a folder of class subfolders of images."""
    loose = _images_in(folder)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [(d, imgs) for d in subdirs if (imgs := _images_in(d))]
    if classes and loose:
        fail(folder, f"mixes loose images ({loose[0].name}) with class subfolders ({classes[0][0].name}/); "
                     "put every image into a class subfolder, or use no subfolders")
    if not classes and not loose:
        fail(folder, "no PNG/JPEG images found (looked for *.png, *.jpg, *.jpeg here and in class subfolders)")
    if not classes:
        array = read_image_files(loose)
        return RawData(array=array, kind="image", value_range=_range(array.dtype))
    files = [p for _, imgs in classes for p in imgs]
    labels = np.concatenate([np.full(len(imgs), k, dtype=np.int64) for k, (_, imgs) in enumerate(classes)])
    array = read_image_files(files)
    return RawData(array=array, kind="image", labels=labels, class_names=[d.name for d, _ in classes],
                   value_range=_range(array.dtype), labels_source=str(folder))


def _range(dtype: np.dtype) -> tuple[float, float]:
    return (0.0, 65535.0) if dtype == np.uint16 else (0.0, 255.0)


# ---------------------------------------------------------------------------------------------
# IDX (MNIST format)
# ---------------------------------------------------------------------------------------------


def _read_maybe_gz(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix.lower() != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        fail(path, f"not a valid gzip file ({type(err).__name__}: {err})")


def read_idx_array(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x00 0x00 <type> <ndim>, big-endian dims, data."""
    data = _read_maybe_gz(path)
    if len(data) < 4:
        fail(path, f"truncated IDX file: {len(data)} bytes, shorter than the 4-byte magic number")
    magic = struct.unpack(">I", data[:4])[0]
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES or data[3] == 0:
        fail(path, f"bad IDX magic number 0x{magic:08x} (images are 0x00000803, labels 0x00000801)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        fail(path, f"truncated IDX header: needs {header} bytes for {ndim} dimensions, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[data[2]]
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(data) < expected:
        fail(path, f"truncated IDX file: header promises shape {dims} ({expected} bytes), file has {len(data)}")
    if len(data) > expected:
        fail(path, f"IDX file has {len(data) - expected} unexpected trailing bytes after shape {dims}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def idx_label_path(path: Path) -> Path | None:
    """The sibling labels file of an IDX images file (``images-idx3`` -> ``labels-idx1``), if present."""
    name = path.name
    stem = name[:-3] if name.lower().endswith(".gz") else name
    for old, new in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1"), ("-idx3", "-idx1")):
        if old in stem:
            base = stem.replace(old, new)
            for candidate in (base, base + ".gz"):
                other = path.with_name(candidate)
                if other != path and other.is_file():
                    return other
    return None


def read_idx(path: Path) -> RawData:
    """Read IDX images (N, H, W) -> (N, 1, H, W), plus the sibling labels file when there is one."""
    raw = array_layout(path, read_idx_array(path))
    label_path = idx_label_path(path)
    if label_path is not None:
        labels = read_idx_array(label_path)
        if labels.ndim != 1:
            fail(label_path, f"labels file has shape {tuple(labels.shape)}, expected one dimension")
        raw.labels = labels
        raw.labels_source = str(label_path)
    return raw
