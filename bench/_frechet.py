"""Frechet distance of digit images in the features of a small digit classifier (a "FID" for 8x8 digits).

Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
eq. (6): with Gaussians fitted to two feature sets,

    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).

Inception is replaced by scikit-learn's ``MLPClassifier`` trained on part of scikit-learn's 8x8 digits
(pixel values 0..16, scaled to 0..1); the features are its last hidden layer's ReLU activations. The real
reference set is the held-out part of the digits, which the classifier never saw.

    fd = DigitFrechet()                      # trains the classifier once (a few seconds)
    fd.real_self_distance()                  # calibration: FD between two halves of the held-out digits
    fd(samples)                              # samples: (N, 8, 8) or (N, 64) in 0..16

Shared by the benchmarks in bench/ (sampler comparison, sample quality).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Heusel et al. 2017 eq. (6) between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mu1: shapes {mu1.shape}, {cov1.shape} do not match {mu2.shape}, {cov2.shape}")
    with warnings.catch_warnings():  # dead ReLU units make the covariances singular: that is expected
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(cov1 @ cov2)
        if not np.isfinite(covmean).all():  # near-singular product: regularise as the reference code does
            off = np.eye(cov1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((cov1 + off) @ (cov2 + off))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (N, F) feature matrix."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: need shape (N >= 2, F), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


class DigitFrechet:
    """Frechet distance to held-out real digits in an MLP digit classifier's last hidden layer.

    ``hidden`` are the MLP's hidden layer sizes (the features are the last one); ``test_size`` is the
    fraction of scikit-learn's 1797 digits held out as the real reference (and never used in training).
    """

    def __init__(self, hidden: tuple[int, ...] = (128, 64), test_size: float = 0.4, seed: int = 0):
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden: need at least one positive layer size, got {hidden!r}")
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size: must be in (0, 1), got {test_size!r}")
        X, y = load_digits(return_X_y=True)
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.clf = MLPClassifier(tuple(int(h) for h in hidden), max_iter=1000, random_state=seed)
            self.clf.fit(X_tr / 16.0, y_tr)
        self.real, self.real_labels = X_te, y_te
        self.real_features = self.features(X_te)
        self.mu_real, self.cov_real = gaussian_stats(self.real_features)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Last-hidden-layer ReLU activations for images in 0..16, shape (N, 8, 8) or (N, 64)."""
        x = np.asarray(images, np.float64).reshape(len(images), -1)
        if x.shape[1] != 64:
            raise ValueError(f"images: expected 64 pixels per image, got {x.shape[1]}")
        h = np.clip(x, 0.0, 16.0) / 16.0
        for w, b in zip(self.clf.coefs_[:-1], self.clf.intercepts_[:-1]):
            h = np.maximum(h @ w + b, 0.0)  # MLPClassifier's default hidden activation is ReLU
        return h

    def accuracy_real(self) -> float:
        """Classifier accuracy on the held-out digits (a sanity figure for the feature extractor)."""
        return float((self.clf.predict(self.real / 16.0) == self.real_labels).mean())

    def __call__(self, images: np.ndarray) -> float:
        mu, cov = gaussian_stats(self.features(images))
        return frechet_distance(mu, cov, self.mu_real, self.cov_real)

    def real_self_distance(self, n: int | None = None, seed: int = 0) -> float:
        """FD of ``n`` held-out real digits (default: half of them) to all held-out digits: the floor a
        perfect generator reaches with that many samples (finite-sample bias)."""
        rng = np.random.default_rng(seed)
        n = len(self.real) // 2 if n is None else int(n)
        idx = rng.choice(len(self.real), size=n, replace=False)
        return self(self.real[idx])
