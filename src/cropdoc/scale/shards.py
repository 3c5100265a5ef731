"""Bulk scoring's unit of work: a shard of consecutive photos, scored into one parquet file.

The photos are streamed (``cropdoc.data.inputs``: folders walked a directory at a time in
sorted order, CSV lists read a row at a time, each distinct photo once), never listed whole,
and cut into shards of ``shard_size`` in that order: shard ``n`` is always the same photos,
so a rerun skips the shards already written and a killed run loses at most the shards it
was scoring. Each shard file holds one row
per photo (the unreadable ones too, with their reason) and, in its metadata, the sha256 of
its photos' paths, so a shard written for other inputs is never taken as done.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write
from cropdoc.inference.predictions import Predictions, Scorer, answer, score_photos

PATHS_KEY = b"cropdoc.paths_sha256"  # a shard file's metadata: the digest of its paths


@dataclass(frozen=True)
class Shard:
    """Shard ``index``: its photos and the file it is scored into."""

    index: int
    paths: tuple[str, ...]
    file: Path

    @property
    def digest(self) -> str:
        return paths_digest(self.paths)


def shard_file(out: Path, index: int) -> Path:
    return out / f"part-{index:06d}.parquet"


def paths_digest(paths: tuple[str, ...] | list[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def iter_shards(photos: Iterable[str], out: Path, shard_size: int) -> Iterator[Shard]:
    """Every shard of ``photos`` (a ``Listing``) in order (done or not)."""
    chunk: list[str] = []
    index = 0
    for path in photos:
        chunk.append(path)
        if len(chunk) == shard_size:
            yield Shard(index, tuple(chunk), shard_file(out, index))
            chunk, index = [], index + 1
    if chunk:
        yield Shard(index, tuple(chunk), shard_file(out, index))


def is_done(shard: Shard) -> bool:
    """True when the shard's file is there and was written for these very photos; a file
    written for other photos (the inputs changed) is refused in one line."""
    import pyarrow.parquet as pq

    if not shard.file.is_file():
        return False
    try:
        found = pq.read_schema(shard.file).metadata or {}
    except Exception:  # pyarrow raises its own kinds on a damaged file
        raise UserError(f"{shard.file} is damaged: remove it and run again") from None
    if found.get(PATHS_KEY, b"").decode() != shard.digest:
        raise UserError(
            f"{shard.file} holds other photos than shard {shard.index} of these inputs (they "
            "changed since it was written): score into a new --out"
        )
    return True


def schema(scorer: Scorer, k: int):
    """The shards' columns, the same for every shard of a model: path, verdict, confidence,
    ood_score, the top ``k`` labels and probabilities, the columns of the model's kind (a
    tiled model's top tile, ``contract.kinds``), one or two
    columns per other target, quality (the failed photo check) and error (unreadable)."""
    import pyarrow as pa

    fields = [("path", pa.string()), ("verdict", pa.string()), ("confidence", pa.float64()),
              ("ood_score", pa.float64())]  # fmt: skip
    for i in range(1, min(k, len(scorer.info["classes"])) + 1):
        suffix = "" if i == 1 else f"_{i}"
        fields += [(f"label{suffix}", pa.string()), (f"prob{suffix}", pa.float64())]
    types = {"string": pa.string(), "float": pa.float64()}
    fields += [(name, types[type_name]) for name, type_name in scorer.kind.columns()]
    for target in scorer.others:
        if target.kind == "regress":
            fields.append((target.name, pa.float64()))
        else:
            fields += [(target.name, pa.string()), (f"{target.name}_prob", pa.float64())]
    fields += [("quality", pa.string()), ("error", pa.string())]
    return pa.schema(fields)


def score_shard(shard: Shard, scorer: Scorer, k: int, bs: int, quality: bool) -> dict:
    """Score the shard's photos and write its file (atomically); returns its summary:
    photos, verdict counts and the unreadable photos with their reason."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    predictions = score_photos(list(shard.paths), scorer, bs, quality)
    columns = _columns(predictions, scorer, k)
    table = pa.table(columns, schema=schema(scorer, k))
    table = table.replace_schema_metadata({PATHS_KEY: shard.digest.encode()})
    atomic_write(shard.file, lambda f: pq.write_table(table, f))
    return summary(predictions, shard)


def _columns(predictions: Predictions, scorer: Scorer, k: int) -> dict[str, list]:
    """The shard's rows as columns (``schema``): the scored photos, then the unreadable."""
    names = schema(scorer, k).names
    columns: dict[str, list] = {name: [] for name in names}
    kind_columns = [name for name, _ in scorer.kind.columns()]
    for n, row in enumerate(predictions.top(k)):
        values = {"path": row["path"], "verdict": row["verdict"],
                  "confidence": row["confidence"], "ood_score": row["ood_score"],
                  "quality": row["quality"] or None, "error": None}  # fmt: skip
        for i, t in enumerate(row["top"], start=1):
            suffix = "" if i == 1 else f"_{i}"
            values[f"label{suffix}"], values[f"prob{suffix}"] = t["label"], t["prob"]
        for name, value in zip(kind_columns, scorer.kind.cells(row), strict=True):
            values[name] = value if isinstance(value, str) else round(value, 6)
        for target in scorer.others:
            found = answer(target, predictions.answers[target.name][n], 1)
            if target.kind == "regress":
                values[target.name] = found["value"]
            else:
                values[target.name], values[f"{target.name}_prob"] = found["label"], found["prob"]
        for name in names:
            columns[name].append(values.get(name))
    for path, reason in predictions.errors:
        for name in names:
            columns[name].append({"path": path, "error": reason}.get(name))
    return columns


def summary(predictions: Predictions, shard: Shard) -> dict:
    """A shard's photos, verdict counts and unreadable photos."""
    counts: dict[str, int] = {}
    for verdict in predictions.verdicts():
        counts[verdict] = counts.get(verdict, 0) + 1
    return {
        "shard": shard.index,
        "photos": len(shard.paths),
        "verdicts": counts,
        "unreadable": [{"path": p, "reason": r} for p, r in predictions.errors],
    }


def read_summary(shard: Shard) -> dict:
    """The summary of a shard written before, from its file (verdict and error columns)."""
    import pyarrow.parquet as pq

    table = pq.read_table(shard.file, columns=["path", "verdict", "error"]).to_pydict()
    counts: dict[str, int] = {}
    unreadable = []
    for path, verdict, error in zip(table["path"], table["verdict"], table["error"], strict=True):
        if error is not None:
            unreadable.append({"path": path, "reason": error})
        else:
            counts[verdict] = counts.get(verdict, 0) + 1
    return {"shard": shard.index, "photos": len(table["path"]), "verdicts": counts,
            "unreadable": unreadable}  # fmt: skip
