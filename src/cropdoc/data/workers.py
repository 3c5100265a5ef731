"""Worker processes for the CPU-bound data work (decoding a cache, drawing demo photos)."""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import multiprocessing.pool
import os
import signal


def fork_pool(workers: int) -> multiprocessing.pool.Pool:
    """A pool of forked workers that end with their parent (a ``kill -9`` of the command
    leaves no worker to print broken-pipe tracebacks); the parent's objects are frozen
    during the fork so the workers' garbage collector does not copy its memory page by page."""
    gc.freeze()
    try:
        context = multiprocessing.get_context("fork")
        return context.Pool(workers, initializer=_end_with_parent, initargs=(os.getpid(),))
    finally:
        gc.unfreeze()


def _end_with_parent(parent: int) -> None:
    """In a worker: have the kernel kill this process when its parent dies (Linux); if
    the parent is already gone, end now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the worker ends when it next talks to its parent
    if os.getppid() != parent:
        os._exit(0)
