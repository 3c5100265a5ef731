"""``evaluate --group-by COLUMN``: error, calibration and out-of-scope rate per group of a
manifest column (site, date, phone, lighting), and the worst group's gap to the whole: the
drop from the photos a model was made on to the field's."""

from __future__ import annotations

import numpy as np

from cropdoc.contract.calibration import ece


def group_report(
    column: str, groups: np.ndarray, probs: np.ndarray, targets: np.ndarray, ood: np.ndarray
) -> dict:
    """One row per group (images, error rate, ECE, out-of-scope share), largest error
    first; the error over every image; the worst group and its gap to that error."""
    wrong = probs.argmax(1) != targets
    rows = []
    for name in sorted(set(groups.tolist())):
        members = groups == name
        rows.append(
            {
                "group": name,
                "images": int(members.sum()),
                "error_rate": float(wrong[members].mean()),
                "ece": ece(probs[members], targets[members]),
                "out_of_scope": float((ood[members] > 1.0).mean()),
            }
        )
    rows.sort(key=lambda r: (-r["error_rate"], r["group"]))
    overall = float(wrong.mean())
    return {
        "column": column,
        "error_rate": overall,
        "mean_group_error": float(np.mean([r["error_rate"] for r in rows])),
        "worst": rows[0]["group"],
        "worst_gap": rows[0]["error_rate"] - overall,
        "groups": rows,
    }


def group_lines(found: dict) -> list[str]:
    """The report's section on the groups."""
    lines = [
        f"## By {found['column']}",
        "",
        f"Worst group **{found['worst'] or '(none)'}**: error rate "
        f"{found['groups'][0]['error_rate']:.4f}, {found['worst_gap']:+.4f} against "
        f"{found['error_rate']:.4f} over every image (mean of the groups "
        f"{found['mean_group_error']:.4f}).",
        "",
        "| group | images | error rate | ECE | out of scope |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['group'] or '(none)'} | {r['images']} | {r['error_rate']:.4f} | {r['ece']:.4f} "
        f"| {r['out_of_scope']:.4f} |"
        for r in found["groups"]
    ]
    return [*lines, ""]
