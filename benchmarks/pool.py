"""Local process pool: warm worker processes, one instance each at a time, hard limits.

Each worker is a `python -m benchmarks.worker` subprocess in its own session, so that it and
anything it started die together. It imports the verifier once; the parent hands it one job
at a time over a pipe and waits for the answer with `selectors`. A worker still busy at
`limit + KILL_GRACE_S` is killed (SIGKILL to its process group), its instance reported as
`timeout`, and a fresh worker is started in its place while the others carry on.
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchmarks.jobs import KILL_GRACE_S, Job, JobResult

log = logging.getLogger(__name__)

#: a fresh worker that has failed to start this many times in a row means the set-up is broken
MAX_START_FAILURES = 3


class PoolError(Exception):
    """The workers cannot run at all (they die while starting up)."""


@dataclass(frozen=True)
class PoolOptions:
    """workers      worker processes (0: one per CPU core)
    command        the command that starts a worker (default: this Python, -m benchmarks.worker);
                   anything speaking the protocol of benchmarks/jobs.py will do
    log_path       the workers' stderr is appended here (default: a temporary file)
    threads        OMP/MKL threads per worker (0: cores // workers, at least 1), unless the
                   environment already sets OMP_NUM_THREADS
    start_timeout  seconds a worker may take to import everything before it counts as failed
    """

    workers: int = 0
    command: tuple[str, ...] = ()
    log_path: Path | None = None
    threads: int = 0
    start_timeout: float = 300.0

    def n_workers(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)


def default_command() -> tuple[str, ...]:
    return (sys.executable, "-m", "benchmarks.worker")


class _Worker:
    def __init__(self, command: tuple[str, ...], env: dict[str, str], stderr: IO[Any]) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                     env=env, start_new_session=True)
        self.spawned = time.monotonic()
        self.ready = False
        self.job: Job | None = None
        self.started = 0.0
        self.buffer = b""

    @property
    def fd(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def send(self, job: Job) -> bool:
        """Hand over a job; False if the worker is gone."""
        assert self.proc.stdin is not None
        self.job, self.started = job, time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(job.to_wire()) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def lines(self, data: bytes) -> list[dict[str, Any]]:
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        out = []
        for raw in complete:
            if raw.strip():
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    log.warning("worker %d wrote a line that is not JSON: %r", self.proc.pid, raw[:200])
        return out

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not die within 10 s of SIGKILL", self.proc.pid)


class LocalPool:
    """Runs jobs on warm local worker processes; `run` yields results as they finish."""

    def __init__(self, options: PoolOptions | None = None) -> None:
        self.options = options or PoolOptions()
        self.slots = self.options.n_workers()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # the workers must import this very checkout, wherever the command is started from
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if "OMP_NUM_THREADS" not in env:
            threads = self.options.threads or max(1, (os.cpu_count() or 1) // self.slots)
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        return env

    def run(self, jobs: Iterable[Job]) -> Iterator[JobResult]:
        pending = deque(jobs)
        if not pending:
            return
        env = self._env()
        stderr = (open(self.options.log_path, "a+b") if self.options.log_path
                  else tempfile.TemporaryFile(prefix="nnverify-workers-"))
        command = self.options.command or default_command()
        sel = selectors.DefaultSelector()
        workers: list[_Worker] = []
        failures = 0

        def spawn() -> None:
            w = _Worker(command, env, stderr)
            workers.append(w)
            sel.register(w.fd, selectors.EVENT_READ, w)

        def retire(w: _Worker) -> None:
            sel.unregister(w.fd)
            w.kill()
            workers.remove(w)

        try:
            for _ in range(min(self.slots, len(pending))):
                spawn()
            while pending or any(w.job is not None for w in workers):
                finished: list[JobResult] = []
                for w in workers:
                    if w.ready and w.job is None and pending:
                        job = pending.popleft()
                        if not w.send(job):
                            pending.appendleft(job)  # the worker died; its EOF is handled below
                            w.job = None
                for key, _ in sel.select(timeout=self._wait(workers)):
                    w = key.data
                    try:
                        data = os.read(w.fd, 1 << 16)
                    except OSError:
                        data = b""
                    if not data:  # end of file: the worker died
                        failures = self._died(w, finished, failures)
                        retire(w)
                        if pending:
                            spawn()
                        continue
                    for msg in w.lines(data):
                        if msg.get("ready"):
                            w.ready, failures = True, 0
                        elif w.job is not None and msg.get("id") == w.job.id:
                            finished.append(JobResult.from_wire(msg, time.monotonic() - w.started))
                            w.job = None
                now = time.monotonic()
                for w in list(workers):
                    if w.job is not None and now > w.started + w.job.limit + KILL_GRACE_S:
                        finished.append(JobResult(w.job.id, "timeout", now - w.started, killed=True,
                                                  message=f"killed by the runner at the hard limit of {w.job.limit:g} s"))
                        retire(w)
                        if pending:
                            spawn()
                    elif not w.ready and now > w.spawned + self.options.start_timeout:
                        log.warning("worker %d not ready after %.0f s; replacing it", w.proc.pid, now - w.spawned)
                        failures += 1
                        retire(w)
                        spawn()
                if failures >= MAX_START_FAILURES:
                    raise PoolError(f"{failures} workers in a row died before they were ready; "
                                    f"their messages: {_tail(stderr)}")
                if not pending:  # nothing left to hand out: idle workers may go
                    for w in [w for w in workers if w.job is None]:
                        retire(w)
                yield from finished
        finally:
            for w in list(workers):
                retire(w)
            sel.close()
            stderr.close()

    @staticmethod
    def _died(w: _Worker, finished: list[JobResult], failures: int) -> int:
        code = w.proc.poll()
        if w.job is not None:
            finished.append(JobResult(w.job.id, "error", time.monotonic() - w.started,
                                      message=f"the worker died while running the instance (exit status {code})"))
            w.job = None
            return failures
        if not w.ready:
            log.warning("worker %d died while starting (exit status %s)", w.proc.pid, code)
            return failures + 1
        return failures

    def _wait(self, workers: list[_Worker]) -> float:
        """Seconds until the next hard limit or start-up deadline (at most 1 s)."""
        now = time.monotonic()
        due = [w.started + w.job.limit + KILL_GRACE_S - now for w in workers if w.job is not None]
        due += [w.spawned + self.options.start_timeout - now for w in workers if not w.ready]
        return max(0.0, min(due + [1.0]))


def _tail(stderr: IO[bytes], n: int = 1500) -> str:
    try:
        stderr.flush()
        stderr.seek(0, os.SEEK_END)
        size = stderr.tell()
        stderr.seek(max(0, size - n))
        return stderr.read().decode(errors="replace").strip() or "(none)"
    except (OSError, ValueError):
        return "(unreadable)"
