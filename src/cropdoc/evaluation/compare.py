"""``compare``: train several architectures on the same split and rank them on a leaderboard.

Every architecture trains in a process of its own (so its peak memory is its own) into a run
folder inside the compare folder. A compare that stops resumes where it was: finished runs
are skipped, an interrupted one continues from its checkpoint. The leaderboard ranks the runs
by error rate, with training time, inference speed, size and compute beside it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cropdoc.config import TrainConfig
from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_json, atomic_write_text
from cropdoc.core.progress import say, show_output, showing
from cropdoc.engine.report import markdown_table

LEADERBOARD = [
    ("rank", "rank"),
    ("name", "run"),
    ("arch", "architecture"),
    ("error_rate", "error rate"),
    ("accuracy", "accuracy"),
    ("valid_loss", "valid loss"),
    ("train_seconds", "training s"),
    ("train_images_per_s", "training img/s"),
    ("infer_images_per_s", "inference img/s (bs 64)"),
    ("latency_ms", "latency ms (bs 1)"),
    ("params_m", "params (M)"),
    ("gmacs", "GMACs"),
    ("peak_memory_mb", "peak memory MB"),
    ("size", "size"),
    ("epochs", "epochs"),
    ("lr", "lr"),
    ("precision", "precision"),
    ("device", "device"),
]


def parse_override(text: str, archs: list[str]) -> tuple[str, str, object]:
    """``"convnext_tiny.size=224"`` -> ("convnext_tiny", "size", "224"), value typed like
    the setting."""
    target, sep, value = text.partition("=")
    arch, dot, key = target.rpartition(".")
    if not sep or not dot:
        raise UserError(f"--set {text!r} is not ARCH.SETTING=VALUE (e.g. convnext_tiny.size=224)")
    if arch not in archs:
        raise UserError(f"--set {text!r} names {arch!r}, which is not in --archs")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if key not in fields:
        TrainConfig.from_dict({key: value})  # raises with a suggestion
    default = getattr(TrainConfig(), key)
    if isinstance(default, bool):
        return arch, key, value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int | float) and key != "lr":
        try:
            return arch, key, type(default)(value)
        except ValueError:
            raise UserError(f"--set {text!r}: {key} must be a number") from None
    return arch, key, value


def plan(
    data: str | os.PathLike,
    archs: list[str],
    settings: dict | None = None,
    overrides: dict[str, dict] | None = None,
    sizes: list[str] | None = None,
) -> dict[str, dict]:
    """The settings of every run, by run name: the family's, then ``settings``, then the
    arch's own. With ``sizes`` (one architecture), one run per size, named ``ARCH@SIZE``,
    each decoded into a cache large enough for it."""
    from cropdoc.config import parse_size
    from cropdoc.model.archs import check_arch

    if not archs:
        raise UserError("give the architectures to compare with --archs A,B,C")
    if len(set(archs)) != len(archs):
        raise UserError("--archs names an architecture twice")
    if sizes and len(archs) != 1:
        raise UserError("--sizes sweeps one architecture: give one in --archs")
    if sizes and (settings or {}).get("cache"):
        raise UserError("--sizes decodes each size into its own cache: leave out --cache")
    runs = {}
    for arch in archs:
        check_arch(arch)
        values = {
            **(settings or {}),
            **(overrides or {}).get(arch, {}),
            "arch": arch,
            "data": str(Path(data).resolve()),
            "out": "",
        }
        if not sizes:
            runs[arch] = dataclasses.asdict(TrainConfig.from_dict(values))
        for size in sizes or []:
            longest = max(parse_size(size))
            cache_size = max(int(values.get("cache_size", 256)), longest)
            sized = {**values, "size": size, "item_size": size, "cache_size": cache_size}
            runs[f"{arch}@{size}"] = dataclasses.asdict(TrainConfig.from_dict(sized))
    return runs


def run_name(name: str) -> str:
    """The run folder's name for a run (hub names have slashes)."""
    return name.replace("/", "_").replace(":", "_")


def compare(
    data: str | os.PathLike,
    archs: list[str],
    settings: dict | None = None,
    overrides: dict[str, dict] | None = None,
    out: str | os.PathLike | None = None,
    sizes: list[str] | None = None,
) -> dict:
    """Train every architecture in ``archs`` on ``data`` and write the leaderboard.

    Args:
        settings: training settings for all runs (``TrainConfig`` fields).
        overrides: settings per architecture, e.g. ``{"convnext_tiny": {"size": "224"}}``.
        out: the compare folder (default ``runs/compare-DATA``); running the same compare
            again continues it.
        sizes: a resolution study: one architecture at each of these sizes.
    """
    runs = plan(data, archs, settings, overrides, sizes)
    folder = Path(out) if out else Path("runs") / f"compare-{Path(data).resolve().name}"
    rows = train_runs(folder, runs, {"archs": archs})
    rows.sort(key=lambda r: (r["error_rate"], r["valid_loss"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        row.setdefault("name", row["arch"])  # summaries written before runs had names
    files = write_leaderboard(folder, rows)
    return {"compare": str(folder), "leaderboard": rows, "files": files}


def train_runs(folder: Path, runs: dict[str, dict], about: dict) -> list[dict]:
    """Train every run of ``runs`` (name -> ``TrainConfig`` fields) into ``folder``, each in
    a process of its own, skipping finished runs; return their summaries in plan order.
    ``about`` is kept in ``compare.json`` beside the plan, which a rerun must match."""
    saved = folder / "compare.json"
    if saved.exists():
        if json.loads(saved.read_text(encoding="utf-8")).get("plan") != runs:
            raise UserError(
                f"{folder} holds a compare with other settings: continue it with the same "
                "options, or choose another --out"
            )
    else:
        atomic_write_json(saved, {**about, "plan": runs})
    for n, name in enumerate(runs, start=1):
        if (folder / run_name(name) / "summary.json").exists():
            say(f"[{n}/{len(runs)}] {name}: finished before, skipped")
            continue
        say(f"[{n}/{len(runs)}] {name}")
        command = [sys.executable, "-m", "cropdoc.evaluation.compare", str(folder), name]
        code = subprocess.call(command + ([] if showing() else ["--quiet"]))
        if code != 0:
            raise UserError(
                f"training {name} stopped (exit code {code}); run the same command again "
                "to continue from there"
            )
    return [
        json.loads((folder / run_name(name) / "summary.json").read_text(encoding="utf-8"))
        for name in runs
    ]


def write_leaderboard(folder: Path, rows: list[dict]) -> dict:
    """leaderboard.csv / .md, the two plots and report.md; returns their paths."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, [k for k, _ in LEADERBOARD], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k, _ in LEADERBOARD} for row in rows)
    atomic_write_text(folder / "leaderboard.csv", buffer.getvalue())
    table = markdown_table(rows, LEADERBOARD)
    atomic_write_text(folder / "leaderboard.md", "\n".join(table) + "\n")
    _plot_front(folder / "error_vs_latency.png", rows)
    _plot_curves(folder / "learning_curves.png", folder, rows)
    lines = [
        f"# Compare: {', '.join(r['name'] for r in rows)}",
        "",
        f"Machine: {rows[0]['machine']}.",
        "",
        *table,
        "",
        "![error rate against latency](error_vs_latency.png)",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "Runs: " + ", ".join(f"[{r['name']}]({run_name(r['name'])}/report.md)" for r in rows),
        "",
    ]
    atomic_write_text(folder / "report.md", "\n".join(lines))
    names = ("leaderboard.csv", "leaderboard.md", "error_vs_latency.png", "learning_curves.png")
    return {name: str(folder / name) for name in (*names, "report.md")}


def pareto_front(rows: list[dict]) -> list[dict]:
    """The runs no other run beats on both error rate and latency, fastest first."""
    front: list[dict] = []
    for row in sorted(rows, key=lambda r: (r["latency_ms"], r["error_rate"])):
        if not front or row["error_rate"] < front[-1]["error_rate"]:
            front.append(row)
    return front


def _plot_front(path: Path, rows: list[dict]) -> None:
    from cropdoc.core.plots import png_figure

    with png_figure(path) as ax:
        for row in rows:
            ax.scatter(row["latency_ms"], row["error_rate"], s=30)
            ax.annotate(row["name"], (row["latency_ms"], row["error_rate"]), fontsize=8)
        front = pareto_front(rows)
        ax.step(
            [r["latency_ms"] for r in front],
            [r["error_rate"] for r in front],
            where="post",
            color="gray",
            linestyle="--",
        )
        ax.scatter(
            [r["latency_ms"] for r in front],
            [r["error_rate"] for r in front],
            s=150,
            facecolors="none",
            edgecolors="black",
            label="front (no run is faster and better)",
        )
        ax.set_xlabel("latency at batch 1 (ms)")
        ax.set_ylabel("error rate")
        ax.legend()


def _plot_curves(path: Path, folder: Path, rows: list[dict]) -> None:
    from cropdoc.core.plots import png_figure

    with png_figure(path, size=(10, 4), panels=2) as (loss_ax, error_ax):
        for row in rows:
            with open(folder / run_name(row["name"]) / "metrics.csv", encoding="utf-8") as f:
                epochs = list(csv.DictReader(f))
            x = [int(e["epoch"]) for e in epochs]
            loss_ax.plot(x, [float(e["valid_loss"]) for e in epochs], "o-", label=row["name"])
            error_ax.plot(x, [float(e["error_rate"]) for e in epochs], "o-", label=row["name"])
        loss_ax.set_ylabel("valid loss")
        error_ax.set_ylabel("error rate")
        for ax in (loss_ax, error_ax):
            ax.set_xlabel("epoch")
            ax.legend(fontsize=8)


# -- one run, in its own process ------------------------------------------------------------


def run_one(folder: Path, name: str) -> dict:
    """Train (or resume) the run ``name`` of the compare in ``folder``, measure it, and
    write its ``summary.json``."""
    import torch

    from cropdoc.engine.trainer import resume, train
    from cropdoc.evaluation.speed import inference_speed, peak_memory_mb
    from cropdoc.model.archs import count
    from cropdoc.model.build import load_bundle

    settings = json.loads((folder / "compare.json").read_text(encoding="utf-8"))["plan"][name]
    arch = settings["arch"]
    run = folder / run_name(name)
    if (run / "checkpoint" / "state.json").exists():
        result = resume(run)
    else:
        if run.exists():
            shutil.rmtree(run)  # started, but stopped before its first checkpoint
        result = train(TrainConfig.from_dict({**settings, "out": str(run)}))
    device = torch.device(result["device"])
    peak = peak_memory_mb(device)
    model, meta = load_bundle(run)
    size = meta.size
    speed = inference_speed(model, size, device, result["precision"])
    with open(run / "metrics.csv", encoding="utf-8") as f:
        epochs = list(csv.DictReader(f))
    step_seconds = sum(float(e["train_seconds"]) for e in epochs)
    best = result["best"]
    params = sum(p.numel() for p in model.parameters())
    summary = {
        "name": name,
        "arch": arch,
        "run": str(run),
        "error_rate": best["error_rate"],
        "accuracy": best["accuracy"],
        "valid_loss": best["valid_loss"],
        "best_epoch": best["epoch"],
        "epochs": len(epochs),
        "train_seconds": round(sum(float(e["seconds"]) for e in epochs), 2),
        "train_images_per_s": round(result["train_images"] * len(epochs) / step_seconds, 1),
        **speed,
        "params": params,
        "params_m": round(params / 1e6, 3),
        "gmacs": round(count(arch, size, meta.outputs).gmacs, 4),
        "peak_memory_mb": round(peak, 1),
        "size": "x".join(map(str, size)),
        "lr": float(result["lr"]),
        "precision": result["precision"],
        "device": result["device"],
        "machine": _machine(device),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(run / "summary.json", summary)
    return summary


def _machine(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def _main(argv: list[str]) -> int:
    """``python -m cropdoc.evaluation.compare FOLDER ARCH [--quiet]``: one run of a compare."""
    try:
        show_output("--quiet" not in argv)
        run_one(Path(argv[0]), argv[1])
    except UserError as exc:
        print(f"cropdoc: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
