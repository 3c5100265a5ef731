"""Multi-target models: the label plus metadata columns, trained, resumed and read back by
every command; missing values; old single-target bundles."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
from pathlib import Path

import cli_process
import numpy as np
import pytest
import torch
from conftest import kill_after_epoch
from test_serve import CHROMIUM

from cropdoc.config import TrainConfig
from cropdoc.contract import targets as multi
from cropdoc.core.errors import UserError
from cropdoc.data.cache import Cache
from cropdoc.engine.records import METRICS
from cropdoc.model import multihead
from cropdoc.testing import TINY_TRAINING

THREE = dict(targets="label,variety,age", regress="age", target_weights="1,0.5,0.5")


def _manifest(demo: Path, out: Path) -> Path:
    """A CSV manifest of the demo photos with variety missing on every fourth row and age
    on every fifth."""
    with open(demo / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lines = ["path,label,variety,age"]
    for n, row in enumerate(rows):
        path = demo / "train_images" / row["label"] / row["image_id"]
        variety = "" if n % 4 == 0 else row["variety"]
        age = "" if n % 5 == 0 else row["age"]
        lines.append(f"{path},{row['label']},{variety},{age}")
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="module")
def multi_run(demo_data, tmp_path_factory) -> Path:
    """test_resnet with three targets (disease, variety, age by regression) on the small
    demo data, some values missing: two epochs at 64 px."""
    from cropdoc.engine.trainer import train

    root = tmp_path_factory.mktemp("multi")
    (root / "data").mkdir()
    manifest = _manifest(demo_data, root / "data" / "manifest.csv")
    config = TrainConfig(
        **TINY_TRAINING,
        data=str(manifest),
        cache=str(root / "cache"),
        out=str(root / "run"),
        **THREE,
    )
    train(config)
    return root / "run"


def test_three_targets_train_and_record_each_metric(multi_run):
    with open(multi_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    at = METRICS.index("accuracy") + 1  # each other target's metric after the accuracy
    assert list(rows[0]) == [*METRICS[:at], "variety_error_rate", "age_mae", *METRICS[at:]]
    assert len(rows) == 2
    assert all(0 <= float(r["variety_error_rate"]) <= 1 and float(r["age_mae"]) > 0 for r in rows)
    meta = json.loads((multi_run / "model.json").read_text())
    names = [(t["name"], t["kind"], t["weight"]) for t in meta["targets"]]
    assert names == [("label", "class", 1.0), ("variety", "class", 0.5), ("age", "regress", 0.5)]
    age = meta["targets"][2]
    with open(multi_run.parent / "data" / "manifest.csv", newline="") as f:
        ages = [float(r["age"]) for r in csv.DictReader(f) if r["age"]]
    assert min(ages) < age["mean"] < max(ages) and 0 < age["std"] < max(ages) - min(ages)
    assert meta["targets"][1]["classes"] == sorted(meta["targets"][1]["classes"])
    assert {"variety_error_rate", "age_mae"} <= set(meta["metrics"])


def test_missing_values_count_in_no_loss_or_metric(multi_run):
    from cropdoc.contract.bundle import BundleMeta

    config = TrainConfig.from_yaml(multi_run / "config.yaml")
    meta = BundleMeta.read(multi_run)
    cache = Cache(config.cache)
    labels = np.array([list(meta.classes).index(e.label) for e in cache.images])
    values = multi.values(list(meta.targets), cache, labels)
    blank_variety = [i for i, e in enumerate(cache.images) if not e.meta.get("variety")]
    blank_age = [i for i, e in enumerate(cache.images) if not e.meta.get("age")]
    assert blank_variety and blank_age
    assert np.isnan(values[blank_variety, 1]).all() and np.isnan(values[blank_age, 2]).all()
    assert not np.isnan(values[:, 0]).any()

    torch.manual_seed(0)
    logits = torch.randn(len(values), meta.outputs)
    y = torch.from_numpy(values)
    targets = list(meta.targets)
    whole = multihead.loss(logits, y, targets)
    # the same loss by hand over the rows that have each value
    present = [~torch.isnan(y[:, c]) for c in range(3)]
    label = torch.nn.functional.cross_entropy(logits[:, :10], y[:, 0].long())
    kept = present[1]
    variety = torch.nn.functional.cross_entropy(logits[kept, 10:18], y[kept, 1].long())
    kept = present[2]
    scaled = (y[kept, 2] - targets[2].mean) / targets[2].std
    age = (logits[kept, 18] - scaled).abs().mean()
    assert torch.isclose(whole, label + 0.5 * variety + 0.5 * age, atol=1e-5)
    sums = multihead.metric_sums(logits, y, targets)
    assert sums[1] == len(values) and sums[3] == int(present[1].sum())
    assert sums[5] == int(present[2].sum())
    ages = logits[present[2], 18] * targets[2].std + targets[2].mean
    assert sums[4] == pytest.approx(float((ages - y[present[2], 2]).abs().sum()), rel=1e-5)
    # a batch in which nobody has an age still trains the other targets
    no_age = y.clone()
    no_age[:, 2] = float("nan")
    assert torch.isfinite(multihead.loss(logits, no_age, targets))


def test_score_writes_every_target(multi_run, demo_data, tmp_path):
    """cropdoc score's shards hold each target's answer, as predict gives it."""
    import pyarrow.parquet as pq

    from cropdoc.inference.predict import predict
    from cropdoc.scale.engines import Job
    from cropdoc.scale.score import score

    photos = demo_data / "test_images"
    score(Job((str(multi_run),), top_k=2), [photos], tmp_path / "scores", workers=1)
    table = pq.read_table(tmp_path / "scores").to_pydict()
    found = predict([multi_run], [photos])
    assert table["path"] == found.paths and len(found.paths) == 10
    varieties, ages = found.labels("variety"), found.answers["age"]
    assert table["variety"] == varieties and table["label"] == found.labels()
    assert np.allclose(table["variety_prob"], found.answers["variety"].max(1), atol=1e-6)
    assert np.allclose(table["age"], ages, atol=1e-4)


def test_predict_evaluate_submission_and_explain_per_target(multi_run, demo_data, tmp_path):
    from cropdoc import evaluate, explain
    from cropdoc.inference.predict import predict, submission
    from cropdoc.inference.predictions import write_predictions

    photos = sorted((demo_data / "test_images").glob("*.jpg"))[:4]
    found = predict([multi_run], photos)
    assert [t.name for t in found.others] == ["variety", "age"]
    assert found.answers["variety"].shape == (4, 8)
    assert np.allclose(found.answers["variety"].sum(1), 1, atol=1e-5)
    rows = found.top(2)
    assert rows[0]["targets"]["variety"]["label"] in found.others[0].classes
    assert len(rows[0]["targets"]["variety"]["top"]) == 2
    assert isinstance(rows[0]["targets"]["age"]["value"], float)
    out = write_predictions(found, tmp_path / "preds.csv", 2)
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert {"variety", "variety_prob", "variety_2", "variety_prob_2", "age"} <= set(table[0])
    assert table[1]["variety"] == rows[1]["targets"]["variety"]["label"]
    assert float(table[1]["age"]) == pytest.approx(rows[1]["targets"]["age"]["value"], abs=1e-3)

    sample = demo_data / "sample_submission.csv"
    images = demo_data / "test_images"
    written = submission([multi_run], sample, images, tmp_path / "s.csv", "variety")
    lines = written.read_text().splitlines()
    assert lines[0] == "image_id,variety"
    assert all(line.split(",")[1] in found.others[0].classes for line in lines[1:])
    with pytest.raises(UserError, match="does not answer 'colour'"):
        submission([multi_run], sample, images, tmp_path / "x.csv", "colour")

    result = evaluate(multi_run, out=tmp_path / "evaluation")
    variety, age = result["targets"]["variety"], result["targets"]["age"]
    assert 0 <= variety["error_rate"] <= 1 and np.array(variety["confusion_matrix"]).shape == (8, 8)
    assert sum(map(sum, variety["confusion_matrix"])) == variety["images"] < result["images"]
    assert age["mae"] > 0 and age["images"] < result["images"]
    assert (tmp_path / "evaluation" / "variety" / "confusion_matrix.png").stat().st_size > 0
    assert "`variety`" in (tmp_path / "evaluation" / "report.md").read_text()

    items = explain(multi_run, photos[:1], head="variety")
    assert items[0].target in found.others[0].classes
    assert items[0].heatmap.shape == items[0].image.shape[:2]
    with pytest.raises(UserError, match="classification target"):
        explain(multi_run, photos[:1], head="age")


def test_onnx_has_one_output_per_target_and_the_same_answers(multi_run, demo_data, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from cropdoc.inference.export import export_onnx
    from cropdoc.inference.onnx_runtime import predict_onnx
    from cropdoc.inference.predict import predict

    result = export_onnx(multi_run, tmp_path / "model.onnx")
    outputs = [o.name for o in onnx.load(result["onnx"]).graph.output]
    assert outputs == ["logits", "ood_score", "logits_variety", "value_age"]
    for check in result["parity"]:
        assert check["max_abs_diff"] < 1e-4 and max(check["targets"].values()) < 1e-3
    photos = sorted((demo_data / "test_images").glob("*.jpg"))
    a, b = predict([multi_run], photos), predict_onnx(tmp_path / "model.onnx", photos)
    assert np.allclose(a.probs, b.probs, atol=1e-4)
    assert np.allclose(a.answers["variety"], b.answers["variety"], atol=1e-4)
    assert np.allclose(a.answers["age"], b.answers["age"], atol=1e-2)


def test_ensembles_average_each_target(multi_run, trained_run, demo_data, tmp_path):
    from cropdoc.inference.predict import predict

    twin = tmp_path / "twin"
    shutil.copytree(multi_run, twin, ignore=shutil.ignore_patterns("checkpoint", "evaluation"))
    photos = sorted((demo_data / "test_images").glob("*.jpg"))[:3]
    alone = predict([multi_run], photos)
    both = predict([multi_run, twin], photos, weights=[2.0, 1.0])
    assert np.allclose(alone.answers["variety"], both.answers["variety"], atol=1e-6)
    assert np.allclose(alone.answers["age"], both.answers["age"], atol=1e-4)
    with pytest.raises(UserError, match="other targets .*label, not label, variety, age"):
        predict([multi_run, trained_run], photos)  # a disease-only model


@pytest.mark.slow
@pytest.mark.parametrize(
    ("targets", "metrics"),
    [
        ("label,variety", ["variety_error_rate"]),
        ("label,variety,age --regress age", ["variety_error_rate", "age_mae"]),
    ],
)
def test_multi_target_runs_resume_after_a_kill(demo_data, tmp_path, targets, metrics):
    options = "--arch test_resnet --no-pretrained --item-size 64 --size 64 --workers 1 --bs 8"
    options += f" --epochs 3 --freeze-epochs 1 --lr 0.01 --targets {targets}"
    args = ["train", demo_data, *options.split(), "--cache", tmp_path / "cache"]
    run = tmp_path / "killed"
    done = kill_after_epoch(args, run)
    assert 1 <= done < 4, "the run finished before it was killed"
    resumed = cli_process.run("train", "--resume", run, "--json", check=True)
    best = json.loads(resumed.stdout)["best"]
    assert json.loads(resumed.stdout)["epochs"] == 4 and set(metrics) <= set(best)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    assert all(float(r[m]) >= 0 for r in rows for m in metrics)
    from cropdoc.inference.predict import predict

    found = predict([run], sorted((demo_data / "test_images").glob("*.jpg"))[:2])
    assert [t.name for t in found.others] == targets.split()[0].split(",")[1:]


def test_single_target_runs_and_old_bundles_are_as_before(trained_run, demo_data, tmp_path):
    from cropdoc.inference.predict import predict

    with open(trained_run / "metrics.csv", newline="") as f:
        columns = next(csv.reader(f))
    assert not any(c.endswith(("_mae", "_error_rate")) for c in columns)
    meta = json.loads((trained_run / "model.json").read_text())
    assert meta["targets"] == []
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.safetensors", "trust.safetensors"):
        shutil.copy(trained_run / name, old / name)
    del meta["targets"]  # a bundle written before multi-target models
    (old / "model.json").write_text(json.dumps(meta))
    photos = sorted((demo_data / "test_images").glob("*.jpg"))[:5]
    new, before = predict([trained_run], photos), predict([old], photos)
    assert np.array_equal(new.probs, before.probs) and before.others == ()
    assert "targets" not in before.top(3)[0]


def test_target_settings_refused_in_one_line(multi_run, demo_data, tiny_config):
    from cropdoc.engine.trainer import Trainer

    cases = [
        (dict(targets="variety,label"), "first target is the photo's label"),
        (dict(targets="label,variety,variety"), "names a target twice"),
        (dict(targets="label,variety", target_weights="1"), "give 2 numbers"),
        (dict(regress="label"), "classification target"),
        (dict(targets="label,variety", best_target="age"), "not one of label, variety"),
        (dict(targets="label,variety", tile=64), "does not work with --tile"),
        (dict(regress_loss="huber"), "--regress-loss"),
    ]
    for settings, message in cases:
        with pytest.raises(UserError, match=message):
            tiny_config(**settings).checked()
    with pytest.raises(UserError, match="metadata columns are age, variety"):
        Trainer(tiny_config(targets="label,colour"))
    with pytest.raises(UserError, match=r"is a regression but .* has '\w+'"):
        Trainer(tiny_config(targets="label,variety", regress="variety"))


def test_demo_varieties_and_ages_show_in_the_leaves():
    from cropdoc.data.demo import draw_leaf_photo

    def leaf_pixels(variety: str, age: int) -> int:
        image, _ = draw_leaf_photo("normal", np.random.default_rng(3), variety, age)
        r, g, b = (image[..., c].astype(int) for c in range(3))
        return int(((g - r > 30) & (g - b > 50)).sum())

    narrow, wide = leaf_pixels("ADT45", 60), leaf_pixels("Ponni", 60)
    young, old = leaf_pixels("ADT45", 45), leaf_pixels("ADT45", 82)
    assert wide > 1.4 * narrow
    assert old > 1.1 * young
    tinted, _ = draw_leaf_photo("normal", np.random.default_rng(3), "KarnatakaPonni", 60)
    plain, _ = draw_leaf_photo("normal", np.random.default_rng(3), "ADT45", 60)
    leaf = (plain[..., 1].astype(int) - plain[..., 0] > 30) & (tinted != plain).any(-1)
    change = tinted[leaf].astype(int) - plain[leaf]  # the same blades, another shade
    assert change[:, 0].mean() > 10 and change[:, 2].mean() < -5


@pytest.fixture(scope="module")
def multi_server(multi_run):
    from test_serve import Server

    running = Server(multi_run)
    yield running
    running.stop()


@pytest.mark.slow
def test_serve_answers_each_target(multi_server, demo_data):
    from test_serve import _multipart

    photo = sorted((demo_data / "test_images").glob("*.jpg"))[0]
    status, result = multi_server.json("POST", "/predict", *_multipart(photo.read_bytes()))
    assert status == 200 and set(result["targets"]) == {"variety", "age"}
    variety = result["targets"]["variety"]
    assert variety["label"] == variety["top"][0]["label"] and len(variety["top"]) == 3
    assert isinstance(result["targets"]["age"]["value"], float)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium")
def test_serve_page_shows_each_target(multi_server, demo_data):
    from playwright.sync_api import sync_playwright
    from test_serve import _multipart

    photo = sorted((demo_data / "test_images").glob("*.jpg"))[0]
    result = multi_server.json("POST", "/predict", *_multipart(photo.read_bytes()))[1]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{multi_server.port}/")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#result", state="visible", timeout=60_000)
        terms = [e.inner_text() for e in page.query_selector_all("#targets dt")]
        values = [e.inner_text() for e in page.query_selector_all("#targets dd")]
        browser.close()
    assert terms == ["variety", "age"]
    assert values[0] == (
        f"{result['targets']['variety']['label']} "
        f"({100 * result['targets']['variety']['prob']:.1f}%)"
    )
    assert float(values[1]) == pytest.approx(result["targets"]["age"]["value"], abs=1e-3)


def test_a_multi_target_body_starts_as_the_single_target_one(tiny_config):
    from cropdoc.engine.trainer import Trainer

    single = Trainer(tiny_config()).model.state_dict()
    both = Trainer(tiny_config(targets="label,variety")).model.state_dict()
    body = [k for k in single if not k.startswith("fc.")]
    assert body and all(torch.equal(single[k], both[k]) for k in body)
    assert single["fc.weight"].shape == (10, 96) and both["fc.weight"].shape == (18, 96)


@pytest.mark.slow
def test_regression_values_that_are_not_finite_numbers_are_refused_naming_the_row(
    demo_data, tiny_config, tmp_path, caplog
):
    from cropdoc.engine.trainer import train

    (tmp_path / "data").mkdir()
    manifest = _manifest(demo_data, tmp_path / "data" / "manifest.csv")
    lines = manifest.read_text().splitlines()
    first = lines[2].split(",")  # row 2 has an age (row 1's is missing)
    for bad in ("nan", "inf", "-inf", "1e40", "old"):
        lines[2] = ",".join([*first[:3], bad])
        manifest.write_text("\n".join(lines) + "\n")
        config = tiny_config(data=str(manifest), targets="label,age", regress="age")
        with pytest.raises(UserError, match="give a finite number") as info:
            train(dataclasses.replace(config, out=str(tmp_path / f"run-{bad}")))
        assert first[0] in str(info.value) and repr(bad) in str(info.value)
    # a negative age is kept, and said
    lines[2] = ",".join([*first[:3], "-5"])
    manifest.write_text("\n".join(lines) + "\n")
    from cropdoc.contract.targets import _numbers
    from cropdoc.data.cache import Cache, prepare

    cache = Cache(prepare(manifest, cache=tmp_path / "cache-neg", size=96).cache)
    raw = [e.meta.get("age", "") for e in cache.images]
    with caplog.at_level(logging.INFO, logger="cropdoc"):
        assert -5 in _numbers("age", raw, cache)
    assert "1 negative value(s)" in caplog.text and first[0] in caplog.text
