"""Ray backend: the same warm workers and hard limits, on a Ray cluster (optional extra `ray`).

Every slot is a Ray actor holding one CPU; it imports the verifier once when it starts. The
driver hands each idle actor one instance and kills the actor (`ray.kill`) once the instance
overruns its limit by KILL_GRACE_S, exactly like the local pool kills a worker process, then
starts a fresh actor in its place. Results come back to the driver, which writes the same CSV
(so resume works the same). Network and property files are read where they are when the
actor's machine sees the same path (a shared file system); otherwise the bytes the driver put
into Ray's object store are written to a temporary folder on the actor's machine.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.jobs import KILL_GRACE_S, Job, JobResult
from benchmarks.pool import MAX_START_FAILURES, PoolError

log = logging.getLogger(__name__)

#: the packages an actor needs; shipped to the cluster when this runner starts Ray itself
PACKAGES = ("benchmarks", "verifier", "bounds", "branching", "specs")


class InstanceActor:
    """The body of a Ray actor (wrapped with ray.remote at run time, so that importing this
    module needs no ray)."""

    def __init__(self) -> None:
        from benchmarks.worker import warm_up

        warm_up()
        self._copies: dict[str, str] = {}
        self._tmp = tempfile.mkdtemp(prefix="nnverify-ray-")

    def ready(self) -> int:
        return os.getpid()

    def run(self, job: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        from benchmarks.worker import run_job

        job = dict(job)
        for key in ("onnx", "vnnlib"):
            if not os.path.isfile(job[key]) and key in data:
                job[key] = self._local_copy(job[key], data[key])
        return run_job(job)

    def _local_copy(self, path: str, ref: Any) -> str:
        import ray

        if path not in self._copies:
            folder = Path(self._tmp) / str(len(self._copies))
            folder.mkdir()
            target = folder / Path(path).name  # keeps .gz, which the readers detect anyway
            target.write_bytes(ray.get(ref))
            self._copies[path] = str(target)
        return self._copies[path]


class RayPool:
    """Runs jobs on Ray actors; `run` yields results as they finish (like LocalPool.run).

    address     the cluster (None: the Ray instance already initialised in this process, else
                a new local one); when this class starts Ray, it ships our packages to it
    workers     actors at once (0: the cluster's CPUs)
    ship_files  put the network and property bytes into the object store for actors on
                machines that do not see the driver's paths
    actor       the actor's class (InstanceActor; tests pass a stand-in)
    """

    def __init__(self, address: str | None = None, workers: int = 0, ship_files: bool = True,
                 actor: type = InstanceActor) -> None:
        try:
            import ray
        except ImportError:
            raise PoolError("the ray backend needs Ray: pip install 'nnverify[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            root = Path(__file__).resolve().parents[1]
            modules = [str(root / p) for p in PACKAGES]
            ray.init(address=address, runtime_env={"py_modules": modules}, log_to_driver=False,
                     logging_level=logging.WARNING)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = workers if workers > 0 else max(1, cpus)
        self.ship_files = ship_files
        self._refs: dict[str, Any] = {}
        self._actor_class = ray.remote(num_cpus=1)(actor)

    def _data(self, job: Job) -> dict[str, Any]:
        if not self.ship_files:
            return {}
        out = {}
        for key in ("onnx", "vnnlib"):
            path = getattr(job, key)
            if path not in self._refs:
                self._refs[path] = self._ray.put(Path(path).read_bytes())
            out[key] = self._refs[path]
        return out

    def run(self, jobs: Iterable[Job]) -> Iterator[JobResult]:
        ray = self._ray
        pending = deque(jobs)
        slots: list[dict[str, Any]] = []
        failures = 0

        def spawn() -> None:
            actor = self._actor_class.remote()
            slots.append({"actor": actor, "ready": actor.ready.remote(), "job": None, "ref": None, "started": 0.0})

        def retire(slot: dict[str, Any]) -> None:
            ray.kill(slot["actor"], no_restart=True)
            slots.remove(slot)

        try:
            for _ in range(min(self.slots, len(pending))):
                spawn()
            while pending or any(s["job"] is not None for s in slots):
                finished: list[JobResult] = []
                for s in slots:
                    if s["ready"] is None and s["job"] is None and pending:
                        job = pending.popleft()
                        s["job"], s["started"] = job, time.monotonic()
                        s["ref"] = s["actor"].run.remote(job.to_wire(), self._data(job))
                waiting = {(s["ready"] if s["ready"] is not None else s["ref"]): s for s in slots
                           if s["ready"] is not None or s["ref"] is not None}
                done, _ = ray.wait(list(waiting), num_returns=1, timeout=self._wait(slots)) if waiting else ([], [])
                for ref in done:
                    s = waiting[ref]
                    if s["ready"] is not None and ref == s["ready"]:
                        try:
                            ray.get(ref)
                            s["ready"], failures = None, 0
                        except Exception as exc:  # noqa: BLE001 - Ray wraps the actor's start-up failure
                            log.warning("a Ray actor failed to start: %s", exc)
                            failures += 1
                            retire(s)
                            spawn()
                        continue
                    job, elapsed = s["job"], time.monotonic() - s["started"]
                    s["job"] = s["ref"] = None
                    try:
                        finished.append(JobResult.from_wire(ray.get(ref), elapsed))
                    except Exception as exc:  # noqa: BLE001 - the actor died under the instance
                        finished.append(JobResult(job.id, "error", elapsed,
                                                  message=f"the Ray actor died while running the instance: {exc}"))
                        retire(s)
                        if pending:
                            spawn()
                now = time.monotonic()
                for s in list(slots):
                    job = s["job"]
                    if job is not None and now > s["started"] + job.limit + KILL_GRACE_S:
                        finished.append(JobResult(job.id, "timeout", now - s["started"], killed=True,
                                                  message=f"killed by the runner at the hard limit of {job.limit:g} s"))
                        retire(s)
                        if pending:
                            spawn()
                if failures >= MAX_START_FAILURES:
                    raise PoolError(f"{failures} Ray actors in a row failed to start")
                if not pending:
                    for s in [s for s in slots if s["job"] is None]:
                        retire(s)
                yield from finished
        finally:
            for s in list(slots):
                retire(s)

    @staticmethod
    def _wait(slots: list[dict[str, Any]]) -> float:
        now = time.monotonic()
        due = [s["started"] + s["job"].limit + KILL_GRACE_S - now for s in slots if s["job"] is not None]
        return max(0.0, min(due + [1.0]))
