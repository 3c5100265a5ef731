"""``doctor --engine ray``: the doctor's K out-of-fold trainings as Ray tasks, one per fold.

Each task opens the prepared cache by its folder and runs the sequential doctor's own fold
(``audit.labels.fold_scores``): a fold scored before is read back without a task
(``out_of_fold``), one interrupted resumes from its checkpoint, so a rerun resumes the
finished folds whichever engine ran them. A
task trains on ``--cpus-per-fold`` torch threads: the sequential doctor on as many threads
(``OMP_NUM_THREADS``) computes the same numbers; on other thread counts float sums run in
another order, which training compounds (probabilities a few hundredths apart).
"""

from __future__ import annotations

from pathlib import Path

from cropdoc.audit.labels import FoldRunner, fold_scores
from cropdoc.config import TrainConfig
from cropdoc.core.errors import UserError
from cropdoc.core.extras import require
from cropdoc.core.progress import say
from cropdoc.data.cache import Cache
from cropdoc.scale.engines import connect, ray_get


def ray_runner(
    address: str | None = None, cpus_per_fold: int = 1, gpus_per_fold: float = 0
) -> FoldRunner:
    """A fold runner (``labels.out_of_fold``) training every fold as a Ray task of
    ``cpus_per_fold`` CPUs and ``gpus_per_fold`` GPUs, on the cluster at ``address`` or a
    local one started for the run."""
    require("ray", "doctor --engine ray")
    if cpus_per_fold < 1 or gpus_per_fold < 0:
        raise UserError("--cpus-per-fold must be at least 1 and --gpus-per-fold at least 0")

    def run(configs: list[TrainConfig], folder: Path, cache: Cache) -> list[dict]:
        import os

        import ray

        started = not ray.is_initialized()
        if started:
            connect(address, os.cpu_count() or 1)
        try:
            task = ray.remote(num_cpus=cpus_per_fold, num_gpus=gpus_per_fold)(_fold_task)
            say(f"doctor: {len(configs)} folds as Ray tasks ({cpus_per_fold} CPU, "
                f"{gpus_per_fold} GPU each)")  # fmt: skip
            where = (str(folder), str(cache.folder), cpus_per_fold)
            refs = [task.remote(config, *where) for config in configs]
            return ray_get(refs)
        finally:
            if started:
                ray.shutdown()

    return run


def _fold_task(config: TrainConfig, folder: str, cache_folder: str, threads: int) -> dict:
    """One fold in a Ray worker: the sequential doctor's ``fold_scores`` on ``threads``
    torch threads (the sequential run on as many threads gives the same numbers)."""
    import torch

    torch.set_num_threads(threads)
    return fold_scores(config, Path(folder), Cache(cache_folder))
