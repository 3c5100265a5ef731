"""compare: two tiny architectures on the small demo data, a leaderboard, kill and resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import time

import cli_process
import pytest

from cropdoc.core.errors import UserError
from cropdoc.evaluation.compare import pareto_front, parse_override, plan
from cropdoc.model.build import load_bundle

ARCHS = ["test_resnet", "test_vit"]

pytestmark = pytest.mark.slow  # trains or serves a model in other processes


def _command(demo_data, tmp_path, out) -> list[str]:
    return [
        "compare",
        str(demo_data),
        "--archs",
        ",".join(ARCHS),
        "--no-pretrained",
        "--epochs",
        "1",
        "--freeze-epochs",
        "0",
        "--bs",
        "8",
        "--workers",
        "1",
        "--cache",
        str(tmp_path / "cache"),
        "--set",
        "test_vit.size=64",
        "--set",
        "test_vit.item_size=64",
        "--size",
        "96x64",
        "--item-size",
        "96x64",
        "--out",
        str(out),
    ]


def test_compare_kill_between_runs_and_resume(demo_data, tmp_path):
    out = tmp_path / "compare"
    command = _command(demo_data, tmp_path, out)
    first = out / "test_resnet" / "summary.json"
    process = cli_process.start(*command, out=os.devnull, session=True)
    deadline = time.time() + 240
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert first.exists(), "the first run never finished"
    assert not (out / "leaderboard.csv").exists()
    finished_first = json.loads(first.read_text())["finished"]
    done = cli_process.run(*command, "--json")
    assert done.returncode == 0, done.stderr
    assert "test_resnet: finished before, skipped" not in done.stderr  # --json is quiet
    assert json.loads(first.read_text())["finished"] == finished_first  # not trained again
    result = json.loads(done.stdout)
    with open(out / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["arch"] for r in rows) == sorted(ARCHS)
    assert [int(r["rank"]) for r in rows] == [1, 2]
    for row in rows:
        assert all(value != "" for value in row.values()), row
        assert 0 <= float(row["error_rate"]) <= 1
        assert float(row["accuracy"]) == pytest.approx(1 - float(row["error_rate"]), abs=1e-6)
        for key in ("train_seconds", "train_images_per_s", "infer_images_per_s", "latency_ms"):
            assert float(row[key]) > 0, key
        assert float(row["gmacs"]) > 0 and float(row["peak_memory_mb"]) > 0
        model, meta = load_bundle(out / row["arch"])
        params = sum(p.numel() for p in model.parameters())
        assert float(row["params_m"]) == pytest.approx(params / 1e6, abs=1e-3)
        summary = json.loads((out / row["arch"] / "summary.json").read_text())
        assert summary["params"] == params
        assert row["size"] == ("64x64" if row["arch"] == "test_vit" else "96x64")
        assert row["size"] == "x".join(map(str, meta.size))
        assert (out / row["arch"] / "report.md").exists()
    errors = [float(r["error_rate"]) for r in rows]
    assert errors == sorted(errors)
    for name in ("leaderboard.md", "error_vs_latency.png", "learning_curves.png", "report.md"):
        assert (out / name).stat().st_size > 0
    assert [r["arch"] for r in result["leaderboard"]] == [r["arch"] for r in rows]
    # the same compare again only rebuilds the leaderboard
    again = cli_process.run(*command, timeout=120)
    assert again.returncode == 0 and again.stderr.count("finished before, skipped") == 2


def test_plan_settings_precedence_and_overrides(demo_data):
    runs = plan(
        demo_data,
        ["resnet26d", "convnext_tiny"],
        {"epochs": 3},
        {"convnext_tiny": {"size": "256"}},
    )
    # each architecture at its own size (train chooses it), unless a setting says otherwise
    assert runs["resnet26d"]["size"] == runs["resnet26d"]["item_size"] == "auto"
    assert runs["convnext_tiny"]["size"] == "256" and runs["convnext_tiny"]["item_size"] == "auto"
    assert runs["resnet26d"]["epochs"] == runs["convnext_tiny"]["epochs"] == 3
    assert parse_override("convnext_tiny.fb_in22k.bs=32", ["convnext_tiny.fb_in22k"]) == (
        "convnext_tiny.fb_in22k",
        "bs",
        32,
    )
    with pytest.raises(UserError, match="not in --archs"):
        parse_override("vit.size=224", ["resnet26d"])
    with pytest.raises(UserError, match="did you mean 'size'"):
        parse_override("resnet26d.sise=224", ["resnet26d"])
    with pytest.raises(UserError, match="unknown architecture"):
        plan(demo_data, ["resnet26x"], {}, {})


def test_pareto_front():
    rows = [
        {"arch": "a", "latency_ms": 1.0, "error_rate": 0.3},
        {"arch": "b", "latency_ms": 2.0, "error_rate": 0.1},
        {"arch": "c", "latency_ms": 3.0, "error_rate": 0.2},
        {"arch": "d", "latency_ms": 4.0, "error_rate": 0.05},
    ]
    assert [r["arch"] for r in pareto_front(rows)] == ["a", "b", "d"]


@pytest.mark.parametrize("arch", ["resnet26d", "convnext_tiny", "test_resnet", "test_convnext"])
def test_count_at_32_pixels(arch):
    """A batch of one in training mode broke BatchNorm when compare counted the GMACs of
    small inputs."""
    from cropdoc.model.archs import count

    info = count(arch, (32, 32), num_classes=10)
    assert info.input_size == (32, 32) and 0 < info.gmacs < count(arch, (64, 64), 10).gmacs
