"""Where shards are scored: ``local`` (worker processes on this machine) or ``ray`` (actors of
a Ray cluster: one joined with ``--address``, else a local one started for the run).

Both give every worker one model, loaded once, and the same threads per model call, so a
shard's file is the same bytes whichever engine wrote it. At most two shards per worker are
handed out at a time: the photos still to score are never all in memory.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cropdoc.core.errors import UserError
from cropdoc.scale.shards import Shard, score_shard

IN_FLIGHT = 2  # shards handed out per worker at a time
TOKEN_HINT = " (a cluster with token authentication wants RAY_AUTH_MODE=token and its token)"


@dataclass(frozen=True)
class Job:
    """What every worker needs to score shards: the model and the scoring settings."""

    models: tuple[str, ...]
    runtime: str = "torch"
    threads: int = 1  # per model call
    top_k: int = 3
    bs: int = 64
    quality: bool = True
    tta: bool = False
    device: str = "auto"


class ShardWorker:
    """One model, loaded once, scoring shard after shard."""

    def __init__(self, job: Job):
        from cropdoc.inference.scorers import load_scorer

        self.job = job
        models = list(job.models)
        self.scorer = load_scorer(models, job.runtime, None, job.device, job.tta, job.threads)

    def score(self, shard: Shard) -> dict:
        job = self.job
        return score_shard(shard, self.scorer, job.top_k, job.bs, job.quality)


_worker: ShardWorker | None = None  # a local worker process's own


def _start_local(job: Job) -> None:
    global _worker
    _worker = ShardWorker(job)


def _score_local(shard: Shard) -> dict:
    assert _worker is not None, "the worker was not started"
    return _worker.score(shard)


def run_local(job: Job, shards: Iterable[Shard], workers: int) -> Iterator[dict]:
    """Score ``shards`` in ``workers`` processes; yields each shard's summary as it
    finishes."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(workers, _processes(job), _start_local, (job,)) as pool:
            submit = functools.partial(pool.submit, _score_local)
            yield from _bounded(submit, shards, IN_FLIGHT * workers)
    except BrokenProcessPool:
        raise UserError(
            "a score worker stopped (killed, or out of memory?): the shards it finished are "
            "kept; run the same command again to score the rest"
        ) from None


def _processes(job: Job):
    """How the workers start: forked from a server process that imported torch and timm
    once for them all (multiprocessing's forkserver: it holds none of this process's
    threads), where the platform has one; else spawned, each importing them itself."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    heavy = ["torch", "cropdoc.model.timm_import"] if job.runtime == "torch" else []
    context.set_forkserver_preload([*heavy, "cropdoc.inference.scorers", __name__])
    return context


def _bounded(submit: Callable, shards: Iterable[Shard], limit: int) -> Iterator[dict]:
    """Keep at most ``limit`` shards submitted; yield their summaries as they finish."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending = set()
    for shard in shards:
        pending.add(submit(shard))
        if len(pending) >= limit:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from (future.result() for future in done)


def run_ray(job: Job, shards: Iterable[Shard], workers: int, address: str | None) -> Iterator[dict]:
    """Score ``shards`` on ``workers`` Ray actors (``job.threads`` CPUs each), joining the
    cluster at ``address`` (``auto``: the one this machine belongs to) or starting a local
    one."""
    from cropdoc.core.extras import require

    require("ray", "--engine ray")
    import ray

    started = not ray.is_initialized()
    if started:
        connect(address, workers)
    try:
        actor = ray.remote(num_cpus=job.threads)(ShardWorker)
        pool = [actor.remote(job) for _ in range(workers)]
        free, pending = list(pool) * IN_FLIGHT, {}
        for shard in shards:
            if not free:
                yield from _ray_next(ray, pending, free)
            worker = free.pop()
            pending[worker.score.remote(shard)] = worker
        while pending:
            yield from _ray_next(ray, pending, free)
    finally:
        if started:
            ray.shutdown()


def _ray_next(ray, pending: dict, free: list) -> Iterator[dict]:
    """Wait for one shard; give its worker back."""
    (ref,), _ = ray.wait(list(pending), num_returns=1)
    free.append(pending.pop(ref))
    yield ray_get(ref)


def ray_get(refs):
    """``ray.get``, a ``UserError`` raised in a task raised here as it was (one line)."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, UserError):
            raise UserError(str(exc.cause)) from None
        raise


def connect(address: str | None, cpus: int) -> None:
    """Join the Ray cluster at ``address`` (or at ``RAY_ADDRESS``, Ray's own variable), or
    start a local one of ``cpus`` CPUs without a dashboard, even when a cluster runs here
    already (its workers inherit this process's environment, so they import this cropdoc;
    a cluster joined must have cropdoc installed)."""
    import logging

    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
    except ConnectionError as exc:
        hint = "" if os.environ.get("RAY_AUTH_MODE") else TOKEN_HINT
        raise UserError(f"cannot join the Ray cluster at {address}: {exc}{hint}") from None
