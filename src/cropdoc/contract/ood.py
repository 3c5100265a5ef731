"""Out-of-scope scores from the model's own penultimate features, fitted on its training
split: no outlier data needed. numpy only (the benchmark and tests use it; the bundle's
``ScoringModel`` computes the same in torch and in the exported ONNX graph).

Three scores, chosen by measurement (``benchmarks/trust.py``, ``docs/trust.md``):

- ``mahalanobis-layers`` (the default for whole photos): the ``mahalanobis`` distance of the
  penultimate features and of the pooled features of two middle stages of the body (one at
  1/8 of the input's side, one at 1/16), each divided by its median over the in-scope
  validation photos and summed, as Lee et al. combine layers (NeurIPS 2018). Real photos
  showed why: a bean model's penultimate features flag 76% of PlantDoc's crops, its middle
  stages 99.8% (docs/real.md);
- ``mahalanobis``: the smallest Mahalanobis distance of a photo's features to a class mean,
  one covariance shared by the classes (Lee et al., NeurIPS 2018);
- ``knn``: the distance of the L2-normalised features to their ``k``-th nearest neighbour
  among the training photos' (Sun et al., ICML 2022).

Either is divided by the threshold that ``keep`` of the validation photos pass, so 1.0 is
the boundary for every model: above it a photo is out of scope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BANK_SIZE = 4096  # training features kept (a seeded subsample of larger splits)
KEEP = 0.95  # share of in-scope validation photos under the threshold


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    features = np.asarray(features, np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def knn_distance(features: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Distance of each normalised feature row to its ``k``-th nearest row of ``bank``."""
    similarity = normalise(features) @ bank.T  # cosine; distance = sqrt(2 - 2 cos)
    k = min(k, bank.shape[0])
    kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
    return np.sqrt(np.maximum(2 - 2 * kth, 0)).astype(np.float64)


CONFIDENCE = 0.9  # how sure the threshold is to pass at least ``keep`` of in-scope photos


def threshold_of(distances: np.ndarray, keep: float, confidence: float = CONFIDENCE) -> float:
    """A threshold that at least ``keep`` of in-scope photos pass, with ``confidence``: the
    smallest order statistic of the validation distances that is above their true ``keep``
    quantile with that probability (distribution-free: the number of photos below the
    quantile is binomial). A plain sample quantile of a small validation split flags too
    many new in-scope photos (7.5% instead of 5% on the demo data, docs/trust.md)."""
    d = np.sort(np.asarray(distances, np.float64))
    n = len(d)
    if n == 0:
        return 1.0
    below = 0.0  # P(Binomial(n, keep) <= r - 1), summed term by term in log space
    for r in range(1, n + 1):
        j = r - 1
        log_term = (
            math.lgamma(n + 1)
            - math.lgamma(j + 1)
            - math.lgamma(n - j + 1)
            + j * math.log(keep)
            + (n - j) * math.log1p(-keep)
        )
        below += math.exp(log_term)
        if below >= confidence:
            return max(float(d[r - 1]), 1e-6)
    return max(float(d[-1]), 1e-6)


@dataclass
class Mahalanobis:
    """Class means and the shared precision matrix of the training features, and the
    threshold."""

    means: np.ndarray  # (classes, d)
    precision: np.ndarray  # (d, d)
    threshold: float

    @classmethod
    def fit(
        cls,
        train_features: np.ndarray,
        train_targets: np.ndarray,
        classes: int,
        valid_features: np.ndarray,
        keep: float = KEEP,
    ) -> Mahalanobis:
        f = np.asarray(train_features, np.float64)
        # a class with no training photo (a split that left it out) takes the overall mean
        means = np.stack(
            [
                f[train_targets == c].mean(0) if (train_targets == c).any() else f.mean(0)
                for c in range(classes)
            ]
        )
        centred = f - means[train_targets]
        covariance = centred.T @ centred / len(f)
        ridge = 1e-6 * max(float(np.trace(covariance)) / len(covariance), 1e-12)
        precision = np.linalg.pinv(covariance + ridge * np.eye(len(covariance)))
        fitted = cls(means.astype(np.float32), precision.astype(np.float32), 1.0)
        fitted.threshold = threshold_of(fitted.distance(valid_features), keep)
        return fitted

    def distance(self, features: np.ndarray) -> np.ndarray:
        d = np.asarray(features, np.float64)[:, None, :] - self.means[None]
        squared = np.einsum("ncd,de,nce->nc", d, self.precision, d).min(axis=1)
        return np.sqrt(np.maximum(squared, 0))

    def tensors(self) -> dict[str, np.ndarray]:
        return {"ood_means": self.means, "ood_precision": self.precision}


@dataclass
class OutOfScope:
    """A fitted kNN out-of-scope score: the training bank, ``k`` and the threshold."""

    bank: np.ndarray  # (n, d) normalised training features
    k: int
    threshold: float

    @classmethod
    def fit(
        cls,
        train_features: np.ndarray,
        valid_features: np.ndarray,
        k: int = 10,
        keep: float = KEEP,
        seed: int = 0,
    ) -> OutOfScope:
        """The bank from the training features (at most ``BANK_SIZE``), the threshold from
        the validation features: the ``keep`` quantile of their distances."""
        bank = normalise(train_features)
        if len(bank) > BANK_SIZE:
            pick = np.random.default_rng(seed).choice(len(bank), BANK_SIZE, replace=False)
            bank = bank[np.sort(pick)]
        k = max(1, min(k, len(bank)))
        return cls(bank, k, threshold_of(knn_distance(valid_features, bank, k), keep))

    def tensors(self) -> dict[str, np.ndarray]:
        return {"ood_bank": self.bank}


@dataclass
class Layered:
    """A ``Mahalanobis`` score per layer (the penultimate features first, then the middle
    stages'), each over its in-scope validation median (``scales``), summed; and the
    threshold of the sum."""

    parts: list[Mahalanobis]
    scales: np.ndarray  # (layers,)
    threshold: float

    @classmethod
    def fit(
        cls,
        train_layers: list[np.ndarray],
        train_targets: np.ndarray,
        classes: int,
        valid_layers: list[np.ndarray],
        keep: float = KEEP,
    ) -> Layered:
        parts = [
            Mahalanobis.fit(train, train_targets, classes, valid, keep)
            for train, valid in zip(train_layers, valid_layers, strict=True)
        ]
        scales = np.array(
            [
                max(float(np.median(p.distance(v))), 1e-6)
                for p, v in zip(parts, valid_layers, strict=True)
            ]
        )
        fitted = cls(parts, scales, 1.0)
        fitted.threshold = threshold_of(fitted.distance(valid_layers), keep)
        return fitted

    def distance(self, layers: list[np.ndarray]) -> np.ndarray:
        return sum(
            part.distance(features) / scale
            for part, features, scale in zip(self.parts, layers, self.scales, strict=True)
        )

    def tensors(self) -> dict[str, np.ndarray]:
        found = {"ood_scales": self.scales.astype(np.float32)}
        for n, part in enumerate(self.parts):
            found[f"ood_means_{n}"], found[f"ood_precision_{n}"] = part.means, part.precision
        return found

    @classmethod
    def from_tensors(cls, tensors: dict, threshold: float) -> Layered:
        scales = np.asarray(tensors["ood_scales"], np.float64)
        parts = [
            Mahalanobis(tensors[f"ood_means_{n}"], tensors[f"ood_precision_{n}"], 1.0)
            for n in range(len(scales))
        ]
        return cls(parts, scales, threshold)
