"""A warm worker: imports the verifier once, then answers instances one per line.

Started by the local pool as `python -m benchmarks.worker`; speaks the JSON-lines protocol
described in benchmarks/jobs.py on its original stdout. Anything else that would go to stdout
(a stray print in some library) is sent to stderr so that it cannot corrupt the protocol.
The Ray backend calls `run_job` directly inside its actors.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Verify one instance (a Job.to_wire() dict); never raises, failures come back as `error`."""
    from verifier.api import verify
    from verifier.options import VerifyOptions

    start = time.monotonic()
    try:
        options = VerifyOptions(timeout=float(job["budget"]), **job.get("options", {}))
        result = verify(job["onnx"], job["vnnlib"], options=options)
    except Exception as exc:  # noqa: BLE001 - a bad model or spec is an `error` row, not a dead worker
        return {"id": job["id"], "result": "error", "message": f"{type(exc).__name__}: {' '.join(str(exc).split())}",
                "worker_time_s": time.monotonic() - start}
    bound = result.best_bound
    return {"id": job["id"], "result": result.word, "stage": result.stage or "",
            "bound": float(bound) if bound is not None and math.isfinite(bound) else None,
            "message": " ".join(result.message.split()),
            "witness": result.to_vnncomp() if result.word == "sat" else "",
            "worker_time_s": time.monotonic() - start}


def warm_up() -> None:
    """Import everything a run needs now, so that no instance pays for it."""
    import verifier.api  # noqa: F401
    import verifier.options  # noqa: F401


def _watch_parent(parent: int) -> None:
    """End this process once the runner is gone (it was killed hard and cannot kill us)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def main() -> int:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    warm_up()
    protocol.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        protocol.write(json.dumps(run_job(job)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
