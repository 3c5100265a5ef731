"""--track: TensorBoard and MLflow (its default local store) for real, W&B offline."""

from __future__ import annotations

import json
import time

import pytest

from cropdoc.core.errors import UserError
from cropdoc.engine.trainer import resume, train

pytestmark = pytest.mark.slow


def test_tensorboard_and_mlflow_log_settings_metrics_plots_and_the_bundle(
    tiny_config, tmp_path, monkeypatch
):
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)  # MLflow's default store: ./mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    compare = tmp_path / "compare-demo"  # a compare's runs share a group
    compare.mkdir()
    (compare / "compare.json").write_text("{}")
    run = compare / "test_resnet"
    train(tiny_config(track="tensorboard,mlflow", epochs=2, out=str(run)))

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"error_rate", "valid_loss", "train_loss", "lr_body", "lr_head"} <= set(scalars)
    assert [e.step for e in events.Scalars("error_rate")] == [0, 1, 2]  # 1 frozen + 2
    assert "losses" in events.Tags()["images"]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("compare-demo")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "test_resnet" and found.info.status == "FINISHED"
    assert found.data.params["arch"] == "test_resnet"
    history = client.get_metric_history(found.info.run_id, "error_rate")
    assert [m.step for m in history] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "bundle")}
    assert {
        "bundle/model.json",
        "bundle/model.safetensors",
        "bundle/trust.safetensors",
    } <= artifacts
    assert json.loads((run / "tracking.json").read_text())["mlflow"] == found.info.run_id


def test_wandb_offline_and_a_resumed_run_continues_it(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(tiny_config(track="wandb", epochs=1, out=str(run)))
    ids = json.loads((run / "tracking.json").read_text())
    offline = list((run / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
    assert len(offline) == 1
    # offline, W&B writes protobuf records for its later sync (the keys appear verbatim);
    # its service process writes them after finish() returns, so wait for them, bounded
    keys = (b"error_rate", b"valid_loss", b"lr_head", b"run-bundle", b"test_resnet")
    log_file, deadline = next(offline[0].glob("run-*.wandb")), time.monotonic() + 60
    while not all(k in log_file.read_bytes() for k in keys) and time.monotonic() < deadline:
        time.sleep(0.2)
    log = log_file.read_bytes()
    for key in keys:
        assert key in log, key
    assert list((offline[0] / "files" / "media").rglob("losses*.png"))
    resume(run)  # nothing left to train: the same W&B run is opened again and closed
    assert json.loads((run / "tracking.json").read_text())["wandb"] == ids["wandb"]


def test_an_unknown_tracker_is_one_line(tiny_config):
    with pytest.raises(UserError, match="--track neptune: choose from tensorboard, mlflow, wandb"):
        tiny_config(track="neptune").checked()
