"""Calibration: one temperature for the logits (Guo et al., 2017, "On Calibration of Modern
Neural Networks"), and how well probabilities match outcomes: negative log-likelihood,
Brier score and expected calibration error. numpy only (the ONNX runtime uses it too)."""

from __future__ import annotations

import math

import numpy as np

BINS = 15  # equal-width confidence bins of the expected calibration error
T_RANGE = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``, in float64."""
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    picked = probs[np.arange(len(targets)), targets]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def brier(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean squared distance between the probabilities and the one-hot truth (0..2)."""
    truth = np.zeros_like(probs)
    truth[np.arange(len(targets)), targets] = 1
    return float(((probs - truth) ** 2).sum(axis=1).mean())


def reliability(probs: np.ndarray, targets: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per equal-width bin of top-1 confidence: its mean confidence, accuracy and count."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        rows.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": int(inside.sum()),
                "confidence": float(confidence[inside].mean()) if inside.any() else None,
                "accuracy": float(correct[inside].mean()) if inside.any() else None,
            }
        )
    return rows


def ece(probs: np.ndarray, targets: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over
    ``bins`` equal-width confidence bins."""
    n = len(targets)
    return float(
        sum(
            r["count"] / n * abs(r["accuracy"] - r["confidence"])
            for r in reliability(probs, targets, bins)
            if r["count"]
        )
    )


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)``: a golden-section
    search over log T in ``T_RANGE`` (the NLL is convex in 1/T, so it has one minimum).
    When every photo's top answer is right the NLL only falls as T shrinks: the photos say
    nothing about the temperature, which stays 1 (a fit would make the model as sure as
    the range allows)."""
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets)
    if (logits.argmax(1) == targets).all():
        return 1.0
    low, high = (math.log(t) for t in T_RANGE)
    ratio = (math.sqrt(5) - 1) / 2

    def cost(log_t: float) -> float:
        return nll(softmax(logits, math.exp(log_t)), targets)

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = cost(a), cost(b)
    for _ in range(80):  # the interval shrinks to 1e-16 of its width
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = cost(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = cost(b)
    return float(math.exp((low + high) / 2))


def min_confidence(probs: np.ndarray, targets: np.ndarray) -> float:
    """The lowest top-1 confidence to answer with: the smallest threshold at which the
    predictions kept (confidence at or above it) make at most half the overall error rate,
    so "not sure" takes the doubtful half of the mistakes. 0 when nothing is wrong."""
    confidence = probs.max(axis=1)
    wrong = probs.argmax(axis=1) != targets
    if not wrong.any():
        return 0.0
    target = wrong.mean() / 2
    for threshold in np.unique(confidence):
        kept = confidence >= threshold
        if wrong[kept].mean() <= target:
            return float(threshold)
    return float(confidence.max())
