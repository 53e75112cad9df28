"""Anomaly scores (difflab.anomaly) on exact oracles, AUROC/AUPRC, heat maps and the DiffusionDetector."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from difflab.anomaly import Calibration, DiffusionDetector, anomaly_scores, auroc_auprc, save_anomaly_maps
from difflab.data import Normalizer
from difflab.data.synthetic import synthetic

pytestmark = pytest.mark.usefixtures("one_thread")


class OracleDenoiser:
    def __init__(self, fn, sigma_data=1.0):
        self.fn, self.sigma_data = fn, sigma_data

    def __call__(self, x, sigma, class_labels=None):
        return self.fn(x, sigma)


class OracleModel:
    """The parts of difflab.model.DiffusionModel that anomaly_scores uses, around an exact denoiser."""

    def __init__(self, denoiser, shape, kind, normalizer, sigma_data=1.0):
        self.denoiser = OracleDenoiser(denoiser, sigma_data)
        self.shape, self.kind, self.normalizer = tuple(shape), kind, normalizer
        self.sigma_min, self.sigma_max = 0.002, 80.0
        self.device = torch.device("cpu")
        self.num_classes = 0

    def normalize(self, x):
        return self.normalizer.forward(torch.as_tensor(x, dtype=torch.float32))


@pytest.fixture(scope="module")
def mixture_case():
    mix = synthetic("gmm2d")  # 8 components of std 0.2 on a circle of radius 2
    inliers = mix.sample(48, 0)
    angles = torch.rand(12, generator=torch.Generator().manual_seed(1)) * 6.2832
    outliers = 4.5 * torch.stack([angles.cos(), angles.sin()], 1)  # far outside the circle
    x = torch.cat([inliers, outliers])
    labels = torch.cat([torch.zeros(48), torch.ones(12)])
    model = OracleModel(mix.denoiser, (2,), "tabular", Normalizer.identity(2))
    return mix, model, x, labels


@pytest.mark.parametrize("score", ["recon", "nll", "elbo"])
def test_oracle_scores_separate_outliers(mixture_case, score):
    _, model, x, labels = mixture_case
    res = anomaly_scores(model, x, score=score, seed=0)
    assert res.scores.shape == (60,) and res.score == score
    auroc, auprc = auroc_auprc(res.scores, labels)
    # outliers sit 2.5 (12 component stds) beyond the circle: every score must rank them first
    assert auroc >= 0.97 and auprc >= 0.9


def test_recon_with_reverse_runs(mixture_case):
    _, model, x, labels = mixture_case
    # a full reverse run from a level far above the data scale draws a fresh sample: keep levels <= sigma_data
    res = anomaly_scores(model, x, score="recon", reverse_steps=4, draws=2, levels=(0.1, 0.3, 1.0))  # 1.0 for seeds 0-7
    assert auroc_auprc(res.scores, labels)[0] >= 0.97


def test_nll_matches_true_log_density(mixture_case):
    mix, model, x, _ = mixture_case
    res = anomaly_scores(model, x, score="nll")
    true_nll = -mix.log_prob(x, model.sigma_min).double()  # identity normaliser: data units = model space
    assert spearmanr(res.scores.numpy(), true_nll.numpy()).statistic >= 0.999
    # float32 states, ODE at rtol = atol = 1e-4 with the exact divergence: relative 1e-3 on the far outliers
    # (NLL ~ 80 nats), 5e-3 nats absolute on the inliers; the prior at sigma_max = 80 is off by ~1e-4 nats
    assert bool(((res.scores - true_nll).abs() <= 1e-3 * true_nll.abs() + 5e-3).all())


def test_elbo_scores_bound_true_nll_on_average(mixture_case):
    mix, model, x, _ = mixture_case
    res = anomaly_scores(model, x[:48], score="elbo", draws=64, seed=3)
    true_nll = -mix.log_prob(x[:48], model.sigma_min).double()
    se_mean = float(res.stderr.pow(2).sum().sqrt()) / 48
    assert abs(float(res.scores.mean() - true_nll.mean())) <= 3 * se_mean + 1e-3  # tight for the exact D


def test_recon_scores_do_not_depend_on_the_batching(mixture_case):
    """Sample i's recon noise comes from its own generator (seed + i): the same scores in batches of 7 as in
    one batch, and the rows from k on, scored alone with seed + k, get their scores from the full call."""
    _, model, x, _ = mixture_case
    full = anomaly_scores(model, x, score="recon", seed=3)
    small = anomaly_scores(model, x, score="recon", seed=3, batch_size=7)
    assert torch.allclose(small.per_level, full.per_level, rtol=1e-5, atol=1e-9)
    tail = anomaly_scores(model, x[10:], score="recon", seed=13)
    assert torch.allclose(tail.scores, full.scores[10:], rtol=1e-5, atol=1e-9)
    other = anomaly_scores(model, x, score="recon", seed=4)  # and the seed does matter
    assert not torch.allclose(other.per_level, full.per_level, rtol=1e-3)


def test_recon_reference_calibration_and_reuse(mixture_case):
    mix, model, x, _ = mixture_case
    ref = mix.sample(64, 5)
    with_ref = anomaly_scores(model, x, score="recon", reference=ref, combine="profile", seed=2)
    cal = with_ref.calibration
    assert with_ref.combine == "profile" and cal.scale.shape == (5,) and bool((cal.scale > 0).all())
    assert cal.center.shape == (5,) and cal.precision.shape == (5, 5)
    reused = anomaly_scores(model, x, score="recon", calibration=cal, combine="profile", seed=2)
    assert torch.equal(reused.scores, with_ref.scores)
    # the reference's own normalised errors have median 1 per level (up to independent noise draws), and
    # their squared Mahalanobis distances to their own profile average about L = 5 (chi-square-like)
    own = anomaly_scores(model, ref, score="recon", calibration=cal, combine="profile", seed=7)
    assert bool(((own.per_level.median(0).values - 1).abs() < 0.35).all())
    assert 2.5 < float(own.scores.mean()) < 10.0
    averaged = anomaly_scores(model, x, score="recon", calibration=cal, seed=2)  # auto: tables average
    assert averaged.combine == "mean" and torch.allclose(averaged.scores, with_ref.per_level.mean(1))
    no_ref = anomaly_scores(model, x, score="recon", seed=2)
    assert no_ref.combine == "mean" and no_ref.calibration.center is None


def test_auto_combine_uses_the_profile_for_images_with_reference():
    model, x = gaussian_image_case()
    ref = 0.5 * torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert anomaly_scores(model, x, score="recon", reference=ref, draws=1).combine == "profile"
    assert anomaly_scores(model, x, score="recon", draws=1).combine == "mean"  # nothing to fit a profile on


def test_profile_catches_inputs_too_simple_for_their_class():
    """The input-complexity failure, in closed form. Normal data N(0, s^2 I) in 16 dimensions with its exact
    denoiser D(z, sigma) = z s^2 / (s^2 + sigma^2); anomalies are the same Gaussian shrunk 4x ("simpler"
    inputs). Their expected error at level sigma, (|x|^2 sigma^4 + d sigma^2 s^4) / (s^2 + sigma^2)^2, is below
    the normal one at *every* level, so any average of the levels ranks them as the most normal samples. Their
    error profile across the levels is nevertheless far from the normal one, and the profile score finds it."""
    s, d = 1.0, 16
    g = torch.Generator().manual_seed(0)
    normal, simple = torch.randn(200, d, generator=g) * s, torch.randn(40, d, generator=g) * s / 4
    ref = torch.randn(256, d, generator=g) * s
    model = OracleModel(lambda z, sigma: z * (s**2 / (s**2 + sigma**2)).reshape(-1, 1), (d,), "tabular",
                        Normalizer.identity(d), sigma_data=s)
    x, labels = torch.cat([normal, simple]), torch.cat([torch.zeros(200), torch.ones(40)])
    averaged = anomaly_scores(model, x, score="recon", reference=ref, combine="mean", seed=1)
    profile = anomaly_scores(model, x, score="recon", reference=ref, combine="profile", seed=1)
    assert auroc_auprc(averaged.scores, labels)[0] < 0.2  # backwards, as on 28x28 digits at fine levels
    assert auroc_auprc(profile.scores, labels)[0] > 0.95


def test_calibration_fit_is_the_gaussian_of_log_errors():
    errors = torch.tensor([[1.0, 4.0], [2.0, 8.0], [4.0, 2.0], [8.0, 4.0], [2.0, 4.0]])
    cal = Calibration.fit((0.5, 1.0), errors)
    assert torch.allclose(cal.scale, torch.tensor([2.0, 4.0], dtype=torch.float64))  # medians
    logs = torch.log(errors.double() / cal.scale)
    assert torch.allclose(cal.center, logs.mean(0))
    # a point at the reference mean has distance 0; the precision is symmetric positive definite
    assert float(cal.profile_distance(torch.exp(cal.center)[None])[0]) == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(cal.precision, cal.precision.T) and bool((torch.linalg.eigvalsh(cal.precision) > 0).all())
    assert Calibration.fit((0.5, 1.0), errors[:1]).center is None  # one sample: no profile


def gaussian_image_case(s=0.5):
    """Images N(0, s^2) per pixel in model space (pixel range [-1, 1]) with a planted bright 3x3 patch."""
    g = torch.Generator().manual_seed(0)
    x = s * torch.randn(6, 1, 8, 8, generator=g)
    x[:, :, 2:5, 3:6] = 3.0
    model = OracleModel(lambda z, sigma: z * (s**2 / (s**2 + sigma**2)).reshape(-1, 1, 1, 1),
                        (1, 8, 8), "image", Normalizer.for_range(-1.0, 1.0), sigma_data=s)
    return model, x


def test_image_maps_highlight_planted_patch(tmp_path):
    model, x = gaussian_image_case()
    res = anomaly_scores(model, x, score="recon", draws=2)
    assert res.maps.shape == (6, 8, 8)
    patch = torch.zeros(8, 8, dtype=torch.bool)
    patch[2:5, 3:6] = True
    inside, outside = res.maps[:, patch].mean(1), res.maps[:, ~patch].mean(1)
    # patch pixels are 6 data stds out: their error at the large levels is ~(3 / s)^2 = 36 times the typical
    assert bool((inside > 5 * outside).all())
    path = save_anomaly_maps(res.maps, x, tmp_path / "maps.png", value_range=(-1.0, 1.0), nrow=3)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size[0] > im.size[1]  # 2 rows of 3 (input, map) pairs


def test_save_anomaly_maps_rejects_mismatch(tmp_path):
    with pytest.raises(ValueError, match="^maps:"):
        save_anomaly_maps(torch.zeros(2, 8, 8), torch.zeros(2, 1, 8, 9), tmp_path / "m.png")


def test_auroc_auprc_hand_checked():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered -> AUROC 0.75;
    # ranking 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): AP = (1/1 + 2/3) / 2 = 0.8333
    auroc, auprc = auroc_auprc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert auroc == pytest.approx(0.75) and auprc == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="^labels:"):
        auroc_auprc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="^labels:"):
        auroc_auprc([0.1, 0.2], [0, 2])


def test_bad_arguments(mixture_case):
    _, model, x, _ = mixture_case
    with pytest.raises(ValueError, match="^score:"):
        anomaly_scores(model, x, score="typo")
    with pytest.raises(ValueError, match="^x:"):
        anomaly_scores(model, x[:, :1])
    with pytest.raises(ValueError, match="^levels:"):
        anomaly_scores(model, x, levels=[0.5, -1.0])
    with pytest.raises(ValueError, match="^class_labels:"):
        anomaly_scores(model, x, class_labels=0)
    with pytest.raises(ValueError, match="^combine:"):
        anomaly_scores(model, x, combine="median")
    with pytest.raises(ValueError, match="^combine: 'profile' needs reference"):
        anomaly_scores(model, x, combine="profile")
    cal = anomaly_scores(model, x, reference=x[:20]).calibration
    with pytest.raises(ValueError, match="^calibration: fitted at levels"):
        anomaly_scores(model, x, calibration=cal, levels=(0.1, 1.0))
    with pytest.raises(ValueError, match="^calibration:"):
        anomaly_scores(model, x, calibration=cal.scale)


@pytest.fixture(scope="module")
def detector_case():
    rng = np.random.default_rng(0)
    inliers = rng.normal(size=(300, 2))
    outliers = rng.normal(size=(15, 2)) * 0.3 + np.array([6.0, -6.0])
    x = np.concatenate([inliers, outliers])
    det = DiffusionDetector(contamination=0.05, steps=150, batch_size=128, model_params={"hidden": 32, "depth": 1},
                            warmup=10)
    return det.fit(x), x


def test_detector_flags_contamination_fraction(detector_case):
    det, x = detector_case
    pred = det.predict(x)
    assert set(np.unique(pred)) <= {-1, 1}
    assert abs((pred == -1).mean() - 0.05) <= 0.01  # the threshold is the 5% quantile of the training scores
    s = det.score_samples(x)
    assert s[300:].max() < np.median(s[:300])  # outliers score lower (less normal)
    assert auroc_auprc(-s, np.r_[np.zeros(300), np.ones(15)])[0] >= 0.97
    np.testing.assert_allclose(det.decision_function(x), s - det.offset_)
    assert det.threshold_ == -det.offset_ and det.model_.shape == (2,)


def test_detector_validates_X(detector_case):
    det, x = detector_case
    with pytest.raises(ValueError, match="^X:"):
        det.predict(x[:, :1])
    with pytest.raises(ValueError, match="^X:"):
        det.score_samples(x[0])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="^X:"):
        det.score_samples(bad)
    with pytest.raises(ValueError, match="^X:"):
        DiffusionDetector().score_samples(x)
    with pytest.raises(ValueError, match="^train_overrides:"):
        DiffusionDetector(steps=1, not_a_key=1).fit(x)
    with pytest.raises(ValueError, match="^combine:"):
        DiffusionDetector(steps=1, combine="median").fit(x)
    with pytest.raises(ValueError, match="^steps: must be 'auto' or an integer >= 1"):
        DiffusionDetector(steps=0).fit(x)


def test_detector_auto_steps_scale_with_the_rows():
    """steps="auto" (default): at least MIN_STEPS, EPOCHS passes over the rows, at most MAX_STEPS."""
    from difflab.anomaly import EPOCHS, MAX_STEPS, MIN_STEPS

    det = DiffusionDetector(batch_size=256)
    assert det.steps == "auto" and det._steps(50) == MIN_STEPS
    assert det._steps(3000) == math.ceil(EPOCHS * 3000 / 256) > MIN_STEPS
    assert det._steps(10**8) == MAX_STEPS and DiffusionDetector(steps=7)._steps(3000) == 7


def test_detector_params_round_trip():
    from sklearn.base import clone

    det = DiffusionDetector(contamination=0.2, steps=10, lr=1e-3)
    params = clone(det).get_params()
    assert params["contamination"] == 0.2 and params["steps"] == 10 and params["lr"] == 1e-3
