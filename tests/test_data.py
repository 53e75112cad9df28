"""Tests for difflab.data: built-in and synthetic data, file round-trips, validation and fuzzing."""

from __future__ import annotations

import gzip
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from difflab.data import (
    SYNTHETIC, Dataset, GaussianMixture, Normalizer, fit_normalizer, load_data, save_image_grid,
    synthetic, to_display_uint8, to_uint8_images, write_csv,
)
from difflab.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def expect_error(path: Path | str, *fragments: str, **kwargs) -> str:
    """load_data(path) must raise a one-line DataError naming the file and containing fragments."""
    with pytest.raises(DataError) as info:
        load_data(str(path), **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    assert Path(path).name in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    data = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


# ---------------------------------------------------------------------------------------------
# Built-in and synthetic data
# ---------------------------------------------------------------------------------------------


def test_digits():
    d = load_data("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == torch.float32 and d.kind == "image"
    assert d.x.min() == 0 and d.x.max() == 16 and d.value_range == (0.0, 16.0)
    assert d.labels.dtype == torch.long and set(d.labels.tolist()) == set(range(10)) and d.num_classes == 10
    z = d.normalizer.forward(d.x)
    assert z.min() == -1 and z.max() == 1
    assert torch.equal(d.normalizer.inverse(z), d.x)
    assert to_uint8_images(d.x, d.value_range).max() == 16
    assert to_display_uint8(d.x, d.value_range).max() == 255
    sub = load_data("digits", n=100, seed=3)
    assert len(sub) == 100 and sub.normalizer == d.normalizer


@pytest.mark.parametrize("name", [*SYNTHETIC, "gmm1d", "gmm5d"])
def test_synthetic_loads(name):
    d = load_data(name, n=500, seed=1)
    mix = synthetic(name)
    assert d.x.shape == (500, mix.dim) and d.kind == "tabular" and d.columns == [f"x{i}" for i in range(mix.dim)]
    assert d.num_classes == mix.num_groups and int(d.labels.max()) < d.num_classes
    assert torch.equal(d.x, load_data(name, n=500, seed=1).x)
    assert not torch.equal(d.x, load_data(name, n=500, seed=2).x)
    assert torch.isfinite(mix.log_prob(d.x)).all()
    assert d.normalizer.shift == [0.0] * mix.dim and d.normalizer.scale == [1.0] * mix.dim
    assert len(load_data(name)) == 10_000


def test_synthetic_unknown_name():
    with pytest.raises(DataError, match="gmm0d"):
        synthetic("gmm0d")


def random_mixture(dim: int, k: int = 3, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(torch.rand(k, generator=g) + 0.2, 2 * torch.randn(k, dim, generator=g),
                           0.3 + torch.rand(k, generator=g))


@pytest.mark.parametrize("sigma", [0.0, 0.6])
def test_log_prob_matches_scipy(sigma):
    stats = pytest.importorskip("scipy.stats")
    mix = random_mixture(3)
    x = torch.randn(50, 3, dtype=torch.float64) * 2
    ref = sum(
        w * stats.multivariate_normal(mu.numpy(), (s**2 + sigma**2) * np.eye(3)).pdf(x.numpy())
        for w, mu, s in zip(mix.weights.tolist(), mix.means, mix.stds.tolist())
    )
    np.testing.assert_allclose(mix.log_prob(x, sigma).numpy(), np.log(ref), rtol=1e-10)


def test_denoiser_matches_numerical_integration():
    stats = pytest.importorskip("scipy.stats")
    mix = random_mixture(2, seed=1)
    sigma = 0.7
    grid = np.linspace(-9, 9, 901)
    x0 = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    prior = sum(w * stats.multivariate_normal(mu.numpy(), s**2 * np.eye(2)).pdf(x0)
                for w, mu, s in zip(mix.weights.tolist(), mix.means, mix.stds.tolist()))
    xs = torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 1.5]], dtype=torch.float64)
    for x in xs:
        post = prior * np.exp(-((x0 - x.numpy()) ** 2).sum(1) / (2 * sigma**2))
        expected = (post[:, None] * x0).sum(0) / post.sum()
        np.testing.assert_allclose(mix.denoiser(x[None], sigma)[0].numpy(), expected, atol=1e-6)


def test_denoiser_matches_monte_carlo_posterior():
    mix = synthetic("moons")
    x0 = mix.sample(200_000, 0).double()
    x = torch.tensor([[0.3, 0.2], [-1.0, 0.5]], dtype=torch.float64)
    sigma = 0.5
    for point in x:
        logw = -((x0 - point) ** 2).sum(1) / (2 * sigma**2)
        w = torch.softmax(logw, 0)
        assert torch.allclose(mix.denoiser(point[None], sigma)[0], w @ x0, atol=0.02)


def test_denoiser_limits_score_and_tweedie():
    mix = random_mixture(4, k=5)
    x = torch.randn(64, 4, dtype=torch.float64)
    assert torch.allclose(mix.denoiser(x, 1e-7), x, atol=1e-10)
    assert torch.allclose(mix.denoiser(x, 1e5), mix.mean.expand(64, 4), atol=1e-4)
    sigma = torch.rand(64, dtype=torch.float64) + 0.1  # per-sample sigma
    d = mix.denoiser(x, sigma)
    assert torch.allclose(d, x + sigma[:, None] ** 2 * mix.score(x, sigma), atol=1e-10)
    assert torch.allclose(d[:1], mix.denoiser(x[:1], float(sigma[0])))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(xg, 0.3).sum(), xg)
    assert torch.allclose(grad, mix.score(x, 0.3), atol=1e-10)
    assert mix.denoiser(x.float(), 0.5).dtype == torch.float32


def test_sample_moments():
    mix = synthetic("gmm2d")
    x = mix.sample(100_000, torch.Generator().manual_seed(0)).double()
    assert torch.allclose(x.mean(0), mix.mean, atol=0.03)
    assert torch.allclose(torch.cov(x.T), mix.cov, atol=0.05)


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def test_png_folder_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (4, 6, 5), dtype=np.uint8)
    for i, img in enumerate(gray):
        Image.fromarray(img).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    d = load_data(str(tmp_path))
    assert d.x.shape == (4, 1, 6, 5) and d.labels is None and d.value_range == (0.0, 255.0)
    assert np.array_equal(to_uint8_images(d.x, d.value_range)[..., 0], gray)


def test_class_subfolders_rgb_and_opaque_rgba(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    for i, img in enumerate(rgb):
        folder = tmp_path / ("cat" if i < 2 else "dog")
        folder.mkdir(exist_ok=True)
        if i == 4:  # fully opaque RGBA: alpha is dropped
            Image.fromarray(np.concatenate([img, np.full((4, 4, 1), 255, np.uint8)], -1)).save(folder / f"{i}.png")
        else:
            Image.fromarray(img).save(folder / f"{i}.png")
    d = load_data(str(tmp_path))
    assert d.labels.tolist() == [0, 0, 1, 1, 1] and d.class_names == ["cat", "dog"] and d.num_classes == 2
    assert np.array_equal(to_uint8_images(d.x, d.value_range), rgb)
    assert load_data(str(tmp_path), label_column="").labels is None


def test_sixteen_bit_png(tmp_path):
    img = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(img).save(tmp_path / "a.png")
    d = load_data(str(tmp_path / "a.png"))
    assert d.value_range == (0.0, 65535.0) and d.x[0, 0].numpy().tolist() == img.tolist()


@pytest.mark.parametrize("shape,layout", [((3, 5, 6), "nhw"), ((3, 5, 6, 3), "nhwc"), ((3, 1, 5, 6), "nchw")])
def test_npy_images(tmp_path, shape, layout):
    arr = np.random.default_rng(2).integers(0, 256, shape).astype(np.uint8)
    np.save(tmp_path / "a.npy", arr)
    d = load_data(str(tmp_path / "a.npy"))
    expected = {"nhw": lambda: arr[:, None], "nhwc": lambda: arr.transpose(0, 3, 1, 2), "nchw": lambda: arr}[layout]()
    assert d.kind == "image" and np.array_equal(d.x.numpy(), expected) and d.value_range == (0.0, 255.0)


def test_npy_npz_tables(tmp_path):
    x = np.random.default_rng(3).normal(size=(20, 4)).astype(np.float32)
    y = np.arange(20) % 3
    np.save(tmp_path / "t.npy", x)
    d = load_data(str(tmp_path / "t.npy"))
    assert d.kind == "tabular" and np.array_equal(d.x.numpy(), x) and d.columns == ["f0", "f1", "f2", "f3"]
    np.savez(tmp_path / "t.npz", X=x, y=y.astype(np.float64))
    d = load_data(str(tmp_path / "t.npz"))
    assert np.array_equal(d.x.numpy(), x) and d.labels.tolist() == y.tolist() and d.num_classes == 3
    assert load_data(str(tmp_path / "t.npz"), label_column="").labels is None
    np.savez(tmp_path / "only.npz", features=x)
    assert np.array_equal(load_data(str(tmp_path / "only.npz")).x.numpy(), x)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_roundtrip_with_labels(tmp_path, suffix):
    imgs = np.random.default_rng(4).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8) % 4
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", imgs)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels)
    d = load_data(str(tmp_path / f"train-images-idx3-ubyte{suffix}"))
    assert d.x.shape == (7, 1, 28, 28) and np.array_equal(d.x.numpy()[:, 0], imgs)
    assert d.labels.tolist() == labels.tolist() and d.num_classes == 4 and d.name == "train-images"


def test_csv_roundtrip_and_label_columns(tmp_path):
    x = np.random.default_rng(5).normal(size=(15, 3)).astype(np.float32)
    y = np.arange(15) % 2
    write_csv(tmp_path / "t.csv", x, ["a", "b", "c"], labels=y)
    d = load_data(str(tmp_path / "t.csv"))
    assert np.array_equal(d.x.numpy(), x) and d.columns == ["a", "b", "c"] and d.labels.tolist() == y.tolist()
    nolab = load_data(str(tmp_path / "t.csv"), label_column="")
    assert nolab.labels is None and nolab.columns == ["a", "b", "c", "label"]
    assert load_data(str(tmp_path / "t.csv"), label_column="label").columns == ["a", "b", "c"]
    expect_error(tmp_path / "t.csv", "label column 'a'", "not a class index", label_column="a")
    (tmp_path / "w.csv").write_text("v,Target\n1,cat\n2,dog\n3,cat\n")
    expect_error(tmp_path / "w.csv", "'Target'", "'cat'")  # by default only 'label' is a label column
    words = load_data(str(tmp_path / "w.csv"), label_column="auto")
    assert words.labels.tolist() == [0, 1, 0] and words.class_names == ["cat", "dog"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_normalizer_roundtrip_and_json(tmp_path):
    x = torch.tensor([[1.0, 5.0, 10.0], [3.0, 5.0, -10.0], [2.0, 5.0, 0.0]])
    d = Dataset(x=x, labels=None, kind="tabular", name="t", columns=["a", "b", "c"])
    norm = d.normalizer
    z = norm.forward(x)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-6) and norm.scale[1] == 1.0
    assert torch.allclose(norm.inverse(z), x, atol=1e-6)
    assert np.allclose(norm.inverse(norm.forward(x.numpy().astype(np.float64))), x.numpy())
    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again == norm and fit_normalizer(d) == norm
    img = Normalizer.for_range(0, 255)
    assert Normalizer.from_dict(json.loads(json.dumps(img.to_dict()))) == img
    assert img.forward(torch.tensor([0.0, 255.0])).tolist() == [-1.0, 1.0]
    with pytest.raises(DataError):
        Normalizer.from_dict({"kind": "image", "shift": [0.0]})


def test_save_image_grid(tmp_path):
    d = load_data("digits", n=10)
    path = save_image_grid(to_display_uint8(d.x, d.value_range), tmp_path / "g.png", nrow=5)
    with Image.open(path) as im:
        assert im.mode == "L" and im.size[0] >= 5 * 32 and im.size[1] >= 2 * 32
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def test_bad_paths(tmp_path):
    expect_error(tmp_path / "missing.csv", "no such file or directory")
    (tmp_path / "empty.npy").write_bytes(b"")
    expect_error(tmp_path / "empty.npy", "empty")
    (tmp_path / "data.txt").write_text("1,2\n")
    expect_error(tmp_path / "data.txt", "unsupported", ".csv")
    (tmp_path / "junk.png").write_bytes(np.random.default_rng(0).bytes(200))
    expect_error(tmp_path / "junk.png", "not a readable")
    (tmp_path / "nothing").mkdir()
    expect_error(tmp_path / "nothing", "no PNG/JPEG")


def test_mixed_images(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "b.png")
    expect_error(tmp_path, "b.png", "4x5", "size")
    (tmp_path / "b.png").unlink()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "c.png")
    expect_error(tmp_path, "c.png", "channel")
    (tmp_path / "c.png").unlink()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(tmp_path / "d.png")
    expect_error(tmp_path, "d.png", "transparent")


@pytest.mark.parametrize(
    "text,fragments",
    [
        ("a,b\n1,2\n3,x\n", ("line 3", "'b'", "'x'")),
        ("a,b\n", ("no data rows",)),
        ("a,b\n1,nan\n", ("line 2", "'b'", "NaN")),
        ("a,b\n1,2\n3\n", ("line 3", "cells")),
        ("1,2\n3,4\n", ("header",)),
        ("a,a\n1,2\n", ("duplicate",)),
    ],
)
def test_bad_csv(tmp_path, text, fragments):
    (tmp_path / "bad.csv").write_text(text)
    expect_error(tmp_path / "bad.csv", *fragments)


def test_bad_csv_label_column(tmp_path):
    (tmp_path / "t.csv").write_text("a,label\n1,0.5\n")
    expect_error(tmp_path / "t.csv", "'label'", "'0.5'")
    expect_error(tmp_path / "t.csv", "'zzz'", label_column="zzz")


def test_bad_arrays(tmp_path):
    x = np.ones((4, 3))
    x[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    expect_error(tmp_path / "nan.npy", "row 2", "'f1'", "NaN")
    imgs = np.zeros((3, 4, 4))
    imgs[1, 2, 3] = np.inf
    np.save(tmp_path / "inf.npy", imgs)
    expect_error(tmp_path / "inf.npy", "image 1", "infinite")
    np.save(tmp_path / "obj.npy", np.array([1, "a", None], dtype=object), allow_pickle=True)
    expect_error(tmp_path / "obj.npy", "pickle")
    np.save(tmp_path / "big.npy", np.full((2, 2), 1e300))
    expect_error(tmp_path / "big.npy", "float32")
    np.save(tmp_path / "zero.npy", np.zeros((0, 3)))
    expect_error(tmp_path / "zero.npy", "no data")
    np.save(tmp_path / "vec.npy", np.zeros(5))
    expect_error(tmp_path / "vec.npy", "labels file")
    np.savez(tmp_path / "lab.npz", x=np.zeros((3, 2)), y=np.array([0, 1]))
    expect_error(tmp_path / "lab.npz", "2 labels for 3 samples")


def test_bad_idx(tmp_path):
    write_idx(tmp_path / "a-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    data = (tmp_path / "a-idx3-ubyte").read_bytes()
    (tmp_path / "t-idx3-ubyte").write_bytes(data[:-5])
    expect_error(tmp_path / "t-idx3-ubyte", "truncated")
    (tmp_path / "m-idx3-ubyte").write_bytes(b"\x01\x02" + data[2:])
    expect_error(tmp_path / "m-idx3-ubyte", "magic")
    (tmp_path / "g-idx3-ubyte.gz").write_bytes(gzip.compress(data)[:-10])
    expect_error(tmp_path / "g-idx3-ubyte.gz", "gzip")


# ---------------------------------------------------------------------------------------------
# Fuzzing: arbitrary bytes either load or raise DataError, nothing else
# ---------------------------------------------------------------------------------------------

FUZZ_NAMES = ["f.png", "f.jpg", "f.csv", "f.npy", "f.npz", "f-idx3-ubyte", "f-idx3-ubyte.gz"]
PREFIXES = [b"", b"\x89PNG\r\n\x1a\n", b"\x93NUMPY\x01\x00", b"PK\x03\x04", b"\x00\x00\x08\x03", b"a,b\n"]


def _load_or_data_error(path: Path) -> None:
    try:
        d = load_data(str(path))
    except DataError as err:
        assert "\n" not in str(err)
    else:
        assert torch.isfinite(d.x).all() and d.x.dtype == torch.float32


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(FUZZ_NAMES), prefix=st.sampled_from(PREFIXES), body=st.binary(max_size=300))
def test_fuzz_random_bytes(name, prefix, body):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        payload = prefix + body
        path.write_bytes(gzip.compress(payload) if name.endswith(".gz") and body[:1] == b"\x00" else payload)
        _load_or_data_error(path)


@settings(max_examples=50, deadline=None)
@given(text=st.text(alphabet="ab01.,-e\n \"nai", max_size=80))
def test_fuzz_csv_text(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.csv"
        path.write_text(text)
        _load_or_data_error(path)


@settings(max_examples=50, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=5),
    dtype=st.sampled_from(["u1", "i8", "f2", "f4", "f8", "?", "c8", "U2"]),
    special=st.sampled_from([None, np.nan, np.inf]),
    as_npz=st.booleans(),
)
def test_fuzz_array_shapes(shape, dtype, special, as_npz):
    arr = np.zeros(shape, dtype=dtype)
    if special is not None and arr.size and arr.dtype.kind == "f":
        arr.reshape(-1)[-1] = special
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("f.npz" if as_npz else "f.npy")
        if as_npz:
            np.savez(path, x=arr, y=np.zeros(shape[:1]))
        else:
            np.save(path, arr)
        _load_or_data_error(path)


# ---------------------------------------------------------------------------------------------
# Shared real data (present on the development machine only)
# ---------------------------------------------------------------------------------------------


def test_shared_mnist():
    path = SHARED / "mnist" / "train-images-idx3-ubyte.gz"
    if not path.exists():
        pytest.skip("shared MNIST subset not available")
    d = load_data(str(path))
    assert d.x.shape == (8000, 1, 28, 28) and d.value_range == (0.0, 255.0) and d.num_classes == 10
    assert torch.bincount(d.labels).tolist() == [773, 905, 834, 803, 788, 723, 756, 813, 787, 818]


def test_shared_adbench_csv():
    path = SHARED / "adbench" / "breastw.csv"
    if not path.exists():
        pytest.skip("shared ADBench data not available")
    d = load_data(str(path))
    assert d.x.shape == (683, 9) and "label" not in d.columns and int(d.labels.sum()) == 239
    with np.load(SHARED / "adbench" / "breastw.npz") as ref:
        assert np.array_equal(d.x.numpy(), ref["X"].astype(np.float32))
