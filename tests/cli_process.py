"""Run the ``cropdoc`` command in a real child process without paying for torch each time.

A test that runs ``python -m cropdoc ...`` waits seconds for torch and timm to import before
the command does anything (about 10 s on a busy 2-core machine). ``start`` and ``run`` fork
each command instead from a server process that imported them once (multiprocessing's
forkserver): the command still runs in a process of its own, with its own working folder,
environment, stdout, stderr, signals and exit status. Tests that check what a fresh
interpreter imports start ``python -m cropdoc`` themselves.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ["torch", "cropdoc.cli", "cropdoc.model.archs"]  # timm: through cropdoc
_context = None


class Command:
    """A started ``cropdoc`` command: the parts of ``subprocess.Popen`` the tests use."""

    def __init__(self, argv, out: Path, err: Path, cwd, env, session: bool, blocked: tuple):
        global _context
        if _context is None:
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(PRELOAD)
        self.args, self.out, self.err = ["cropdoc", *argv], out, err
        where = str(cwd or os.getcwd())
        files = (str(out), str(err))
        self.process = _context.Process(
            target=_command, args=(argv, where, dict(env or os.environ), files, session, blocked)
        )
        self.process.start()
        self.pid = self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.process.exitcode

    def send_signal(self, signal: int) -> None:
        os.kill(self.pid, signal)

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()


def start(*args, out: Path, err: Path | None = None, cwd=None, env=None, session=False,
          blocked: tuple[str, ...] = ()):  # fmt: skip
    """``cropdoc ARGS`` started in a forked child writing to ``out`` (and ``err``, else the
    same file); ``session``: in a session of its own, as ``start_new_session`` does;
    ``blocked``: modules that fail to import there, as if not installed."""
    argv = [str(a) for a in args]
    return Command(argv, Path(out), Path(err or out), cwd, env, session, blocked)


def run(*args, cwd=None, env=None, timeout: float = 600, check=False, blocked=()):
    """``cropdoc ARGS`` run to its end; a ``subprocess.CompletedProcess`` of text, as
    ``subprocess.run(capture_output=True, text=True, check=check)`` returns it."""
    with tempfile.TemporaryDirectory(prefix="cropdoc-cli-") as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        command = start(*args, out=out, err=err, cwd=cwd, env=env, blocked=blocked)
        try:
            command.wait(timeout)
        except subprocess.TimeoutExpired:
            command.kill()
            command.wait()
            raise
        stdout = out.read_text() if out.exists() else ""
        stderr = err.read_text() if err.exists() else ""
    if check and command.returncode:
        raise subprocess.CalledProcessError(command.returncode, command.args, stdout, stderr)
    return subprocess.CompletedProcess(command.args, command.returncode, stdout, stderr)


def _command(argv: list[str], cwd: str, env: dict, files, session: bool, blocked) -> None:
    """In the child: its session, working folder, environment and output files, then the
    command, as ``python -m cropdoc`` runs it."""
    out, err = files
    for name in blocked:
        sys.modules[name] = None
    if session:
        os.setsid()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if env.get("OMP_NUM_THREADS"):  # what torch reads as it starts, here already started
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    file = os.open(out, flags, 0o600)
    os.dup2(file, 1)
    if err != out:
        os.close(file)
        file = os.open(err, flags, 0o600)
    os.dup2(file, 2)
    os.close(file)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
    sys.argv = ["cropdoc", *argv]
    from cropdoc.cli import main

    try:
        main()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def parents() -> dict[int, tuple[int, str]]:
    """Every process of this machine: its parent's pid and its command line (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the state, then the parent
            command = (stat.parent / "cmdline").read_text()
        except (OSError, IndexError):
            continue
        found[int(stat.parent.name)] = (int(fields[1]), command)
    return found
