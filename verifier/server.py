"""A warm verifier: `verify serve` keeps torch and the verifier imported and runs jobs sent by
`verifier.client`, so that a competition run does not pay ~2-5 s of imports per instance.

    verify serve [--dir D] [--idle-timeout S]   run a server in the foreground
    verify serve --stop | --status              stop / query the running one

One server per folder (a per-user runtime folder by default, see `verifier.client.server_dir`):
it holds an exclusive lock on `server.lock` for its whole life, so a live server is told apart
from stale files left by a killed one, which the next server cleans up. It listens on the Unix
socket `server.sock` (mode 0600 in a 0700 folder: only its user can talk to it), answers one
JSON line per request and runs one job at a time. Protocol (one request per connection):

    {"op": "ping"}                  -> {"ok": true, "pid": P, "jobs": N}
    {"op": "stop"}                  -> {"ok": true}, then the server exits
    {"op": "run", "model", "spec", "timeout", "category"}
                                    -> {"accepted": true, "pid": P}, then when done
                                       {"result", "text", "summary", "exit_code"}

The server does not hold the hard time limit: the client does, by killing this process.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from verifier.client import LOCK_NAME, PID_NAME, SOCKET_NAME, server_dir, stop_server
from verifier.exit_codes import EXIT_OK, EXIT_USAGE

log = logging.getLogger(__name__)

Job = Callable[[dict[str, Any]], dict[str, Any]]
#: the server exits after this long without a request (a forgotten server does not linger)
IDLE_TIMEOUT_S = 3600.0
#: how long a connected client may take to send its request
REQUEST_WAIT_S = 5.0
WARMUP_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny"


def run_job(request: dict[str, Any]) -> dict[str, Any]:
    """Verify one instance in this process; the reply carries the result file's text."""
    from verifier.api import verify
    from verifier.options import VerifyOptions

    start = time.monotonic()
    instance = f"{_stem(request['model'])} {_stem(request['spec'])}"
    try:
        options = VerifyOptions(timeout=max(1e-3, float(request["timeout"])))
        result = verify(request["model"], request["spec"], options=options)
        result = dataclasses.replace(result, time_s=time.monotonic() - start, instance=instance)
        return {"result": result.word, "text": result.to_vnncomp(), "summary": result.summary(), "exit_code": EXIT_OK}
    except Exception as exc:  # noqa: BLE001 - every failure becomes `error` + the CLI's exit code
        from verifier.errors import exit_code, kind

        message = " ".join(str(exc).split()) or type(exc).__name__
        if kind(exc) == "internal":
            log.exception("internal error on %s", instance)
            message = f"internal error ({type(exc).__name__}: {message})"
        return {"result": "error", "text": "error\n", "summary": None, "stderr": f"error: {message}",
                "exit_code": exit_code(exc)}


def warm_up() -> None:
    """Import everything and run the shipped tiny example once, so that first-call costs
    (lazy imports, onnxruntime sessions, allocator warm-up) are paid before any real job."""
    import verifier.api  # noqa: F401

    spec = WARMUP_EXAMPLE / "robust.vnnlib"
    if spec.is_file():
        reply = run_job({"model": str(WARMUP_EXAMPLE / "net.onnx"), "spec": str(spec), "timeout": 30.0})
        log.info("warm-up run: %s", reply["result"])


def serve(directory: Path, idle_timeout: float = IDLE_TIMEOUT_S, job: Job = run_job,
          warmup: Callable[[], None] | None = warm_up) -> int:
    """Serve jobs until `stop`, SIGTERM or `idle_timeout` seconds without a request."""
    import fcntl

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid != os.getuid():
        log.error("%s belongs to another user; refusing to use it", directory)
        return EXIT_USAGE
    lock = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        log.info("a server is running in %s already", directory)
        return EXIT_OK
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sock_path = directory / SOCKET_NAME
    try:
        # no live server holds the lock, so a socket or pid file here is stale
        for name in (SOCKET_NAME, PID_NAME):
            (directory / name).unlink(missing_ok=True)
        if warmup is not None:
            warmup()  # before listening: meanwhile clients find no socket and run on their own
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            old_umask = os.umask(0o177)
            try:
                sock.bind(str(sock_path))
            finally:
                os.umask(old_umask)
            sock.listen(16)
            (directory / PID_NAME).write_text(f"{os.getpid()}\n")
            log.info("serving in %s (pid %d)", directory, os.getpid())
            _loop(sock, idle_timeout, job)
        return EXIT_OK
    except SystemExit:
        return EXIT_OK
    finally:
        for name in (SOCKET_NAME, PID_NAME):
            (directory / name).unlink(missing_ok=True)
        signal.signal(signal.SIGTERM, previous)
        os.close(lock)  # releases the lock


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _loop(sock: socket.socket, idle_timeout: float, job: Job) -> None:
    jobs = 0
    while True:
        sock.settimeout(idle_timeout)
        try:
            conn, _ = sock.accept()
        except socket.timeout:
            log.info("idle for %g s, exiting", idle_timeout)
            return
        with conn:
            try:
                request = _receive(conn)
            except (OSError, ValueError) as exc:
                log.warning("bad request: %s", exc)
                continue
            op = request.get("op")
            if op == "ping":
                _send(conn, {"ok": True, "pid": os.getpid(), "jobs": jobs})
            elif op == "stop":
                _send(conn, {"ok": True})
                log.info("stopped by request")
                return
            elif op == "run":
                if not {"model", "spec", "timeout"} <= request.keys():
                    _send(conn, {"accepted": False, "error": "a run needs model, spec and timeout"})
                    continue
                if not _send(conn, {"accepted": True, "pid": os.getpid()}) or _peer_gone(conn):
                    log.info("job withdrawn before it started: %s", request.get("spec"))
                    continue
                t = time.monotonic()
                reply = job(request)
                jobs += 1
                log.info("%s %s -> %s in %.2f s", _stem(request["model"]), _stem(request["spec"]),
                         reply.get("result"), time.monotonic() - t)
                _send(conn, reply)
            else:
                _send(conn, {"error": f"unknown op {op!r}"})


def _receive(conn: socket.socket) -> dict[str, Any]:
    conn.settimeout(REQUEST_WAIT_S)
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError("the client closed the connection before its request ended")
        data += chunk
        if len(data) > 1 << 20:
            raise ValueError("request too long")
    message = json.loads(data.split(b"\n", 1)[0])
    if not isinstance(message, dict):
        raise ValueError("a request is a JSON object")
    return message


def _send(conn: socket.socket, message: dict[str, Any]) -> bool:
    try:
        conn.settimeout(REQUEST_WAIT_S)
        conn.sendall(json.dumps(message).encode() + b"\n")
        return True
    except OSError:
        return False


def _peer_gone(conn: socket.socket) -> bool:
    """True if the client has closed its end (it gave up waiting and runs the job itself)."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _stem(path: str) -> str:
    name = os.path.basename(str(path))
    for suffix in (".gz", ".onnx", ".vnnlib"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="verify serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, help="the server's folder (default: $NNVERIFY_SERVER_DIR or a per-user "
                                            "runtime folder)")
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S, metavar="S",
                   help=f"exit after S seconds without a request (default {IDLE_TIMEOUT_S:g})")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up run on examples/tiny")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--stop", action="store_true", help="stop the running server")
    what.add_argument("--status", action="store_true", help="print the running server's state")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    directory = args.dir or server_dir()
    if args.stop:
        return EXIT_OK if stop_server(directory) else 1
    if args.status:
        from verifier.client import ask

        reply = ask(directory, {"op": "ping"})
        print(json.dumps(reply) if reply else "no server")
        return EXIT_OK if reply else 1
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("verifier.progress").setLevel(logging.WARNING)
    return serve(directory, args.idle_timeout, warmup=None if args.no_warmup else warm_up)


if __name__ == "__main__":
    sys.exit(main())
