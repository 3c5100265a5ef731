"""``report.md`` of a run folder: settings, the epochs, the plots and the evaluation, as
Markdown that reads well on GitHub."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from cropdoc.contract.bundle import BundleMeta
from cropdoc.core.files import atomic_write_text


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    """Lines of a Markdown table of ``rows``; ``columns`` are (key, header) pairs."""
    lines = [
        "| " + " | ".join(header for _, header in columns) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |")
    return lines


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "" if value is None else str(value)


def write_run_report(run: str | os.PathLike) -> Path:
    """Write ``RUN/report.md`` from what the run folder holds; returns its path."""
    run = Path(run)
    lines = [f"# Run {run.name}", ""]
    model_json = run / "model.json"
    if model_json.exists():
        meta = BundleMeta.read(run)
        best = meta.metrics
        size = "x".join(str(s) for s in meta.size)
        lines += [
            f"`{meta.arch}` at {size}, {len(meta.classes)} classes. Best epoch "
            f"{best.get('epoch')}: error rate **{best.get('error_rate', float('nan')):.4f}**, "
            f"valid loss {best.get('valid_loss', float('nan')):.4f}.",
            "",
        ]
        for target in meta.others:  # a multi-target model's other answers
            value = best.get(target.metric)
            shown = "" if value is None else f": {target.metric} {value:.4f} at that epoch"
            kind = f"{len(target.classes)} classes" if target.kind == "class" else "regression"
            lines.append(f"- also `{target.name}` ({kind}){shown}")
        if meta.others:
            lines.append("")
    metrics = run / "metrics.csv"
    if metrics.exists():
        with open(metrics, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        columns = [(k, k) for k in (rows[0].keys() if rows else [])]
        lines += ["## Epochs", "", *markdown_table(rows, columns), ""]
    for name, title in (("losses.png", "Losses"), ("lr_find.png", "Learning-rate finder")):
        if (run / name).exists():
            lines += [f"## {title}", "", f"![{title.lower()}]({name})", ""]
    evaluation = run / "evaluation" / "report.md"
    if evaluation.exists():
        lines += ["## Evaluation", "", "See [evaluation/report.md](evaluation/report.md).", ""]
    if (run / "config.yaml").exists():
        config = (run / "config.yaml").read_text(encoding="utf-8")
        lines += ["## Settings", "", "```yaml", config.rstrip(), "```", ""]
    return atomic_write_text(run / "report.md", "\n".join(lines))
