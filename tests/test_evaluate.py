"""evaluate: confusion matrix, per-class metrics, top losses, TTA; fixed-size architectures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cropdoc.core.errors import UserError
from cropdoc.evaluation.evaluate import class_metrics, confusion_matrix, evaluate
from cropdoc.inference.predict import predict


def test_class_metrics_match_a_hand_computation():
    actual = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2, 2, 0, 2])
    matrix = confusion_matrix(actual, predicted, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    rows = {r["class"]: r for r in class_metrics(matrix, ["a", "b", "c"])}
    # a: 2 right of 3 predicted a, 2 of 3 actual a
    assert rows["a"]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert rows["a"]["recall"] == pytest.approx(2 / 3, abs=1e-4)
    # b: 1 of 2 predicted, 1 of 2 actual; c: 3 of 4 predicted, 3 of 4 actual
    assert rows["b"]["f1"] == pytest.approx(0.5)
    assert rows["c"]["precision"] == rows["c"]["recall"] == pytest.approx(0.75)
    assert [r["support"] for r in rows.values()] == [3, 2, 4]
    empty = class_metrics(np.zeros((2, 2), int), ["x", "y"])
    assert empty[0] == {"class": "x", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


@pytest.mark.slow
def test_evaluate_the_runs_validation_split(trained_run, tmp_path):
    result = evaluate(trained_run, tta=True, out=tmp_path / "eval")
    meta = json.loads((trained_run / "model.json").read_text())
    matrix = np.array(result["confusion_matrix"])
    assert matrix.sum() == result["images"] == 24  # the run's validation split, once each
    # the same images and transforms as the trainer's validation of the best epoch
    assert result["error_rate"] == pytest.approx(meta["metrics"]["error_rate"])
    assert result["error_rate"] == pytest.approx(1 - np.trace(matrix) / matrix.sum())
    per_class = {r["class"]: r for r in result["per_class"]}
    assert sum(r["support"] for r in per_class.values()) == 24
    # TTA: not worse than the plain evaluation by more than noise (two of 24 images)
    assert result["error_rate_tta"] <= result["error_rate"] + 2 / 24
    assert len(result["top_losses"]) == 9
    losses = [t["loss"] for t in result["top_losses"]]
    assert losses == sorted(losses, reverse=True)
    for name in ("confusion_matrix.png", "top_losses.png", "per_class.csv", "report.md"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    rows = (tmp_path / "eval" / "confusion_matrix.csv").read_text().splitlines()
    assert len(rows) == 1 + len(meta["classes"])


@pytest.mark.slow
def test_evaluate_another_dataset_matches_classes_by_name(trained_run, tmp_path):
    source = trained_run.parent / "data" / "train_images"
    other = tmp_path / "other"
    for label in ("blast", "tungro"):  # a subset of the classes, as class folders
        shutil.copytree(source / label, other / label)
    result = evaluate(trained_run, other, tta=True, out=tmp_path / "eval")
    assert result["images"] == 24
    # evaluate's TTA is predict's: the mean of the same views' probabilities
    predicted = predict([trained_run], [other], tta=True)
    labels = [Path(p).parent.name for p in predicted.paths]
    wrong = [
        predicted.classes[i] != label
        for i, label in zip(predicted.probs.argmax(1), labels, strict=True)
    ]
    assert result["error_rate_tta"] == pytest.approx(np.mean(wrong))
    supports = {r["class"]: r["support"] for r in result["per_class"]}
    assert supports["blast"] == supports["tungro"] == 12 and sum(supports.values()) == 24
    shutil.copytree(source / "blast", other / "smut")
    with pytest.raises(UserError, match="classes the model does not know: smut"):
        evaluate(trained_run, other, out=tmp_path / "eval2")


@pytest.mark.parametrize("arch", ["test_vit", "test_coatnet", "test_maxvit"])
def test_fixed_size_architectures_take_other_sizes_or_say_which(arch):
    import torch

    from cropdoc.model.archs import create_model

    model = create_model(arch, 3, pretrained=False, img_size=(96, 64)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 96, 64)).shape == (2, 3)
    with pytest.raises(UserError, match=r"cannot be built at 100x100.*sizes it takes: 96x96"):
        create_model(arch, 3, pretrained=False, img_size=(100, 100))


def test_evaluate_by_group_reports_each_group_and_the_worst_gap(trained_run, tmp_path):
    """--group-by variety: the validation photos of each variety (from the manifest), each
    group's error equal to predict's answers on those files, the worst group's gap."""
    import csv

    from cropdoc.config import TrainConfig
    from cropdoc.data.cache import open_cache
    from cropdoc.data.loader import split_cache

    result = evaluate(trained_run, out=tmp_path / "eval", group_by="variety")
    config = TrainConfig.from_yaml(trained_run / "config.yaml")
    cache = open_cache(config.data, config.cache, config.cache_size, config.workers)
    valid = split_cache(cache, config.valid_pct, config.seed).valid
    with open(Path(config.data) / "train.csv", newline="") as f:
        variety = {row["image_id"]: row["variety"] for row in csv.DictReader(f)}
    paths = [cache.images[int(i)].path for i in valid]
    answers = predict([trained_run], paths)
    truth = {p: cache.images[int(i)].label for p, i in zip(paths, valid, strict=True)}
    wrong: dict[str, list[bool]] = {}
    for path, label in zip(answers.paths, answers.labels(), strict=True):
        wrong.setdefault(variety[Path(path).name], []).append(label != truth[path])
    found = result["groups"]
    assert found["column"] == "variety" and len(answers.paths) == result["images"] == 24
    assert {r["group"]: r["images"] for r in found["groups"]} == {
        v: len(w) for v, w in wrong.items()
    }
    for row in found["groups"]:
        assert row["error_rate"] == pytest.approx(np.mean(wrong[row["group"]]))
        assert 0 <= row["ece"] <= 1 and 0 <= row["out_of_scope"] <= 1
    errors = [r["error_rate"] for r in found["groups"]]
    assert errors == sorted(errors, reverse=True) and found["worst"] == found["groups"][0]["group"]
    assert found["worst_gap"] == pytest.approx(errors[0] - result["error_rate"])
    assert "## By variety" in (tmp_path / "eval" / "report.md").read_text()
    with pytest.raises(UserError, match=r"no column 'site' to group by \(.*variety"):
        evaluate(trained_run, out=tmp_path / "eval2", group_by="site")


@pytest.mark.slow
def test_split_by_holds_whole_groups_out(tiny_config):
    """train --split-by variety: no variety is in both splits, at least valid_pct of the
    photos validate, the same seed gives the same groups, and the run validates on them;
    a missing column, or --fold too, is one line."""
    from cropdoc.data.cache import open_cache
    from cropdoc.data.loader import group_values, split_cache
    from cropdoc.engine.trainer import train

    config = tiny_config(split_by="variety", valid_pct=0.3)
    cache = open_cache(config.data, config.cache, config.cache_size, config.workers)
    split = split_cache(cache, 0.3, config.seed, split_by="variety")
    trained = set(group_values(cache, split.train, "variety"))
    held = set(group_values(cache, split.valid, "variety"))
    assert held and trained and not trained & held
    assert set(split.targets[split.train]) == set(range(len(split.classes)))  # all train
    assert len(split.valid) >= 0.3 * (len(split.train) + len(split.valid))
    assert (split_cache(cache, 0.3, config.seed, split_by="variety").valid == split.valid).all()
    train(config)
    assert evaluate(config.out, out=Path(config.out) / "eval")["images"] == len(split.valid)
    with pytest.raises(UserError, match="no column 'site'"):
        split_cache(cache, 0.3, 42, split_by="site")
    with pytest.raises(UserError, match="no group can be held out"):  # one image per group
        split_cache(cache, 0.3, 42, split_by="folder")
    with pytest.raises(UserError, match="--split-by and --fold"):
        tiny_config(split_by="variety", fold="1/3").checked()
