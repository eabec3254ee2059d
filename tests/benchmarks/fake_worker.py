"""A stand-in for benchmarks.worker that starts in milliseconds (no torch) and behaves as the
property file's name says, so that the pool's limits and the runner's resume can be tested
quickly:

    *hang*        never answers, and ignores SIGTERM (only SIGKILL ends it)
    *crash*       exits at once without answering
    *slow<ms>*    sleeps that many milliseconds, then says unsat
    *sat*         says sat, with a counterexample text
    anything else says unsat at once

Every job it starts is appended as one line to the file $FAKE_WORKER_LOG (if set).
SleepyActor is the same idea for the Ray backend.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time


def main() -> int:
    log = os.environ.get("FAKE_WORKER_LOG")
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        name = os.path.basename(job["vnnlib"])
        if log:
            with open(log, "a") as fh:
                fh.write(name + "\n")
        if "hang" in name:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(10)
        if "crash" in name:
            os._exit(3)
        slow = re.search(r"slow(\d+)", name)
        if slow:
            time.sleep(int(slow.group(1)) / 1000)
        answer = {"id": job["id"], "result": "unsat", "stage": "fake", "bound": 0.5, "message": "fake"}
        if "sat" in name.replace("unsat", ""):
            answer.update(result="sat", bound=-0.25, witness="sat\n((X_0 0.5)\n (Y_0 1.0))\n")
        print(json.dumps(answer), flush=True)
    return 0


class SleepyActor:
    """Stands in for InstanceActor: never answers a property whose name says hang."""

    def ready(self) -> int:
        return os.getpid()

    def run(self, job: dict, data: dict) -> dict:
        if "hang" in os.path.basename(job["vnnlib"]):
            time.sleep(3600)
        return {"id": job["id"], "result": "unsat", "message": "sleepy"}


if __name__ == "__main__":
    sys.exit(main())
