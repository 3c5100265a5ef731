"""``evaluate``: how a trained model does on labelled images, class by class.

By default the run's own validation split (the same images and transforms as in training);
or another labelled dataset, whose class names are matched to the model's by name. Writes a
confusion matrix, per-class precision / recall / F1, the top losses as an image grid, and
the error rate with and without test-time augmentation.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from cropdoc.contract import reliability as trust_report
from cropdoc.core.files import atomic_write_json, atomic_write_text, csv_row
from cropdoc.core.plots import png_figure
from cropdoc.data.cache import Cache
from cropdoc.data.loader import group_values, labelled_images
from cropdoc.engine.report import markdown_table, write_run_report
from cropdoc.evaluation.groups import group_lines, group_report
from cropdoc.inference.predict import torch_scorer
from cropdoc.inference.predictions import VERDICTS, predict_paths, verdicts
from cropdoc.model.device import pick_device
from cropdoc.model.kinds import model_kind
from cropdoc.model.scoring import load_scoring_model

TOP_LOSSES = 9


def evaluate(
    run: str | os.PathLike,
    data: str | os.PathLike | None = None,
    tta: bool = False,
    out: str | os.PathLike | None = None,
    bs: int = 64,
    device: str = "auto",
    ood: str | os.PathLike | None = None,
    group_by: str | None = None,
) -> dict:
    """Evaluate the model of ``run`` on its validation split, or on the labelled ``data``.

    Returns the error rate (and with ``tta`` the error rate with test-time augmentation),
    the confusion matrix, per-class metrics, the top losses, calibration before and after
    the temperature, the selective-prediction curve, the verdicts, and with ``ood`` (a
    folder of photos the model should not know) how well the out-of-scope score flags
    them; with ``group_by`` (a manifest column, or ``folder``) the same per group of it
    (``groups.group_report``); and the files written to ``out`` (default
    ``RUN/evaluation``).
    """
    run = Path(run)
    model, meta = load_scoring_model(run)
    cache, indices, targets = labelled_images(run, meta.cache_size, data, meta.classes)
    groups = group_values(cache, indices, group_by) if group_by else None  # checked first
    classes = list(meta.classes)
    dev = pick_device(device)
    views, in_scope, answers = cache_scores(model, meta, cache, indices, tta, bs, dev)
    probs = views[0]  # the plain view is the first of the TTA views
    result = {
        "run": str(run),
        "images": len(indices),
        "error_rate": error_rate(probs, targets),
        "accuracy": 1 - error_rate(probs, targets),
    }
    if tta:
        result["error_rate_tta"] = error_rate(views.mean(0), targets)
    matrix = confusion_matrix(targets, probs.argmax(1), len(classes))
    per_class = class_metrics(matrix, classes)
    worst, top_losses = _top_losses(probs, targets, classes, [cache.images[i] for i in indices])
    out = Path(out) if out else run / "evaluation"
    files = _write(
        out, matrix, classes, per_class, top_losses, [cache.pixels(int(indices[i])) for i in worst]
    )
    result.update(confusion_matrix=matrix.tolist(), classes=classes, per_class=per_class)
    result.update(top_losses=top_losses, files=files)
    result.update(_trust(out, meta, probs, targets, in_scope, files))
    if meta.others:
        truths = [cache.images[int(i)].meta for i in indices]
        result["targets"] = {
            t.name: _other_target(out, t, answer, truths, files)
            for t, answer in zip(meta.others, answers, strict=True)
        }
    if groups is not None:
        result["groups"] = group_report(group_by, groups, probs, targets, in_scope)
    if ood is not None:
        scorer = torch_scorer([run], device=device)
        scores = predict_paths([ood], scorer, bs=bs, quality=False).ood  # the score alone
        result["ood"] = {"folder": str(ood), **trust_report.ood_report(in_scope, scores)}
    atomic_write_json(out / "evaluation.json", result)
    write_report(out / "report.md", result)
    if out == run / "evaluation":
        write_run_report(run)
    return result


def _top_losses(probs, targets, classes: list[str], images: list) -> tuple[np.ndarray, list]:
    """The positions of the ``TOP_LOSSES`` worst-predicted images, and their rows."""
    losses = -np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, None))
    worst = np.argsort(-losses, kind="stable")[:TOP_LOSSES]
    return worst, [
        {
            "path": images[i].path,
            "actual": classes[targets[i]],
            "predicted": classes[int(probs[i].argmax())],
            "prob": round(float(probs[i].max()), 4),
            "loss": round(float(losses[i]), 4),
        }
        for i in worst
    ]


def cache_scores(model, meta, cache: Cache, indices, tta: bool = False, bs: int = 64, device="cpu"):
    """``(views, images, classes)`` calibrated probabilities of the cached images
    ``indices`` by a ``ScoringModel``, a batch at a time, their plain view's out-of-scope
    scores, and a multi-target bundle's other answers (per target, the probabilities or
    values averaged over the views)."""
    model.to(device)
    return model_kind(meta.tiles).cache_scores(model, meta, cache, indices, tta, bs, device)


def _other_target(out: Path, target, answer: np.ndarray, truths: list[dict], files: dict) -> dict:
    """How a multi-target model does on another target, over the images that have its
    value: error rate, confusion matrix and per-class metrics (``out/NAME/``) of a
    classification; mean absolute and root mean square error of a regression."""
    given = [truth.get(target.name, "") for truth in truths]
    rows = np.array([i for i, v in enumerate(given) if v], dtype=int)
    if target.kind == "regress":
        values = np.array([float(given[i]) for i in rows])
        errors = answer[rows] - values
        return {
            "images": len(rows),
            "mae": float(np.abs(errors).mean()) if len(rows) else None,
            "rmse": float(np.sqrt((errors**2).mean())) if len(rows) else None,
        }
    classes = list(target.classes)
    known = np.array([i for i in rows if given[i] in classes], dtype=int)
    actual = np.array([classes.index(given[i]) for i in known], dtype=int)
    probs = answer[known]
    matrix = confusion_matrix(actual, probs.argmax(1), len(classes))
    per_class = class_metrics(matrix, classes)
    folder = out / target.name
    _write_confusion(folder, matrix, classes, per_class)
    files.update({f"{target.name}/{n}": str(folder / n) for n in CONFUSION_FILES})
    return {
        "images": len(known),
        "unknown_values": len(rows) - len(known),
        "error_rate": error_rate(probs, actual) if len(known) else None,
        "classes": classes,
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class,
    }


def _trust(out: Path, meta, probs: np.ndarray, targets: np.ndarray, ood, files: dict) -> dict:
    """Calibration, the selective curve and the verdicts, with their two plots."""
    trust = meta.trust
    curve = trust_report.selective_curve(probs, targets)
    floor_share = float((probs.max(axis=1) >= trust.min_confidence).mean())
    trust_report.plot_reliability(out / "reliability.png", probs, targets, trust.temperature)
    trust_report.plot_selective(out / "selective.png", curve, floor_share)
    files.update({name: str(out / name) for name in ("reliability.png", "selective.png")})
    given = verdicts(probs, ood, trust.min_confidence)
    return {
        "calibration": trust_report.calibration_report(probs, targets, trust.temperature),
        "selective": curve,
        "verdicts": {v: given.count(v) for v in VERDICTS},
        "trust_fitted": trust.fitted,
    }


def error_rate(probs: np.ndarray, targets: np.ndarray) -> float:
    """Share of images whose likeliest class is not their label."""
    return float(np.mean(probs.argmax(1) != targets))


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, n: int) -> np.ndarray:
    """Counts: row = actual class, column = predicted class."""
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (actual, predicted), 1)
    return matrix


def class_metrics(matrix: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of every class (0 where undefined)."""
    rows = []
    for i, name in enumerate(classes):
        hits, predicted, support = matrix[i, i], matrix[:, i].sum(), matrix[i].sum()
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "class": name,
                "precision": round(float(precision), 4),
                "recall": round(float(recall), 4),
                "f1": round(float(f1), 4),
                "support": int(support),
            }
        )
    return rows


CONFUSION_FILES = ("confusion_matrix.png", "confusion_matrix.csv", "per_class.csv")


def _write(out: Path, matrix, classes, per_class, top_losses, images) -> dict:
    """The confusion matrix (PNG + CSV), per-class CSV and top-losses grid."""
    _write_confusion(out, matrix, classes, per_class)
    _plot_top_losses(out / "top_losses.png", top_losses, images)
    return {name: str(out / name) for name in (*CONFUSION_FILES, "top_losses.png")}


def _write_confusion(out: Path, matrix, classes, per_class) -> None:
    """``CONFUSION_FILES``: the confusion matrix as CSV and PNG, per-class metrics as CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_row(["actual \\ predicted", *classes]))
    writer.writerows(
        csv_row([name, *row]) for name, row in zip(classes, matrix.tolist(), strict=True)
    )
    atomic_write_text(out / "confusion_matrix.csv", buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, ["class", "precision", "recall", "f1", "support"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows({**r, "class": csv_row([r["class"]])[0]} for r in per_class)
    atomic_write_text(out / "per_class.csv", buffer.getvalue())
    _plot_confusion(out / "confusion_matrix.png", matrix, classes)


def _plot_confusion(path: Path, matrix: np.ndarray, classes: list[str]) -> None:
    """Counts and row-normalised shares side by side."""
    n = len(classes)
    side = 2.5 + 0.45 * n
    with png_figure(path, size=(2 * side, side), panels=2) as axes:
        normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        for ax, values, title in (
            (axes[0], matrix, "counts"),
            (axes[1], normalised, "share of actual"),
        ):
            ax.imshow(values, cmap="Blues")
            ax.set_title(title)
            ax.set_xticks(range(n), classes, rotation=90)
            ax.set_yticks(range(n), classes)
            ax.set_xlabel("predicted")
            ax.set_ylabel("actual")
            top = values.max() or 1
            for (r, c), v in np.ndenumerate(values):
                text = f"{v:d}" if values is matrix else f"{v:.2f}"
                ax.text(
                    c,
                    r,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > top / 2 else "black",
                )


def _plot_top_losses(path: Path, top_losses: list[dict], images: list[np.ndarray]) -> None:
    """The worst-predicted images with actual / predicted / probability / loss."""
    cols = 3
    rows = max(1, -(-len(images) // cols))
    with png_figure(path, size=(4 * cols, 3.6 * rows), panels=rows * cols) as axes:
        for ax in axes:
            ax.axis("off")
        for ax, item, pixels in zip(axes, top_losses, images, strict=False):
            ax.imshow(pixels)
            ax.set_title(
                f"{item['actual']} → {item['predicted']}\n"
                f"p={item['prob']:.2f} loss={item['loss']:.2f}",
                fontsize=9,
            )


def write_report(path: Path, result: dict) -> None:
    """``report.md``: the numbers and links to the plots, readable on GitHub."""
    tta = result.get("error_rate_tta")
    columns = [(k, k) for k in ("class", "precision", "recall", "f1", "support")]
    lines = [
        f"# Evaluation of {result['run']}",
        "",
        f"{result['images']} images: error rate **{result['error_rate']:.4f}**, "
        f"accuracy {result['accuracy']:.4f}"
        + ("" if tta is None else f"; with test-time augmentation {tta:.4f}"),
        "",
        *markdown_table(result["per_class"], columns),
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "Top losses (actual → predicted):",
        "",
        "![top losses](top_losses.png)",
        "",
        *_trust_lines(result),
        *_target_lines(result),
        *(group_lines(result["groups"]) if "groups" in result else []),
    ]
    atomic_write_text(path, "\n".join(lines))


def _target_lines(result: dict) -> list[str]:
    """The report's section on a multi-target model's other targets."""
    if "targets" not in result:
        return []
    lines = ["## Other targets", ""]
    for name, found in result["targets"].items():
        if "mae" in found:
            mae, rmse = found["mae"], found["rmse"]
            numbers = "no value" if mae is None else f"MAE **{mae:.4f}**, RMSE {rmse:.4f}"
            lines += [f"- `{name}` ({found['images']} images): {numbers}", ""]
            continue
        rate = found["error_rate"]
        numbers = "no value" if rate is None else f"error rate **{rate:.4f}**"
        lines += [
            f"- `{name}` ({found['images']} images): {numbers}; "
            f"[confusion matrix]({name}/confusion_matrix.png), "
            f"[per class]({name}/per_class.csv)",
            "",
        ]
    return lines


def _trust_lines(result: dict) -> list[str]:
    """The report's section on calibration, verdicts and out-of-scope photos."""
    c = result["calibration"]
    lines = [
        "## Trust",
        "",
        f"Temperature {c['temperature']:.3f}"
        + ("" if result["trust_fitted"] else " (this bundle has no trust statistics)")
        + ":",
        "",
        "| | before | after |",
        "| --- | --- | --- |",
        *(f"| {name} | {c[name][0]:.4f} | {c[name][1]:.4f} |" for name in ("nll", "brier", "ece")),
        "",
        "Verdicts: " + ", ".join(f"{k} {v}" for k, v in result["verdicts"].items()) + ".",
        "",
        "![reliability](reliability.png) ![selective prediction](selective.png)",
        "",
    ]
    if "ood" in result:
        o = result["ood"]
        lines += [
            f"Out of scope ({o['folder']}, {o['out_of_scope_images']} photos against "
            f"{o['in_scope_images']} in scope): AUROC {o['auroc']:.4f}, false-positive rate "
            f"at 95% in-scope recall {o['fpr_at_95_recall']:.4f}; flagged at the bundle's "
            f"threshold: {o['flagged_out_of_scope']:.1%} of them, "
            f"{o['flagged_in_scope']:.1%} of the in-scope photos.",
            "",
        ]
    return lines
