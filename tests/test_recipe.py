"""recipe paddy-gold: the plan (which models have weights here), its runs on tiny models,
each on its own split, TTA, the weighted ensemble's submission, and a rerun that resumes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cropdoc.evaluation.recipe import PADDY_GOLD, run_recipe

pytestmark = pytest.mark.slow  # trains tiny models in other processes

TINY = dict(pretrained=False, epochs=1, freeze_epochs=0, bs=8, size="64", cache_size=128, workers=1)


def _cropdoc(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cropdoc", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_the_plan_keeps_the_models_whose_weights_are_here(demo_data, tmp_path):
    """Offline with an empty hub cache no model of the recipe can start: one clear line.
    With one model's weights in the hub cache, the plan is that model's run alone."""
    hub = tmp_path / "hub"
    done = _cropdoc("recipe", "paddy-gold", demo_data, "--plan", env={"HF_HUB_CACHE": str(hub)})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "none of the recipe's models has pretrained weights" in done.stderr
    assert done.stderr.count("left out") == 4  # the four architectures, each named once
    planned = _cropdoc("recipe", "paddy-gold", demo_data, "--plan", "--archs", "test_resnet",
                       "--no-pretrained", "--size", "64", "--json")  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    shown = json.loads(planned.stdout)
    assert shown["runs"] == ["test_resnet-squish480-64", "test_resnet-crop640x480-64"]
    assert all(s > 0 for s in shown["estimate_seconds"].values())
    arch = "swin_large_patch4_window7_224.ms_in22k_ft_in1k"
    snapshot = hub / f"models--timm--{arch}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (hub / f"models--timm--{arch}" / "refs").mkdir()
    (hub / f"models--timm--{arch}" / "refs" / "main").write_text("0" * 40)
    code = (
        "import json; from cropdoc.evaluation.recipe import recipe_plan; "
        f"print(json.dumps(recipe_plan('paddy-gold', {str(demo_data)!r})))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub)},
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    runs, weights, sources = json.loads(shown.stdout)
    assert list(runs) == [f"{arch}-crop640x480-224"] and "hub cache" in sources[list(runs)[0]]
    settings = runs[f"{arch}-crop640x480-224"]
    assert (settings["epochs"], settings["freeze_epochs"], settings["lr"]) == (12, 1, 0.01)
    assert (settings["bs"], settings["accum"], settings["min_scale"]) == (32, 2, 0.75)
    assert [w for *_, w in PADDY_GOLD] == [1, 2, 2, 1, 1, 1]  # the ViT runs count twice


def test_recipe_on_tiny_models_trains_ensembles_and_resumes(demo_data, tmp_path, caplog):
    out = tmp_path / "gold"
    settings = {**TINY, "cache": str(tmp_path / "cache")}
    with caplog.at_level("INFO", logger="cropdoc"):
        result = run_recipe("paddy-gold", demo_data, out, ["test_resnet", "test_vit"], settings)
    said = caplog.text
    assert said.index("estimate: about") < said.index("[1/4]")  # the estimate comes first
    runs = result["runs"]
    assert runs == ["test_resnet-squish480-64", "test_resnet-crop640x480-64",
                    "test_vit-squish480-64", "test_vit-crop640x480-64"]  # fmt: skip
    assert [result["weights"][r] for r in runs] == [1, 1, 2, 2]
    seeds = set()
    for row in result["leaderboard"]:
        summary = json.loads((out / row["name"] / "summary.json").read_text())
        config = (out / row["name"] / "config.yaml").read_text()
        assert f"seed: {row['seed']}" in config and summary["epochs"] == 1
        assert 0 <= row["error_rate_tta"] <= 1 and 0 <= row["error_rate"] <= 1
        item = "480x480" if "squish" in row["name"] else "640x480"
        meta = json.loads((out / row["name"] / "model.json").read_text())
        assert "x".join(map(str, meta["item_size"])) == item
        seeds.add(row["seed"])
    assert len(seeds) == 4  # a random validation split per run
    # the submission is the weighted mean of the runs' TTA probabilities, worked out here
    from cropdoc.inference.predict import predict

    with open(demo_data / "sample_submission.csv") as f:
        ids = [row["image_id"] for row in csv.DictReader(f)]
    paths = [demo_data / "test_images" / i for i in ids]
    mean = sum(
        result["weights"][r] * predict([out / r], paths, tta=True).probs for r in runs
    ) / sum(result["weights"].values())
    classes = json.loads((out / runs[0] / "model.json").read_text())["classes"]
    with open(out / "submission.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image_id"] for r in rows] == ids
    assert [r["label"] for r in rows] == [classes[i] for i in np.argmax(mean, 1)]
    assert "test_vit-crop640x480-64" in (out / "recipe.md").read_text()
    # a rerun skips every finished run and writes the same submission
    before = (out / "submission.csv").read_bytes()
    caplog.clear()
    with caplog.at_level("INFO", logger="cropdoc"):
        again = run_recipe("paddy-gold", demo_data, out, ["test_resnet", "test_vit"], settings)
    assert caplog.text.count("finished before, skipped") == 4
    assert (out / "submission.csv").read_bytes() == before
    assert again["leaderboard"] == result["leaderboard"] and (out / "report.md").exists()
