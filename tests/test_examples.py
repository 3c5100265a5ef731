"""The scripts in examples/ run as a user would run them."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).parent.parent / "examples"


def test_the_python_api_example(demo_data, tmp_path):
    command = [sys.executable, str(EXAMPLES / "train_and_predict.py"), str(demo_data)]
    command += ["--arch", "test_resnet", "--epochs", "1", "--size", "64"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "30 labelled photos in 10 classes"
    assert lines[1].startswith("best epoch") and "with test-time augmentation" in lines[2]
    assert len(lines) == 3 + 10  # one verdict per unlabelled test photo
    assert all(
        line.split(": ")[1].split()[0] in ("diagnosis", "uncertain", "out_of_scope")
        for line in lines[3:]
    )


def test_the_kaggle_flow_from_a_downloaded_zip(demo_data, tmp_path):
    archive = tmp_path / "paddy-disease-classification.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(demo_data.rglob("*")):
            if path.is_file() and "masks" not in path.parts:
                z.write(path, path.relative_to(demo_data))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "ARCH": "test_resnet",
        "EPOCHS": "1",
        "SIZE": "64",
        "BS": "8",
        "EXTRA": "--no-pretrained",
    }
    done = subprocess.run(
        ["bash", str(EXAMPLES / "kaggle_flow.sh"), str(archive), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "work" / "submission.csv") as f:
        rows = list(csv.DictReader(f))
    with open(demo_data / "sample_submission.csv") as f:
        expected = [r["image_id"] for r in csv.DictReader(f)]
    assert [r["image_id"] for r in rows] == expected and all(r["label"] for r in rows)
