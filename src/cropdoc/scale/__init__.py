"""Work that outgrows one call: bulk scoring into resumable parquet shards (``shards``,
``score``) on worker processes or a Ray cluster (``engines``), and the doctor's folds as
Ray tasks (``folds``)."""
