"""Experiment tracking: ``--track tensorboard,mlflow,wandb`` logs the settings, every epoch's
metrics and learning rates, the plots and the bundle.

- TensorBoard: event files in ``RUN/tensorboard`` (``tensorboard --logdir runs`` shows every
  run; a compare folder's runs sit side by side under it).
- MLflow: the tracking URI of ``$MLFLOW_TRACKING_URI``, else MLflow's own default (a local
  SQLite store, ``./mlflow.db``; MLflow 3 refuses its old ``./mlruns`` file store unless
  ``MLFLOW_ALLOW_FILE_STORE=true``); the experiment is the compare folder's name for a
  compare's runs, else ``cropdoc``; the bundle is logged as artifacts under ``bundle/``.
- Weights & Biases: project ``$WANDB_PROJECT`` or ``cropdoc``, the compare folder as the
  group; ``WANDB_MODE=offline`` works without network. The bundle is a ``model`` artifact.

A resumed run continues the same MLflow and W&B runs (their ids are in ``RUN/tracking.json``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_json

BUNDLE_FILES = ("model.json", "model.safetensors", "trust.safetensors")


class Tracker:
    """The tracking backends of one run; each call goes to all of them."""

    def __init__(self, kinds: tuple[str, ...], run: Path, settings: dict):
        self.run = Path(run)
        self.kinds = kinds
        for kind in self.kinds:
            if importlib.util.find_spec(kind) is None:  # its _open_ imports it
                raise UserError(
                    f"--track {kind} needs the {kind} package: pip install 'cropdoc[track]'"
                )
        compare = self.run.parent / "compare.json"
        self.group = self.run.parent.name if compare.exists() else None
        self.ids = _read_ids(self.run)
        self.backends = [getattr(self, f"_open_{kind}")(settings) for kind in self.kinds]
        if self.kinds:
            atomic_write_json(self.run / "tracking.json", self.ids)

    def log_epoch(self, row: dict, lrs: list[float]) -> None:
        """One epoch's metrics (numbers only) and the learning rates of body and head."""
        values = {k: float(v) for k, v in row.items() if isinstance(v, int | float)}
        values.update({"lr_body": lrs[0], "lr_head": lrs[-1]})
        for backend in self.backends:
            backend["epoch"](values, int(row["epoch"]))

    def finish(self, plots: list[Path]) -> None:
        """The plots and the bundle, then close every backend."""
        plots = [p for p in plots if p.exists()]
        bundle = [self.run / n for n in BUNDLE_FILES if (self.run / n).exists()]
        for backend in self.backends:
            backend["finish"](plots, bundle)
        self.backends = []

    def close(self) -> None:
        """Close without artifacts (a run stopped early)."""
        for backend in self.backends:
            backend["close"]()
        self.backends = []

    # -- backends ----------------------------------------------------------------------------

    def _open_tensorboard(self, settings: dict) -> dict:
        import numpy as np
        from PIL import Image
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.run / "tensorboard"))
        writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in settings.items()))

        def epoch(values: dict, step: int) -> None:
            for key, value in values.items():
                if key != "epoch":
                    writer.add_scalar(key, value, step)
            writer.flush()

        def finish(plots: list[Path], bundle: list[Path]) -> None:
            for plot in plots:
                pixels = np.asarray(Image.open(plot).convert("RGB"))
                writer.add_image(plot.stem, pixels, dataformats="HWC")
            writer.add_text("bundle", "\n".join(f"    {p}" for p in bundle))
            writer.close()

        return {"epoch": epoch, "finish": finish, "close": writer.close}

    def _open_mlflow(self, settings: dict) -> dict:
        import mlflow

        client = mlflow.MlflowClient(
            mlflow.get_tracking_uri()
        )  # $MLFLOW_TRACKING_URI or its default
        experiment = self.group or "cropdoc"
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run_id = self.ids.get("mlflow")
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=self.run.name).info.run_id
            for key, value in settings.items():
                client.log_param(run_id, key, str(value)[:500])
            self.ids["mlflow"] = run_id

        def epoch(values: dict, step: int) -> None:
            for key, value in values.items():
                if key != "epoch":
                    client.log_metric(run_id, key, value, step=step)

        def finish(plots: list[Path], bundle: list[Path]) -> None:
            for plot in plots:
                client.log_artifact(run_id, str(plot), "plots")
            for path in bundle:
                client.log_artifact(run_id, str(path), "bundle")
            client.set_terminated(run_id)

        return {"epoch": epoch, "finish": finish, "close": lambda: None}

    def _open_wandb(self, settings: dict) -> dict:
        import wandb

        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "cropdoc"),
            group=self.group,
            name=self.run.name,
            id=self.ids.get("wandb"),
            resume="allow",
            config=settings,
            dir=str(self.run),
            reinit="create_new",
        )
        self.ids["wandb"] = run.id

        def epoch(values: dict, step: int) -> None:
            run.log(values, step=step)

        def finish(plots: list[Path], bundle: list[Path]) -> None:
            run.log({p.stem: wandb.Image(str(p)) for p in plots})
            artifact = wandb.Artifact(f"{self.run.name}-bundle", type="model")
            for path in bundle:
                artifact.add_file(str(path))
            run.log_artifact(artifact)
            run.finish()

        return {"epoch": epoch, "finish": finish, "close": run.finish}


def _read_ids(run: Path) -> dict:
    import json

    try:
        return json.loads((run / "tracking.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
