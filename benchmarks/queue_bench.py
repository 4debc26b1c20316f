"""Annotation queue under load: 10 annotators labelling a 100k-item project through the production server.

    .venv/bin/python benchmarks/queue_bench.py [--examples 100000 --annotators 10 --seconds 60 --workers 2
                                                --think 0]

Recreates its own database (--db, default labelhub_queue_bench: dropped first), migrates it and
fills it: one team, a single-label project (Yes / No / Unsure), --examples distinct texts (the demo
legal_overruling texts, repeated with a "(copy N)" suffix), an ExampleScore per example with a
random priority and a model version (as if a model had scored the pool; --seeds of them
`is_seed`), and --labelled items already labelled by the annotators (Annotation + submitted
Assignment each). Then starts gunicorn (DEBUG=0, sync workers) on a free loopback port with Redis
db 9 (flushed) as its job queue: nobody consumes it, so submissions queue one training request and
the bench measures the queue, not training. --annotators threads, each with its own
`requests.Session` (requirements-dev), log in, open the labelling page and then, for --seconds,
submit a label for the item on screen with HX-Request and take the next item from the response,
as the page does; with --think they pause that long on average between items (without, the run
measures capacity). Every --get-every submissions a thread also GETs the partial again (the item
is already leased to it: the re-serve path, not a claim).

Reports server time (the `Server-Timing: app` header) and client round trip, p50/p95/p99, per
request kind, submissions/s, p95 per time window (claimed items pile up at the head of the
serve order because nothing retrains during the run), the load average and the CPU the bench
and everything else on the machine used during the run, CPU per request, EXPLAIN ANALYZE of
the queue's candidate query before and after the run, and the queries one submit makes
(in-process with the test client, after the run). Checks in the database that no item got
more annotations than the overlap, that no item was served to two annotators, and that
annotations = successful submissions. Exits 1 on any error or failed check.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
import redis
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PASSWORD = "queue-bench-password"
LABELS = ("Yes", "No", "Unsure")
TICKET = re.compile(r'name="ticket" value="([^"]+)"')
LABEL_KEY = re.compile(r'name="label" value="([^"]+)"')
VERSION = re.compile(r'name="taxonomy_version" value="(\d+)"')
SERVER_TIMING = re.compile(r"app;dur=([0-9.]+)")


# --- Database ---------------------------------------------------------------------------------------------------


def recreate_database(server_url: str, name: str) -> None:
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def base_texts(path: Path) -> list[str]:
    from projects.importing import content_hash

    seen: set[str] = set()
    texts = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            text = " ".join(row["text"].split())
            digest = content_hash(text)
            if text and digest not in seen:
                seen.add(digest)
                texts.append(text)
    return texts


def fill(args: argparse.Namespace) -> dict[str, Any]:
    """Team, project, examples, scores, annotators and the items they already labelled."""
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.db import connection, transaction
    from django.utils import timezone

    from annotation.models import Annotation, AnnotationSource, Assignment, AssignmentStatus, ExampleScore
    from learning.models import ModelVersion
    from projects.importing import content_hash
    from projects.models import Example, Membership, Role, Team
    from projects.taxonomy import LabelSpec, create_project

    rng = random.Random(args.seed)
    texts = base_texts(args.texts)
    password = make_password(PASSWORD)  # one hash for all: PBKDF2 costs ~0.5 s a call
    manager = User.objects.create(username="manager", password=password)
    annotators = User.objects.bulk_create(
        [User(username=f"annotator{i}", password=password) for i in range(args.annotators)])
    team = Team.objects.create(name="queue bench")
    Membership.objects.bulk_create([Membership(team=team, user=manager, role=Role.MANAGER)]
                                   + [Membership(team=team, user=u, role=Role.ANNOTATOR) for u in annotators])
    project = create_project(team, name="queue bench", task_type="single_label", created_by=manager,
                             labels=[LabelSpec(name) for name in LABELS])
    taxonomy = project.current_taxonomy()
    keys = [label.key for label in taxonomy.labels.all()]
    now = timezone.now()
    batch = args.batch
    ids: list[int] = []
    with transaction.atomic():
        for start in range(0, args.examples, batch):
            rows = []
            for i in range(start, min(start + batch, args.examples)):
                copy, base = divmod(i, len(texts))
                text = texts[base] if copy == 0 else f"{texts[base]} (copy {copy})"
                rows.append(Example(project=project, text=text, content_hash=content_hash(text), created_at=now))
            ids += [e.pk for e in Example.objects.bulk_create(rows)]
        model = ModelVersion.objects.create(project=project, number=1, taxonomy_version=taxonomy, label_keys=keys,
                                            encoder="bench", strategy=project.acquisition_strategy,
                                            n_labels=args.labelled, artifact=b"")
        seeds = set(rng.sample(ids, args.seeds))
        rest = [i for i in ids if i not in seeds]
        priorities = sorted((rng.random() for _ in ids), reverse=True)
        if args.labelled_order == "top":
            # The labelled items hold the highest priorities: labels given since the last model update.
            labelled = rest[:args.labelled]
            order = sorted(seeds) + rest  # best first
        else:
            labelled = rng.sample(rest, args.labelled)
            order = rng.sample(ids, len(ids))
        priority_of = dict(zip(order, priorities, strict=True))
        for start in range(0, len(ids), batch):
            ExampleScore.objects.bulk_create(
                ExampleScore(example_id=i, project=project, model_version_number=model.number,
                             predicted_keys=[rng.choice(keys)],
                             confidence=rng.uniform(0.34, 1.0), score=priority_of[i],
                             priority=priority_of[i] + (10.0 if i in seeds else 0.0), is_seed=i in seeds,
                             updated_at=now)
                for i in ids[start:start + batch])
        for start in range(0, len(labelled), batch):
            chunk = labelled[start:start + batch]
            who = [annotators[(start + j) % len(annotators)] for j in range(len(chunk))]
            Assignment.objects.bulk_create(
                Assignment(project=project, example_id=e, annotator=u, slot=0, status=AssignmentStatus.SUBMITTED,
                           leased_at=now, expires_at=now, finished_at=now) for e, u in zip(chunk, who, strict=True))
            Annotation.objects.bulk_create(
                Annotation(example_id=e, annotator=u, taxonomy_version=taxonomy, label_keys=[rng.choice(keys)],
                           source=AnnotationSource.UI, created_at=now) for e, u in zip(chunk, who, strict=True))
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")  # what autovacuum would have done by the time people label
    return {"project": project.pk, "annotators": [u.username for u in annotators]}


def explain(project_pk: int, username: str) -> tuple[str, float, bool]:
    """EXPLAIN ANALYZE of the scored candidate query for one annotator: (plan, execution ms, index used)."""
    from django.contrib.auth.models import User
    from django.db import connection

    from annotation import actions
    from projects.models import Project

    project = Project.objects.get(pk=project_pk)
    user = User.objects.get(username=username)
    params = {"project": project.pk, "user": user.pk, "overlap": project.overlap, "limit": actions.CANDIDATES}
    with connection.cursor() as cursor:
        cursor.execute(actions._SCORED, params)  # warm the cache like a live server's
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + actions._SCORED, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    ms = float(re.search(r"Execution Time: ([0-9.]+) ms", plan).group(1))  # type: ignore[union-attr]
    return plan, ms, "example_score_serve_order" in plan


def profile_submits(project_pk: int, username: str, n: int) -> dict[str, Any]:
    """Queries per HTMX submit, in-process (test client): count, their DB time, and the slowest ones."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    # force_login: django-axes' backend refuses authenticate() without a request.
    client.force_login(User.objects.get(username=username))
    page = client.get(f"/projects/{project_pk}/label/", HTTP_HX_REQUEST="true").content.decode()
    counts, db_ms, wall_ms = [], [], []
    slow: dict[str, list[float]] = {}
    for _ in range(n):
        ticket = TICKET.search(page).group(1)  # type: ignore[union-attr]
        key = LABEL_KEY.search(page).group(1)  # type: ignore[union-attr]
        with CaptureQueriesContext(connection) as ctx:
            t0 = time.perf_counter()
            response = client.post(f"/projects/{project_pk}/label/submit/", {"ticket": ticket, "label": key},
                                   HTTP_HX_REQUEST="true")
            wall_ms.append((time.perf_counter() - t0) * 1000)
        page = response.content.decode()
        counts.append(len(ctx.captured_queries))
        db_ms.append(sum(float(q["time"]) for q in ctx.captured_queries) * 1000)
        for q in ctx.captured_queries:
            slow.setdefault(q["sql"][:90], []).append(float(q["time"]) * 1000)
    top = sorted(((statistics.median(v), k) for k, v in slow.items()), reverse=True)[:3]
    return {"queries": statistics.median(counts), "db_ms": statistics.median(db_ms),
            "wall_ms": statistics.median(wall_ms), "top": top}


def check_database(project_pk: int, prefilled: int) -> dict[str, int]:
    from django.db.models import Count

    from annotation.models import Annotation, Assignment, AssignmentStatus
    from projects.models import Project

    project = Project.objects.get(pk=project_pk)
    annotations = Annotation.objects.in_project(project)
    return {
        "overlap": project.overlap,
        "items over overlap": annotations.values("example").annotate(n=Count("id"))
        .filter(n__gt=project.overlap).count(),
        "items served to >1 annotator": Assignment.objects.filter(project=project).values("example")
        .annotate(n=Count("annotator", distinct=True)).filter(n__gt=project.overlap).count(),
        "new annotations": annotations.count() - prefilled,
        "new submitted assignments": Assignment.objects.filter(project=project,
                                                               status=AssignmentStatus.SUBMITTED).count() - prefilled,
        "open leases": Assignment.objects.filter(project=project, status=AssignmentStatus.LEASED).count(),
    }


# --- Server -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


STATIC_SHIM = """from labelhub.settings import *  # noqa: F403
STORAGES = {**STORAGES,  # noqa: F405
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
"""


def collect_static(env: dict[str, str], log: Path) -> str:
    """Production settings when collectstatic works; else the same settings with plain static storage (noted)."""
    done = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode == 0:
        return ""
    # The bench fetches no static file; only the {% static %} URLs in the pages differ.
    shim = log.parent / "queue_bench_settings.py"
    shim.write_text(STATIC_SHIM)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim.parent), str(ROOT), env.get("PYTHONPATH", "")]))
    env["DJANGO_SETTINGS_MODULE"] = "queue_bench_settings"
    error = next((line for line in reversed(done.stderr.splitlines()) if "Error" in line), done.stderr[-300:])
    return f"collectstatic failed ({error.strip()}); serving with plain StaticFilesStorage instead"


def start_server(args: argparse.Namespace, env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(ROOT / ".venv/bin/gunicorn"), "labelhub.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", str(args.workers), "--timeout", "120",
             "--no-control-socket"],  # the default socket path is shared with any other gunicorn here
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited with {server.returncode}; see {log}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/accounts/login/", timeout=10).status_code == 200:
                return server
        except requests.RequestException:
            pass
        except BaseException:
            stop_server(server)
            raise
        time.sleep(0.3)
    stop_server(server)
    raise SystemExit(f"gunicorn did not answer in 90 s; see {log}")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)  # its own session: the master and its workers
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


class CpuShare:
    """CPU seconds over the run: the machine's, and the bench's own (client, gunicorn, its PostgreSQL backends)."""

    def __init__(self, server: subprocess.Popen[bytes], server_url: str, db: str) -> None:
        self.server, self.server_url, self.db = server, server_url, db
        self.loads: list[float] = []
        self._stop = threading.Event()

    def _ours(self) -> dict[str, dict[int, float]]:
        master = psutil.Process(self.server.pid)
        with psycopg.connect(f"{self.server_url}/{self.db}", autocommit=True) as conn:
            backends = [row[0] for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [self.db])]
        groups = {"client": [psutil.Process()], "gunicorn": [master, *master.children(recursive=True)],
                  "postgres": [psutil.Process(pid) for pid in backends if psutil.pid_exists(pid)]}
        out: dict[str, dict[int, float]] = {}
        for name, processes in groups.items():
            out[name] = {}
            for process in processes:
                try:
                    times = process.cpu_times()
                    out[name][process.pid] = times.user + times.system
                except psutil.Error:
                    pass
        return out

    @staticmethod
    def _busy() -> tuple[float, float]:
        times = psutil.cpu_times()
        total = sum(times)
        return total, total - times.idle - getattr(times, "iowait", 0.0)

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            self.loads.append(os.getloadavg()[0])
            self._remember(self._ours())

    def _remember(self, ours: dict[str, dict[int, float]]) -> None:
        # Django reconnects after DATABASE_CONN_MAX_AGE: keep the last figure of backends that went away.
        for name, now in ours.items():
            self.seen.setdefault(name, {}).update(now)

    def start(self) -> None:
        self.t = time.perf_counter()
        self.machine, self.ours = self._busy(), self._ours()
        self.seen: dict[str, dict[int, float]] = {}
        self._remember(self.ours)
        threading.Thread(target=self._sample, daemon=True).start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        wall = time.perf_counter() - self.t
        (_, busy1), ours = self._busy(), self._ours()
        self._remember(ours)
        # psutil.cpu_times() sums over CPUs; divide by wall time to get cores in use.
        share = {"machine": (busy1 - self.machine[1]) / wall}
        for name, seen in self.seen.items():
            share[name] = sum(v - self.ours[name].get(pid, 0.0) for pid, v in seen.items()) / wall
        share["others"] = share["machine"] - share["client"] - share["gunicorn"] - share["postgres"]
        share["load mean"] = statistics.mean(self.loads) if self.loads else os.getloadavg()[0]
        share["load max"] = max(self.loads, default=share["load mean"])
        return share


# --- Annotators -------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    kind: str  # "submit" (save + claim + render the next item) or "get" (re-serve the leased item)
    at: float  # seconds since the start of the run
    server_ms: float
    rtt_ms: float
    ok: bool


@dataclass
class Annotator:
    username: str
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    submitted: int = 0
    queue_empty: bool = False


def server_ms(response: requests.Response) -> float:
    match = SERVER_TIMING.search(response.headers.get("Server-Timing", ""))
    return float(match.group(1)) if match else float("nan")


def annotate(who: Annotator, base: str, project_pk: int, args: argparse.Namespace, ready: threading.Barrier,
             t0: list[float]) -> None:
    rng = random.Random(who.username)
    session = requests.Session()
    label_url = f"{base}/projects/{project_pk}/label/"
    submit_url = f"{label_url}submit/"
    try:
        session.get(f"{base}/accounts/login/", timeout=30)
        login = session.post(f"{base}/accounts/login/", allow_redirects=False, timeout=30, data={
            "username": who.username, "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]})
        if login.status_code != 302:
            raise RuntimeError(f"login answered {login.status_code}")
        page = session.get(label_url, timeout=30).text
    except Exception as exc:  # noqa: BLE001 - reported, and the barrier must still be reached
        who.errors.append(f"setup: {exc!r}")
        page = ""
    headers = {"HX-Request": "true", "X-CSRFToken": session.cookies.get("csrftoken", "")}
    ready.wait()
    if not page:
        return
    deadline = t0[0] + args.seconds
    while time.perf_counter() < deadline:
        ticket, keys, version = TICKET.search(page), LABEL_KEY.findall(page), VERSION.search(page)
        if ticket is None or not keys:
            who.queue_empty = "Nothing left to label" in page
            if not who.queue_empty:
                who.errors.append("no item in the response")
            return
        data = {"ticket": ticket.group(1), "label": rng.choice(keys),
                "taxonomy_version": version.group(1) if version else ""}
        start = time.perf_counter()
        try:
            response = session.post(submit_url, data=data, headers=headers, timeout=60)
        except requests.RequestException as exc:
            who.errors.append(f"submit: {exc!r}")
            return
        rtt = (time.perf_counter() - start) * 1000
        ok = response.status_code == 200 and 'class="msg error"' not in response.text
        who.samples.append(Sample("submit", start - t0[0], server_ms(response), rtt, ok))
        if not ok:
            who.errors.append(f"submit {data['ticket']}: HTTP {response.status_code} "
                              f"{re.findall(r'class=.msg error.[^>]*>([^<]*)', response.text)[:1]}")
            if len(who.errors) > 5:
                return
        else:
            who.submitted += 1
        page = response.text
        if args.think:
            time.sleep(min(rng.expovariate(1 / args.think), max(deadline - time.perf_counter(), 0)))
        if args.get_every and who.submitted % args.get_every == 0:
            start = time.perf_counter()
            response = session.get(label_url, headers=headers, timeout=60)
            rtt = (time.perf_counter() - start) * 1000
            again = TICKET.search(response.text)
            ok = response.status_code == 200 and again is not None and again.group(1) == TICKET.search(page).group(1)  # type: ignore[union-attr]
            who.samples.append(Sample("get", start - t0[0], server_ms(response), rtt, ok))
            if not ok:
                who.errors.append(f"re-serve: HTTP {response.status_code}, ticket changed or missing")


# --- Report -----------------------------------------------------------------------------------------------------


def pct(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return (float("nan"),) * 3  # type: ignore[return-value]
    p = np.percentile(np.asarray(values), [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


def interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--labelled", type=int, default=5_000, help="items labelled before the run")
    parser.add_argument("--labelled-order", choices=("random", "top"), default="random",
                        help="where the labelled items sit in the serve order")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--annotators", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--think", type=float, default=0,
                        help="mean seconds an annotator reads before the next submit (exponential; 0: none, "
                             "which measures capacity)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds at the start left out of the figures")
    parser.add_argument("--window", type=float, default=10, help="seconds per window of the p95 trend")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--get-every", type=int, default=10, help="re-serve GET every N submissions (0: never)")
    parser.add_argument("--target-ms", type=float, default=50)
    parser.add_argument("--db", default="labelhub_queue_bench")
    parser.add_argument("--server", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--texts", type=Path, default=ROOT / "demo" / "legal_overruling.csv")
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    env = {**os.environ, "DATABASE_URL": f"{args.server}/{args.db}", "REDIS_URL": args.redis, "DEBUG": "0",
           "SECRET_KEY": "bench", "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
           # Plain http on loopback: secure cookies would never be sent back.
           "SECURE_COOKIES": "0", "SECURE_SSL_REDIRECT": "0", "DJANGO_SETTINGS_MODULE": "labelhub.settings",
           "STATIC_ROOT": str(Path(tempfile.gettempdir()) / "labelhub_queue_bench_static"), "LOG_LEVEL": "WARNING"}
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    load_start = loadavg()
    print(f"load average at start (1/5/15 min): {load_start} on {os.cpu_count()} CPUs")
    recreate_database(args.server, args.db)
    t = time.perf_counter()
    call_command("migrate", verbosity=0)
    print(f"database {args.db}: migrated in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    filled = fill(args)
    project_pk = filled["project"]
    print(f"filled {args.examples:,} examples + scores, {args.labelled:,} labelled ({args.labelled_order} in the "
          f"serve order), {args.seeds} seeds, {args.annotators} annotators in {time.perf_counter() - t:.1f}s")
    plan_before, ms_before, index_before = explain(project_pk, filled["annotators"][0])
    print(f"candidate query before the run: {ms_before:.2f} ms, example_score_serve_order used: {index_before}")
    connections.close_all()

    redis.Redis.from_url(args.redis).flushdb()
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"queue_bench_gunicorn_{port}.log"
    static_note = collect_static(env, log)
    if static_note:
        print(f"WARNING: {static_note}")
    server = start_server(args, env, port, log)
    previous = signal.signal(signal.SIGTERM, interrupt)  # `kill` stops gunicorn too, like Ctrl-C
    annotators = [Annotator(name) for name in filled["annotators"]]
    try:
        print(f"gunicorn: {args.workers} sync workers on 127.0.0.1:{port} (log {log}); "
              f"{args.annotators} annotators for {args.seconds:.0f}s, think time {args.think:g}s")
        t0 = [0.0]
        # The clock starts once everyone has logged in (PBKDF2 makes logins slow) and has an item on screen.
        ready = threading.Barrier(len(annotators) + 1, action=lambda: t0.__setitem__(0, time.perf_counter()))
        threads = [threading.Thread(target=annotate, args=(a, f"http://127.0.0.1:{port}", project_pk, args, ready, t0),
                                    daemon=True) for a in annotators]
        for thread in threads:
            thread.start()
        cpu = CpuShare(server, args.server, args.db)
        ready.wait()
        cpu.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - t0[0]
        share = cpu.stop()
    finally:
        stop_server(server)
        signal.signal(signal.SIGTERM, previous)
    load_end = loadavg()

    samples = [s for a in annotators for s in a.samples]
    errors = [f"{a.username}: {e}" for a in annotators for e in a.errors]
    measured = [s for s in samples if s.at >= args.warmup and s.ok]
    submits = [s for s in measured if s.kind == "submit"]
    gets = [s for s in measured if s.kind == "get"]
    total_ok = sum(a.submitted for a in annotators)
    span = max(min(elapsed, args.seconds) - args.warmup, 1e-9)
    print(f"\nload average at end (1/5/15 min): {load_end}; 1-min load during the run: mean {share['load mean']:.2f}, "
          f"max {share['load max']:.2f}")
    print(f"CPU in use during the run, in cores of {os.cpu_count()}: machine {share['machine']:.2f} = bench "
          f"{share['client'] + share['gunicorn'] + share['postgres']:.2f} (client {share['client']:.2f}, gunicorn "
          f"{share['gunicorn']:.2f}, its PostgreSQL backends {share['postgres']:.2f}) + everything else "
          f"{share['others']:.2f}")
    served = len([x for x in samples if x.ok])
    if served:
        # CPU per request moves less with the neighbours' load than latency does.
        per = {name: share[name] * elapsed / served * 1000 for name in ("gunicorn", "postgres")}
        print(f"CPU per request (all {served:,} after login): gunicorn {per['gunicorn']:.1f} ms, "
              f"PostgreSQL {per['postgres']:.1f} ms")
    print(f"\n{'request':<34} {'n':>6} {'server p50':>10} {'p95':>7} {'p99':>7} {'rtt p50':>8} {'p95':>7} {'p99':>7}")
    for name, rows in (("submit + next item (HTMX POST)", submits), ("re-serve leased item (HTMX GET)", gets)):
        s50, s95, s99 = pct([r.server_ms for r in rows])
        r50, r95, r99 = pct([r.rtt_ms for r in rows])
        print(f"{name:<34} {len(rows):>6} {s50:>8.1f}ms {s95:>5.1f}ms {s99:>5.1f}ms "
              f"{r50:>6.1f}ms {r95:>5.1f}ms {r99:>5.1f}ms")
    s95 = pct([r.server_ms for r in submits])[1]
    print(f"\nsubmissions: {total_ok:,} in {elapsed:.1f}s; {len(submits) / span:.1f}/s after {args.warmup:.0f}s "
          f"warm-up ({len(errors)} errors)")
    print(f"next item p95 (server) / {args.target_ms:.0f} ms target: {s95 / args.target_ms:.2f} "
          f"({'met' if s95 < args.target_ms else 'MISSED'})")
    print("p95 server time of submit + next item per window:")
    for start in np.arange(0, args.seconds, args.window):
        rows = [s.server_ms for s in samples if s.kind == "submit" and s.ok and start <= s.at < start + args.window]
        if rows:
            print(f"  {start:>4.0f}-{start + args.window:<4.0f}s  n={len(rows):>5}  p50 {pct(rows)[0]:6.1f} ms  "
                  f"p95 {pct(rows)[1]:6.1f} ms")
    if any(a.queue_empty for a in annotators):
        print("the queue ran empty for some annotators")
    for line in errors[:10]:
        print(f"error: {line}")

    checks = check_database(project_pk, args.labelled)
    print(f"\ndatabase checks: {checks}")
    failed = (checks["items over overlap"] or checks["items served to >1 annotator"]
              or checks["new annotations"] != total_ok or checks["new submitted assignments"] != total_ok)
    print(f"annotations = successful submissions ({checks['new annotations']:,} = {total_ok:,}): "
          f"{'ok' if not failed else 'FAILED'}")

    plan_after, ms_after, index_after = explain(project_pk, filled["annotators"][0])
    print(f"\ncandidate query after the run ({total_ok:,} more items claimed at the head of the order): "
          f"{ms_after:.2f} ms, example_score_serve_order used: {index_after}")
    print(plan_after)
    prof = profile_submits(project_pk, filled["annotators"][0], 20)
    print(f"\nin-process, one HTMX submit (median of 20, test client, DEBUG off): {prof['queries']:.0f} queries, "
          f"{prof['db_ms']:.1f} ms in the database of {prof['wall_ms']:.1f} ms; slowest:")
    for ms, sql in prof["top"]:
        print(f"  {ms:6.2f} ms  {sql}")
    return 1 if errors or failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; gunicorn stopped", file=sys.stderr)
        sys.exit(130)
