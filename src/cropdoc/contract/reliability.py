"""How trustworthy a model's answers are: calibration before and after the temperature,
how well the out-of-scope score separates photos it knows from photos it does not, and the
selective-prediction curve (the error of the answers kept against the share kept)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cropdoc.contract import calibration
from cropdoc.core.plots import png_figure


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before the temperature: softmax(T * log p) undoes softmax(z / T)."""
    return calibration.softmax(temperature * np.log(np.clip(probs, 1e-300, None)))


def calibration_report(probs: np.ndarray, targets: np.ndarray, temperature: float) -> dict:
    """NLL, Brier score and ECE (15 bins) before and after calibration."""
    before = uncalibrated(probs, temperature)
    return {
        "temperature": temperature,
        **{
            name: [round(f(before, targets), 6), round(f(probs, targets), 6)]
            for name, f in (
                ("nll", calibration.nll),
                ("brier", calibration.brier),
                ("ece", calibration.ece),
            )
        },
    }


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """The chance that a random positive scores above a random negative (ties count half)."""
    scores = np.concatenate([negatives, positives])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n, p = len(negatives), len(positives)
    return float((ranks[n:].sum() - p * (p + 1) / 2) / (n * p))


def ood_report(in_scope: np.ndarray, out_of_scope: np.ndarray, keep: float = 0.95) -> dict:
    """AUROC of the score, the false-positive rate at ``keep`` in-scope recall (the share
    of out-of-scope photos that pass a threshold keeping ``keep`` of the in-scope ones),
    and the shares flagged at the bundle's own boundary (1.0)."""
    threshold = np.quantile(in_scope, keep)
    return {
        "in_scope_images": len(in_scope),
        "out_of_scope_images": len(out_of_scope),
        "auroc": round(auroc(in_scope, out_of_scope), 6),
        "fpr_at_95_recall": round(float((out_of_scope <= threshold).mean()), 6),
        "flagged_out_of_scope": round(float((out_of_scope > 1).mean()), 6),
        "flagged_in_scope": round(float((in_scope > 1).mean()), 6),
    }


def selective_curve(probs: np.ndarray, targets: np.ndarray) -> list[dict]:
    """Keeping the most confident answers first: per share kept, the error of those kept."""
    order = np.argsort(-probs.max(axis=1), kind="stable")
    wrong = (probs.argmax(axis=1) != targets)[order]
    kept = np.arange(1, len(order) + 1)
    errors = np.cumsum(wrong) / kept
    return [
        {"kept": round(float(k / len(order)), 6), "error_rate": round(float(e), 6)}
        for k, e in zip(kept, errors, strict=True)
    ]


def plot_reliability(path: Path, probs: np.ndarray, targets: np.ndarray, temperature: float):
    """Accuracy against confidence per bin, before and after calibration."""
    with png_figure(path) as ax:
        ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
        for name, p in (("before", uncalibrated(probs, temperature)), ("after", probs)):
            rows = [r for r in calibration.reliability(p, targets) if r["count"]]
            ece = calibration.ece(p, targets)
            ax.plot(
                [r["confidence"] for r in rows],
                [r["accuracy"] for r in rows],
                "o-",
                label=f"{name} (ECE {ece:.3f})",
            )
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"reliability, temperature {temperature:.2f}")
        ax.legend()


def plot_selective(path: Path, curve: list[dict], min_confidence_share: float | None):
    """Error rate of the kept answers against the share kept."""
    with png_figure(path) as ax:
        ax.plot([r["kept"] for r in curve], [r["error_rate"] for r in curve], "-")
        if min_confidence_share is not None:
            ax.axvline(min_confidence_share, color="k", ls=":", label="the bundle's floor")
            ax.legend()
        ax.set_xlabel("share of photos answered (most confident first)")
        ax.set_ylabel("error rate of the answers")
        ax.set_title("selective prediction")
