"""``difflab inpaint``, ``denoise`` and ``anomaly`` end to end on tiny trained runs (the math of each task is
tested against oracles in test_inpaint.py, test_denoise.py and test_anomaly.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import difflab
from difflab import train
from difflab.cli import main
from difflab.config import config_from_dict
from difflab.data import load_data, write_csv
from difflab.tasks.inpaint import inpaint


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """A tiny digits run (pixel range 0..16) and a tiny 3-column tabular run."""
    root = tmp_path_factory.mktemp("task_runs")
    img = config_from_dict({"model": {"params": {"model_channels": 8}},
                            "train": {"steps": 20, "batch_size": 32, "checkpoint_every": 20, "sample_grid": 0}})
    train(img, load_data("digits", n=256), root / "digits", progress=False)
    rng = np.random.default_rng(0)
    table = rng.normal(size=(300, 3)) * [1.0, 2.0, 0.5]
    write_csv(root / "table.csv", table, ["a", "b", "c"], labels=(rng.random(300) < 0.1).astype(int))
    tab = config_from_dict({"model": {"preset": "small"},
                            "train": {"steps": 20, "batch_size": 64, "checkpoint_every": 20, "sample_grid": 0}})
    train(tab, load_data(str(root / "table.csv")), root / "table", progress=False)
    return root


def _digits_png(path, index=0):
    from sklearn.datasets import load_digits

    img = (load_digits().images[index] * 255 / 16).round().astype(np.uint8)
    Image.fromarray(img).save(path)
    return img


def test_inpaint_png_keeps_pixels_and_units(runs, tmp_path, capsys):
    img = _digits_png(tmp_path / "in.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    rc = main(["inpaint", str(runs / "digits"), "--image", str(tmp_path / "in.png"), "--mask",
               str(tmp_path / "mask.png"), "--out", str(tmp_path / "out.png"), "--method", "ddnm", "--steps", "8",
               "--quiet"])
    assert rc == 0
    assert "8 steps = 8 denoiser calls" not in capsys.readouterr().out  # --quiet prints only what was written
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (8, 8) and out.dtype == np.uint8
    keep = mask == 0
    np.testing.assert_array_equal(out[keep], img[keep])  # kept pixels, in the PNG's 0..255 units, exactly


def test_inpaint_npz_batch_and_mask_shape_error(runs, tmp_path, capsys):
    x = load_data("digits", n=4).x.numpy()
    np.save(tmp_path / "x.npy", x)
    m = np.zeros((1, 8, 8), np.float32)
    m[:, :, 4:] = 1
    np.save(tmp_path / "m.npy", m)
    rc = main(["inpaint", str(runs / "digits"), "--image", str(tmp_path / "x.npy"), "--mask", str(tmp_path / "m.npy"),
               "--out", str(tmp_path / "o.npz"), "--steps", "6", "--resamplings", "2", "--jump-length", "2"])
    assert rc == 0
    # the default method, pigdm, with time travel (j = r = 2): 6 + 2 x 1 x 2 calls
    assert "pigdm: 6 steps = 10 denoiser calls per image, each with a backward pass" in capsys.readouterr().out
    with np.load(tmp_path / "o.npz") as z:
        y = z["x"]
    assert y.shape == x.shape and (tmp_path / "o.png").exists()
    np.testing.assert_array_equal(y[..., :4], x[..., :4])
    # --samples K: the mean of K fills, through the same API call (ddnm, 3 steps, 2 fills = 6 calls per image)
    rc = main(["inpaint", str(runs / "digits"), "--image", str(tmp_path / "x.npy"), "--mask", str(tmp_path / "m.npy"),
               "--out", str(tmp_path / "k.npz"), "--method", "ddnm", "--steps", "3", "--samples", "2"])
    assert rc == 0 and "ddnm: 3 steps = 6 denoiser calls per image (2 fills averaged)" in capsys.readouterr().out
    with np.load(tmp_path / "k.npz") as z:
        mean = z["x"]
    api = inpaint(difflab.load(runs / "digits"), x, m, method="ddnm", steps=3, samples=2).numpy()
    np.testing.assert_allclose(mean, api, rtol=0, atol=1e-5)
    np.save(tmp_path / "bad.npy", np.zeros((1, 7, 8), np.float32))
    rc = main(["inpaint", str(runs / "digits"), "--image", str(tmp_path / "x.npy"), "--mask",
               str(tmp_path / "bad.npy"), "--out", str(tmp_path / "o2.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and "--mask" in err and "does not match" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o2.npz").exists() and not (tmp_path / "o2.png").exists()


def test_denoise_units_and_auto_sigma(runs, tmp_path, capsys):
    x = load_data("digits", n=6).x
    noisy = x + 2.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "noisy.npy", noisy.numpy())
    out = tmp_path / "d.npz"
    # sigma 2 in the run's units (0..16) == 0.125 of the range
    assert main(["denoise", str(runs / "digits"), "--input", str(tmp_path / "noisy.npy"), "--sigma", "0.125",
                 "--sigma-scale", "unit", "--out", str(out)]) == 0
    assert "median 2," in capsys.readouterr().out
    with np.load(out) as z:
        y = z["x"]
    assert y.shape == tuple(x.shape) and y.min() >= 0 and y.max() <= 16  # clipped to the pixel range
    assert main(["denoise", str(runs / "digits"), "--input", str(tmp_path / "noisy.npy"), "--sigma", "auto",
                 "--out", str(tmp_path / "a.npz"), "--quiet"]) == 0
    assert main(["denoise", str(runs / "table"), "--input", str(runs / "table.csv"), "--sigma", "0.1",
                 "--out", str(tmp_path / "t.csv"), "--quiet"]) == 0
    assert load_data(str(tmp_path / "t.csv")).x.shape == (300, 3)


@pytest.mark.parametrize("bad, message", [("-0.5", "--sigma must be > 0"), ("nan", "--sigma must be > 0"),
                                          ("big", "a number or 'auto'")])
def test_denoise_rejects_bad_sigma(runs, tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit) as e:
        main(["denoise", str(runs / "digits"), "--input", "digits", "--sigma", bad, "--out", str(tmp_path / "d.npz")])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_anomaly_scores_labels_and_maps(runs, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["anomaly", str(runs / "table"), "--data", str(runs / "table.csv"), "--out", str(out),
                 "--labels", "label", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "AUROC" in text and "anomalies of 300" in text
    scores = load_data(str(out))
    assert scores.x.shape == (300, 1) and scores.labels is not None and torch.isfinite(scores.x).all()
    x = load_data("digits", n=5).x.numpy()
    np.save(tmp_path / "d.npy", x)
    np.save(tmp_path / "lab.npy", np.array([0, 0, 1, 0, 1]))
    assert main(["anomaly", str(runs / "digits"), "--data", str(tmp_path / "d.npy"), "--out", str(tmp_path / "d.csv"),
                 "--labels", str(tmp_path / "lab.npy"), "--quiet"]) == 0
    assert (tmp_path / "d_maps.png").exists()
    profile = load_data(str(tmp_path / "d.csv")).x
    assert main(["anomaly", str(runs / "digits"), "--data", str(tmp_path / "d.npy"), "--out", str(tmp_path / "m.csv"),
                 "--combine", "mean", "--quiet"]) == 0
    assert not torch.allclose(load_data(str(tmp_path / "m.csv")).x, profile)  # images: auto = profile, not mean
    rc = main(["anomaly", str(runs / "digits"), "--data", str(tmp_path / "d.npy"), "--out", str(tmp_path / "r.csv"),
               "--reference", str(runs / "table.csv")])
    assert rc == 2 and "--reference" in capsys.readouterr().err and not (tmp_path / "r.csv").exists()
    rc = main(["anomaly", str(runs / "digits"), "--data", str(tmp_path / "d.npy"), "--out", str(tmp_path / "r.csv"),
               "--score", "elbo", "--combine", "mean"])
    assert rc == 2 and "--combine mean" in capsys.readouterr().err and not (tmp_path / "r.csv").exists()
    rc = main(["anomaly", str(runs / "table"), "--data", str(runs / "table.csv"), "--out", str(tmp_path / "x.csv"),
               "--labels", "nosuchcolumn"])
    assert rc == 2 and "nosuchcolumn" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()


def test_task_commands_refuse_data_of_another_shape(runs, tmp_path, capsys):
    rc = main(["anomaly", str(runs / "digits"), "--data", str(runs / "table.csv"), "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "shape" in err and len(err.strip().splitlines()) == 1


def test_sigma_last_raises_the_last_grid_level(runs, tmp_path, capsys):
    import difflab

    model = difflab.load(runs / "table")
    grid = model.sigmas(5, "log_snr", sigma_last=0.1)
    assert grid.shape == (6,) and float(grid[-1]) == 0 and float(grid[-2]) == pytest.approx(0.1)
    assert float(model.sigmas(5, "log_snr")[-2]) == pytest.approx(model.sigma_min)
    with pytest.raises(ValueError, match="sigma_last"):
        model.sigmas(5, sigma_last=1e9)
    out = tmp_path / "s.csv"
    assert main(["sample", str(runs / "table"), "--n", "8", "--out", str(out), "--steps", "4", "--sigma-last", "0.1",
                 "--quiet"]) == 0
    assert load_data(str(out)).x.shape == (8, 3)
    assert main(["sample", str(runs / "table"), "--n", "8", "--out", str(tmp_path / "t.csv"), "--sigma-last", "1e9"]) == 2
    assert "sigma_last" in capsys.readouterr().err and not (tmp_path / "t.csv").exists()
