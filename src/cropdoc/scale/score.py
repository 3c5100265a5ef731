"""``cropdoc score MODEL INPUTS --out DIR``: bulk scoring into parquet shards, resumable.

``DIR/_score.json`` records what is scored (model version, runtime, inputs, shard size,
top-k, quality checks): a rerun with the same settings skips the shards already written
(``shards.is_done``) and scores the rest; other settings are refused in one line. A folder
that holds anything but is not score's own (no ``_score.json``) is refused before a file is
touched: score writes, changes and deletes only the files it makes. At the end
``DIR/_summary.json`` holds the photos, the verdict counts over every shard, the unreadable
photos and the photos listed more than once (scored once), tallied from each shard's
summary (read back from the file of a shard written before).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from cropdoc.core.errors import UserError
from cropdoc.core.extras import require
from cropdoc.core.files import atomic_write_json, remove_temporaries
from cropdoc.core.progress import Progress, say
from cropdoc.data.inputs import Listing
from cropdoc.inference.predictions import file_version
from cropdoc.scale.engines import Job, run_local, run_ray
from cropdoc.scale.shards import Shard, is_done, iter_shards, read_summary

SETTINGS = "_score.json"  # "_": readers of the folder as one parquet dataset skip it
SUMMARY = "_summary.json"
SHARD_SIZE = 1000
LISTED = 20  # unreadable photos named in the printed summary (_summary.json has them all)


def score(
    job: Job,
    inputs: list[str | os.PathLike],
    out: str | os.PathLike,
    engine: str = "local",
    workers: int | None = None,
    shard_size: int = SHARD_SIZE,
    address: str | None = None,
) -> dict:
    """Score every photo of ``inputs`` into ``out``'s shards with ``engine`` (``local`` or
    ``ray``) on ``workers`` workers (default: one per core, ``job.threads`` threads each);
    returns the summary (photos, photos/s of this run, verdict counts, unreadable)."""
    if engine not in ("local", "ray"):
        raise UserError("--engine must be local or ray")
    require("ray" if engine == "ray" else "scale", f"score --engine {engine}")
    check_job(job, workers, shard_size)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the shards")
    photos = Listing(inputs)
    workers = workers or max(1, (os.cpu_count() or 1) // job.threads)
    _same_settings(out, _settings(job, inputs, shard_size))
    remove_temporaries(out, "part-*.parquet")  # a shard a killed run was writing
    total = sum(1 for _ in photos)
    started, scored, tally = time.perf_counter(), 0, Tally()
    say(f"score: {total} photos in shards of {shard_size}, {engine} engine, {workers} workers")
    with Progress(total, "score") as progress:
        todo = _pending(iter_shards(photos, out, shard_size), progress, tally)
        if engine == "ray":
            finished = run_ray(job, todo, workers, address)
        else:
            finished = run_local(job, todo, workers)
        for done in finished:
            scored += done["photos"]
            progress.update(done["photos"])
            tally.add(done)
    seconds = time.perf_counter() - started
    result = tally.result()
    result.update(duplicates=photos.duplicates, scored=scored, seconds=round(seconds, 2),
                  photos_per_s=round(scored / seconds, 1) if scored else 0.0,
                  engine=engine, workers=workers, out=str(out))  # fmt: skip
    atomic_write_json(out / SUMMARY, result)
    return result


def check_job(job: Job, workers: int | None, shard_size: int) -> None:
    """Refuse, in one line, a setting of ``score`` that makes no sense."""
    limits = {
        "--threads": job.threads,
        "--bs": job.bs,
        "--top-k": job.top_k,
        "--shard-size": shard_size,
        "--workers": 1 if workers is None else workers,
    }
    for flag, value in limits.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, not {value}")


def _pending(shards: Iterator[Shard], progress: Progress, tally: Tally) -> Iterator[Shard]:
    """The shards not written yet (the done ones counted as progress, their summaries read
    back from their files)."""
    for shard in shards:
        if is_done(shard):
            progress.update(len(shard.paths))
            tally.add(read_summary(shard))
        else:
            yield shard


class Tally:
    """Photos, verdict counts and unreadable photos over the shards, a shard's summary at a
    time, in whatever order they finish."""

    def __init__(self) -> None:
        self.photos, self.verdicts, self.unreadable = 0, {}, []

    def add(self, found: dict) -> None:
        self.photos += found["photos"]
        for verdict, n in found["verdicts"].items():
            self.verdicts[verdict] = self.verdicts.get(verdict, 0) + n
        self.unreadable += [(found["shard"], u) for u in found["unreadable"]]

    def result(self) -> dict:
        """The totals, the unreadable photos in the inputs' order."""
        unreadable = [u for _, u in sorted(self.unreadable, key=lambda pair: pair[0])]
        return {"photos": self.photos, "verdicts": dict(sorted(self.verdicts.items())),
                "unreadable": unreadable}  # fmt: skip


def _settings(job: Job, inputs: list, shard_size: int) -> dict:
    """What the shards depend on: a rerun must give the same."""
    models = [_model_version(Path(m)) for m in job.models]
    return {"models": models, "runtime": job.runtime, "tta": job.tta, "top_k": job.top_k,
            "quality": job.quality, "shard_size": shard_size,
            "inputs": [str(Path(i).resolve()) for i in inputs]}  # fmt: skip


def _model_version(model: Path) -> str:
    """The version of a run folder's weights, or of an exported model file."""
    weights = model / "model.safetensors" if model.is_dir() else model
    if not weights.is_file():
        raise UserError(f"{model} is not a model: give a run folder or an exported model file")
    return file_version(weights)


def _same_settings(out: Path, settings: dict) -> None:
    """Record ``settings`` in a new or empty ``out``; refuse an ``out`` scored with others,
    or one that holds files and is not score's own."""
    saved = out / SETTINGS
    if not saved.is_file() and out.is_dir() and any(out.iterdir()):
        raise UserError(
            f"--out {out} holds files that cropdoc score did not write (no {SETTINGS}): "
            "give a new or empty folder for the shards"
        )
    if saved.is_file():
        try:
            before = json.loads(saved.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{saved} is damaged: remove the folder {out} to start again") from None
        if before != settings:
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            raise UserError(
                f"{out} holds scores made with other settings ({', '.join(changed)}): rerun "
                "with the same ones, or score into a new --out"
            )
        return
    atomic_write_json(saved, settings)


def summary_text(result: dict) -> str:
    """The summary in lines, naming the first ``LISTED`` unreadable photos."""
    counts = ", ".join(f"{v} {n}" for v, n in result["verdicts"].items()) or "none"
    lines = [
        f"scored {result['scored']} photos in {result['seconds']:.1f} s "
        f"({result['photos_per_s']} photos/s, {result['engine']} engine, "
        f"{result['workers']} workers); {result['photos']} in {result['out']}",
        f"verdicts: {counts}",
    ]
    if result.get("duplicates"):
        lines.append(f"{result['duplicates']} photo(s) listed more than once, scored once")
    bad = result["unreadable"]
    lines += [f"unreadable {u['path']}: {u['reason']}" for u in bad[:LISTED]]
    if len(bad) > LISTED:
        lines.append(f"... and {len(bad) - LISTED} more unreadable (in {SUMMARY})")
    return "\n".join(lines)
