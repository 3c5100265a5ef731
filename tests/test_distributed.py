"""DDP with 2 CPU processes (gloo) launched by torchrun: one run folder, every validation
image counted once, and a 2-process run resumed by 1 process."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cli_process
import pytest

from cropdoc.evaluation.evaluate import evaluate

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]

pytestmark = pytest.mark.slow  # trains or serves a model in other processes


def _train(demo_data, tmp_path, processes: int, *extra) -> list[str]:
    options = "--arch test_resnet --no-pretrained --item-size 64 --size 64 --workers 1 --bs 2"
    return [
        *TORCHRUN,
        str(processes),
        "-m",
        "cropdoc",
        "train",
        str(demo_data),
        *options.split(),
        "--cache",
        str(tmp_path / "cache"),
        *map(str, extra),
    ]


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_two_processes_count_every_validation_image_and_target_once(demo_data, tmp_path):
    """One 2-process run with two targets and every regulariser (mixup, cutmix, the weights'
    average, label smoothing, class weights, balanced sampling): one run folder and one JSON
    document, each validation image and each target counted once, and the bundle the first
    process keeps is the average every process validated."""
    run = tmp_path / "run"
    regularisers = ["--mixup", 0.4, "--cutmix", 1.0, "--ema", 0.9, "--label-smoothing", 0.1]
    regularisers += ["--class-weights", "auto", "--balanced-sampling"]
    command = _train(demo_data, tmp_path, 2, "--epochs", 1, "--targets", "label,variety")
    done = subprocess.run(
        [*command, *map(str, regularisers), "--out", run, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # one JSON document: only the first process prints
    assert result["run"] == str(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]  # one run folder
    rows = _rows(run)
    assert [r["phase"] for r in rows] == ["frozen", "unfrozen"]
    assert [int(r["valid_images"]) for r in rows] == [6, 6]  # not 8 (padded), not 12
    # 6 validation images in batches of 4: one process validates 4, the other 2; their sums
    # must give what one process finds on the same split with the saved model
    best = min(rows, key=lambda r: (float(r["error_rate"]), float(r["valid_loss"])))
    check = evaluate(run, out=tmp_path / "eval")
    assert check["images"] == 6
    assert check["error_rate"] == pytest.approx(float(best["error_rate"]))
    variety = check["targets"]["variety"]
    assert variety["images"] == 6
    assert variety["error_rate"] == pytest.approx(float(best["variety_error_rate"]))
    model_json = json.loads((run / "model.json").read_text())
    assert model_json["metrics"]["valid_loss"] == pytest.approx(float(best["valid_loss"]), abs=1e-6)
    assert model_json["recipe"]["ema"] == 0.9 and model_json["recipe"]["balanced_sampling"]


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants: torchrun starts each worker in a session
    of its own, which outlives a kill of torchrun's group and would go on training."""
    processes = cli_process.parents()
    tree = [pid]
    for each in tree:
        tree += [child for child, (parent, _) in processes.items() if parent == each]
    for sent in (signal.SIGSTOP, signal.SIGKILL):  # stopped first: none writes on alone
        for each in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, sent)


def test_a_two_process_run_resumes_in_one_process(demo_data, tmp_path):
    run = tmp_path / "run"
    command = _train(demo_data, tmp_path, 2, "--epochs", 10, "--freeze-epochs", 0, "--out", run)
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = run / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.2)
    _kill_tree(process.pid)
    process.wait()
    saved = json.loads(state.read_text())
    assert saved["processes"] == 2 and 1 <= saved["epoch"] < 10
    done = cli_process.run("train", "--resume", run, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == list(range(10))
