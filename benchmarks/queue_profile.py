"""In-process cost of one submit + next item (HTMX), without HTTP or gunicorn: statements and CPU.

    .venv/bin/python benchmarks/queue_profile.py [--examples 20000 --submits 300 --profile]

Recreates its own database (--db, default labelhub_queue_profile), fills it as queue_bench.py does
(smaller by default), logs one annotator in with the test client and posts --submits labels, each
answered with the next item. Prints the median statements per request, this process's CPU time
per request (p50 / p95: load from other processes weighs less on it than on wall time), wall time,
and with --profile the functions that took the most CPU.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--labelled", type=int, default=1_000)
    parser.add_argument("--submits", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--db", default="labelhub_queue_profile")
    parser.add_argument("--server", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9",
                        help="job queue, flushed; nobody consumes it, so no training runs in this process")
    args = parser.parse_args()
    os.environ.update({"DATABASE_URL": f"{args.server}/{args.db}", "DEBUG": "0", "SECRET_KEY": "bench",
                       "ALLOWED_HOSTS": "testserver", "SECURE_COOKIES": "0", "SECURE_SSL_REDIRECT": "0",
                       "LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "labelhub.settings",
                       "LABELHUB_DATA_DIR": tempfile.mkdtemp(prefix="queue_profile_")})
    os.environ["REDIS_URL"] = args.redis
    import django

    django.setup()
    import queue_bench
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings

    # No collectstatic here: plain static storage (only the {% static %} URLs in the page differ).
    override_settings(STORAGES={**settings.STORAGES, "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}).enable()
    queue_bench.recreate_database(args.server, args.db)
    queue_bench.redis.Redis.from_url(args.redis).flushdb()
    call_command("migrate", verbosity=0)
    fill_args = argparse.Namespace(examples=args.examples, labelled=args.labelled, labelled_order="random",
                                   seeds=20, annotators=2, batch=5_000, seed=0, texts=queue_bench.ROOT / "demo"
                                   / "legal_overruling.csv")
    filled = queue_bench.fill(fill_args)
    pk = filled["project"]
    client = Client()
    from django.contrib.auth.models import User

    client.force_login(User.objects.get(username=filled["annotators"][0]))
    first = client.get(f"/projects/{pk}/label/", HTTP_HX_REQUEST="true")
    assert first.status_code == 200, (first.status_code, first.content[:300])
    page = first.content.decode()
    counts, cpu_ms, wall_ms = [], [], []
    profiler = cProfile.Profile(time.process_time)  # CPU, not waiting on the database
    for _ in range(args.submits):
        ticket = queue_bench.TICKET.search(page).group(1)  # type: ignore[union-attr]
        key = queue_bench.LABEL_KEY.search(page).group(1)  # type: ignore[union-attr]
        with CaptureQueriesContext(connection) as ctx:
            c0, t0 = time.process_time(), time.perf_counter()
            if args.profile:
                profiler.enable()
            response = client.post(f"/projects/{pk}/label/submit/", {"ticket": ticket, "label": key},
                                   HTTP_HX_REQUEST="true")
            if args.profile:
                profiler.disable()
            cpu_ms.append((time.process_time() - c0) * 1000)
            wall_ms.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.status_code
        page = response.content.decode()
        counts.append(len(ctx.captured_queries))
    skip = min(20, args.submits // 5)  # warm-up: first requests fill caches
    cpu, wall = sorted(cpu_ms[skip:]), sorted(wall_ms[skip:])

    def p95(values: list[float]) -> float:
        return values[int(0.95 * (len(values) - 1))]

    print(f"{len(cpu)} submits + next item (after {skip} warm-up), statements per request median "
          f"{statistics.median(counts):.0f}: CPU p50 {statistics.median(cpu):.1f} ms, p95 {p95(cpu):.1f} ms; "
          f"wall p50 {statistics.median(wall):.1f} ms, p95 {p95(wall):.1f} ms; load {os.getloadavg()[0]:.1f}")
    print("statements of the last request:")
    for q in ctx.captured_queries:
        print("   ", q["sql"][:150])
    if args.profile:
        ours = r"labelhub|annotation|projects|learning|serving|template/base|template/loader|auth|sessions|middleware"
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(ours, 45)


if __name__ == "__main__":
    main()
