"""Dynamic batching: requests that arrive together share one model call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np


class Batcher:
    """Collects submitted images for up to ``wait`` seconds after the first (or until
    ``max_batch`` are waiting), runs ``run(images)`` on ``executor`` and hands each caller
    its row. ``max_batch=1`` serves one image at a time."""

    def __init__(
        self,
        run: Callable[[list[np.ndarray]], np.ndarray],
        executor: Executor,
        max_batch: int = 16,
        wait: float = 0.005,
    ):
        self.run, self.executor = run, executor
        self.max_batch, self.wait = max(1, max_batch), wait
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the last thousand batches, for /health

    async def submit(self, image: np.ndarray) -> np.ndarray:
        """The model's output row for ``image``."""
        if self.worker is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, future))
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            self.batches = [*self.batches[-999:], len(batch)]  # a new list: readers see whole ones
            try:
                rows = await loop.run_in_executor(
                    self.executor, self.run, [image for image, _ in batch]
                )
            except Exception as exc:  # the callers get the error, the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), row in zip(batch, rows, strict=True):
                if not future.done():
                    future.set_result(row)
