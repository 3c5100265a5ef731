"""The judging commands: evaluate, calibrate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cropdoc.cli.options import (
    BsOpt,
    DeviceOpt,
    JsonOpt,
    KeepOpt,
    check_keep,
    emit,
)


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder (or bundle, with DATA).")],
    data: Annotated[
        Path | None, typer.Argument(help="Another labelled dataset (default: the run's split).")
    ] = None,
    tta: Annotated[bool, typer.Option(help="Also with test-time augmentation.")] = False,
    bs: BsOpt = 64,
    device: DeviceOpt = "auto",
    out: Annotated[Path | None, typer.Option(help="Folder (default RUN/evaluation).")] = None,
    ood: Annotated[
        Path | None,
        typer.Option(help="Photos the model should not know: how well they are flagged."),
    ] = None,
    group_by: Annotated[
        str | None,
        typer.Option(help="Error, ECE and out-of-scope rate per group of a column (or folder)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Confusion matrix, per-class metrics, top losses, error rate (and TTA), calibration,
    selective prediction, with --ood the out-of-scope score's AUROC, and with --group-by
    the same per group (site, date, phone) and the worst group's gap."""
    from cropdoc.evaluation.evaluate import evaluate as run_evaluate

    result = run_evaluate(
        run, data, tta=tta, out=out, bs=bs, device=device, ood=ood, group_by=group_by
    )
    lines = [f"{result['images']} images: error rate {result['error_rate']:.4f}"]
    if tta:
        lines[0] += f", with TTA {result['error_rate_tta']:.4f}"
    c = result["calibration"]
    lines.append(
        f"calibration (temperature {c['temperature']:.3f}): NLL {c['nll'][0]:.4f} -> "
        f"{c['nll'][1]:.4f}, ECE {c['ece'][0]:.4f} -> {c['ece'][1]:.4f}; verdicts: "
        + ", ".join(f"{k} {v}" for k, v in result["verdicts"].items())
    )
    if ood is not None:
        o = result["ood"]
        lines.append(
            f"out of scope: AUROC {o['auroc']:.4f}, FPR at 95% recall "
            f"{o['fpr_at_95_recall']:.4f}, flagged {o['flagged_out_of_scope']:.1%} of "
            f"{o['out_of_scope_images']} (and {o['flagged_in_scope']:.1%} in scope)"
        )
    if group_by:
        g = result["groups"]
        lines.append(
            f"by {group_by}: worst {g['worst'] or '(none)'} {g['worst_gap']:+.4f} against "
            f"{g['error_rate']:.4f}; "
            + ", ".join(f"{r['group'] or '(none)'} {r['error_rate']:.4f}" for r in g["groups"])
        )
    lines += [f"{'class':<28} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>7}"]
    lines += [
        f"{r['class']:<28} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>6.3f} "
        f"{r['support']:>7}"
        for r in result["per_class"]
    ]
    for name, found in result.get("targets", {}).items():  # a multi-target model's others
        metric = "mae" if "mae" in found else "error_rate"
        value = found[metric]
        shown = "no value" if value is None else f"{metric.replace('_', ' ')} {value:.4f}"
        lines.append(f"{name}: {shown} ({found['images']} images)")
    lines.append(f"report: {Path(result['files']['confusion_matrix.png']).parent / 'report.md'}")
    emit(result, as_json, "\n".join(lines))


def calibrate(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    data: Annotated[
        Path | None,
        typer.Argument(help="Another labelled folder to calibrate on (default: the run's split)."),
    ] = None,
    keep: KeepOpt = 0.95,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Refit the temperature, the confidence floor and the out-of-scope threshold."""
    from cropdoc.engine.trust import fit_trust

    check_keep(keep)
    result = fit_trust(run, data, keep=keep, device=device)
    emit(
        result,
        as_json,
        f"temperature {result['temperature']:.3f} (ECE {result['ece'][0]:.4f} -> "
        f"{result['ece'][1]:.4f} on {result['images']} images), min confidence "
        f"{result['min_confidence']:.3f}, out-of-scope threshold {result['ood_threshold']:.4f}"
        f"\nwrote {run / 'model.json'}",
    )


COMMANDS = {"evaluate": evaluate, "calibrate": calibrate}
