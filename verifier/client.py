"""Client of the warm verifier server; standard library only, so it starts in a few milliseconds.

    python -m verifier.client run MODEL SPEC RESULT_FILE TIMEOUT_S   one instance (VNN-COMP style)
    python -m verifier.client start [--wait S]                       start a server unless one answers
    python -m verifier.client stop | status

`run` hands the job to the server (`verifier.server`, which has torch and the verifier
imported already) and writes RESULT_FILE from its reply.  The hard limit stays with the
client: if no result has come when the time is nearly up, it kills the server and writes
`timeout` itself.  With no server to talk to (none started, busy, dead) it becomes the plain
`python -m verifier MODEL SPEC --out RESULT_FILE --timeout T` in the same process.

Nothing here may import numpy, torch or the verifier's heavy modules: that is the point.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from verifier.cli import WATCHDOG_MARGIN_S, write_atomically

#: overrides where the server's socket, pid, lock and log files live
DIR_ENV = "NNVERIFY_SERVER_DIR"
SOCKET_NAME, PID_NAME, LOCK_NAME, LOG_NAME = "server.sock", "server.pid", "server.lock", "server.log"
#: a server that does not accept a job this fast is busy (or hung): run the job without it
ACK_WAIT_S = 1.0
#: a `start` waits this long for a new server to answer (imports and a warm-up run)
START_WAIT_S = 120.0
MAX_MESSAGE = 1 << 26


def server_dir() -> Path:
    """The per-user runtime folder: $NNVERIFY_SERVER_DIR, else $XDG_RUNTIME_DIR/nnverify, else
    /tmp/nnverify-UID."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "nnverify"
    return Path(f"/tmp/nnverify-{os.getuid()}")


class Connection:
    """One JSON-lines exchange over the server's Unix socket."""

    def __init__(self, directory: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(directory / SOCKET_NAME))
        except BaseException:
            self.sock.close()
            raise
        self._buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None when the server closed the connection."""
        end = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = end - time.monotonic()
            if left <= 0:
                raise socket.timeout("no reply in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
            if len(self._buffer) > MAX_MESSAGE:
                raise ValueError("reply too long")
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()


def ask(directory: Path, message: dict[str, Any], timeout: float = 2.0) -> dict[str, Any] | None:
    """Send one message and return the reply; None if no server answers within `timeout`."""
    try:
        conn = Connection(directory, timeout)
    except OSError:
        return None
    try:
        conn.send(message)
        return conn.receive(timeout)
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


# -- run ---------------------------------------------------------------------------------------

def run(model: str, spec: str, out: Path, timeout: float, *, category: str = "",
        directory: Path | None = None, start: float | None = None) -> int:
    """Verify one instance through the server, or in this process if there is none.

    Writes `out` and prints one summary line; returns the exit code of `python -m verifier`."""
    start = time.monotonic() if start is None else start
    directory = directory or server_dir()
    margin = min(WATCHDOG_MARGIN_S, 0.1 * timeout)
    model, spec = os.path.abspath(model), os.path.abspath(spec)
    try:
        conn = Connection(directory, ACK_WAIT_S)
    except OSError:
        return fallback(model, spec, out, timeout, start, "no server")
    try:
        budget = timeout - 2 * margin - (time.monotonic() - start)
        conn.send({"op": "run", "model": model, "spec": spec, "timeout": max(0.0, budget), "category": category})
        ack = conn.receive(ACK_WAIT_S)
    except (OSError, ValueError):  # socket.timeout is an OSError: the server is busy or hung
        ack = None
    if not ack or not ack.get("accepted"):
        conn.close()  # a busy server that reaches this job later sees it withdrawn
        return fallback(model, spec, out, timeout, start, "the server did not take the job")
    try:
        reply = conn.receive(max(0.0, timeout - margin - (time.monotonic() - start)))
    except socket.timeout:
        conn.close()
        _kill(int(ack.get("pid", 0)))  # the hard limit: the job overran, the server goes
        return _finish(out, "timeout\n", f"timeout  {_stem(model)} {_stem(spec)}  "
                       f"{time.monotonic() - start:.2f} s  (hard time limit: the server was stopped)", 0)
    except (OSError, ValueError):
        reply = None
    conn.close()
    if reply is None or "text" not in reply:
        return fallback(model, spec, out, timeout, start, "the server closed the connection")
    return _finish(out, reply["text"], reply.get("summary"), int(reply.get("exit_code", 0)),
                   reply.get("stderr"))


def fallback(model: str, spec: str, out: Path, timeout: float, start: float, why: str) -> int:
    """Become `python -m verifier MODEL SPEC --out OUT --timeout REMAINING` (same process)."""
    remaining = max(0.05, timeout - (time.monotonic() - start))
    print(f"note: running without the warm server ({why})", file=sys.stderr, flush=True)
    argv = [sys.executable, "-m", "verifier", model, spec, "--out", str(out), "--timeout", f"{remaining:.3f}"]
    os.execv(sys.executable, argv)
    return 1  # not reached


def _finish(out: Path, text: str, summary: str | None, code: int, stderr: str | None = None) -> int:
    try:
        write_atomically(out, text)
    except OSError as exc:
        print(f"error: cannot write the result file {out}: {exc}", file=sys.stderr, flush=True)
        return 1
    if stderr:
        print(stderr, file=sys.stderr, flush=True)
    if summary:
        print(summary, flush=True)
    return code


def _kill(pid: int) -> None:
    if pid > 1:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".gz", ".onnx", ".vnnlib"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


# -- start / stop / status -----------------------------------------------------------------------

def start_server(directory: Path | None = None, wait: float = START_WAIT_S, extra: list[str] | None = None) -> bool:
    """Make sure a server answers: reuse a live one, else start one detached and wait for it."""
    directory = directory or server_dir()
    if ask(directory, {"op": "ping"}) is not None:
        return True
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = open(directory / LOG_NAME, "ab")
    try:
        # a new session: the server outlives the prepare script and its terminal
        subprocess.Popen([sys.executable, "-m", "verifier", "serve", "--dir", str(directory), *(extra or [])],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    finally:
        log.close()
    end = time.monotonic() + wait
    while time.monotonic() < end:
        if ask(directory, {"op": "ping"}, timeout=1.0) is not None:
            return True
        time.sleep(0.1)
    return False


def stop_server(directory: Path | None = None, wait: float = 5.0) -> bool:
    """Ask the server to exit; if it does not answer, end it by the pid it recorded (only while it
    still holds its lock, so a recycled pid is never hit). True if no server runs afterwards."""
    directory = directory or server_dir()
    if ask(directory, {"op": "stop"}) is not None:
        end = time.monotonic() + wait
        while time.monotonic() < end and server_alive(directory):
            time.sleep(0.05)
    if server_alive(directory):
        try:
            pid = int((directory / PID_NAME).read_text().strip())
        except (OSError, ValueError):
            return False
        if server_alive(directory):
            _kill(pid)
            time.sleep(0.2)
    return not server_alive(directory)


def server_alive(directory: Path) -> bool:
    """True iff a server process holds the lock file (the kernel drops it when the process dies)."""
    import fcntl

    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR)
    except OSError as exc:
        return exc.errno not in (errno.ENOENT, errno.ENOTDIR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    p = argparse.ArgumentParser(prog="python -m verifier.client", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, help=f"the server's folder (default: ${DIR_ENV} or a per-user runtime folder)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="verify one instance (through the server if one answers)")
    r.add_argument("model")
    r.add_argument("spec")
    r.add_argument("out", type=Path)
    r.add_argument("timeout", type=float)
    r.add_argument("--category", default="")
    s = sub.add_parser("start", help="start a server unless one answers")
    s.add_argument("--wait", type=float, default=START_WAIT_S)
    s.add_argument("--idle-timeout", type=float, help="the server exits after this many idle seconds")
    sub.add_parser("stop", help="stop the server")
    sub.add_parser("status", help="say whether a server answers")
    args = p.parse_args(argv)
    directory = args.dir or server_dir()
    if args.command == "run":
        if not args.timeout > 0:
            p.error("the timeout must be positive")
        return run(args.model, args.spec, args.out, args.timeout, category=args.category, directory=directory,
                   start=start)
    if args.command == "start":
        extra = ["--idle-timeout", str(args.idle_timeout)] if args.idle_timeout else []
        ok = start_server(directory, args.wait, extra)
        print("server ready" if ok else f"the server did not answer within {args.wait:g} s (see {directory / LOG_NAME})",
              file=sys.stderr)
        return 0 if ok else 1
    if args.command == "stop":
        return 0 if stop_server(directory) else 1
    reply = ask(directory, {"op": "ping"})
    print(json.dumps(reply) if reply else "no server")
    return 0 if reply else 1


if __name__ == "__main__":
    sys.exit(main())
