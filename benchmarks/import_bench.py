"""Import throughput and memory: a generated 1,000,000-row CSV through the real import path.

    DEBUG=1 DATABASE_URL=postgres://postgres@127.0.0.1:5432/labelhub_bench \\
        .venv/bin/python benchmarks/import_bench.py [--rows 1000000]

Creates (and drops) a throwaway project in the database DATABASE_URL names. Prints rows/s
for the two phases (check + COPY, then staging table -> examples and annotations), the peak
RSS of this process beside its RSS before the import (flat memory means the peak does not
grow with the file: run with --rows 100000 to compare),
and the ratio to the floor: one plain csv.reader pass over the same file. On a shared machine
wall time moves with the load, so it also prints the CPU seconds of this process and of the
PostgreSQL backend that served the import (a local server: psutil reads its process), the rows
per CPU second of both together, and the load average before and after.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "labelhub.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from annotation.models import Annotation  # noqa: E402
from projects import imports, taxonomy  # noqa: E402
from projects.models import Dataset, DatasetStatus, Example, Project, Team  # noqa: E402

WORDS = ("court overrule precedent holding appeal statute contract plaintiff defendant motion judgment "
         "evidence ticket printer password invoice refund account network laptop email").split()


def generate(path: Path, rows: int, labelled_share: float, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"])
        for i in range(rows):
            text = f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))
            label = rng.choice(("Yes", "No")) if rng.random() < labelled_share else ""
            writer.writerow([f"row-{i}", text, label])


class PeakRss:
    """Samples this process's RSS every 50 ms from a thread."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _backend_process() -> psutil.Process | None:
    """The PostgreSQL backend serving this connection, when the server runs on this machine."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def drop(project: Project) -> None:
    # Raw deletes: the ORM's cascade would load a million rows into memory.
    Annotation.objects.filter(example__project=project)._raw_delete(using="default")
    Example.objects.filter(project=project)._raw_delete(using="default")
    project.delete()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--labelled-share", type=float, default=0.3)
    args = parser.parse_args()
    if connection.vendor == "postgresql":
        call_command("migrate", verbosity=0)

    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.MEDIA_ROOT) as tmp:
        path = Path(tmp) / "bench.csv"
        t0 = time.perf_counter()
        generate(path, args.rows, args.labelled_share)
        size_mb = path.stat().st_size / 1e6
        print(f"generated {args.rows:,} rows ({size_mb:,.0f} MB) in {time.perf_counter() - t0:.1f}s")

        t0 = time.perf_counter()
        with path.open(newline="", encoding="utf-8") as handle:
            floor_rows = sum(1 for _ in csv.reader(handle)) - 1
        floor_s = time.perf_counter() - t0

        user, _ = User.objects.get_or_create(username="import-bench")
        team, _ = Team.objects.get_or_create(name="import-bench")
        for old in team.projects.filter(name="bench"):
            drop(old)
        project = taxonomy.create_project(team, name="bench", task_type="single_label", created_by=user,
                                         labels=[taxonomy.LabelSpec("Yes"), taxonomy.LabelSpec("No")])
        dataset = Dataset.objects.create(project=project, name=path.name, file_format="csv", created_by=user,
                                         columns=["id", "text", "label"], text_column="text",
                                         label_column="label", id_column="id", status=DatasetStatus.QUEUED)
        dataset.file.name = str(path.relative_to(settings.MEDIA_ROOT))  # read in place: no copy
        dataset.save()
        phases: dict[str, float] = {}
        last = {"phase": "", "t": time.perf_counter()}

        def progress(done: int, total: int, phase: str) -> None:
            now = time.perf_counter()
            if phase != last["phase"]:
                last.update(phase=phase, t=now)
            phases[phase] = now - last["t"]

        rss_before = psutil.Process().memory_info().rss
        backend = _backend_process()
        load_before = os.getloadavg()
        cpu0, backend0 = time.process_time(), _cpu(backend)
        t0 = time.perf_counter()
        with PeakRss() as rss:
            dataset = imports.run_import(dataset.pk, progress=progress)
        total_s = time.perf_counter() - t0
        cpu_s, backend_s = time.process_time() - cpu0, _cpu(backend) - backend0
        load_after = os.getloadavg()
        assert dataset.status == DatasetStatus.DONE, dataset.errors[:3]
        print(f"database: {connection.vendor}")
        print(f"imported {dataset.imported_count:,} examples, {dataset.labelled_count:,} labelled, "
              f"{dataset.duplicate_count:,} duplicates")
        print(f"total: {total_s:.1f}s = {args.rows / total_s:,.0f} rows/s "
              f"(check + COPY ~{phases.get('validating', 0):.1f}s, "
              f"staging -> examples + annotations ~{phases.get('importing', 0):.1f}s)")
        print(f"floor: plain csv.reader pass {floor_s:.2f}s = {floor_rows / floor_s:,.0f} rows/s; "
              f"import takes {total_s / floor_s:.1f}x the floor")
        print(f"CPU: this process {cpu_s:.1f}s, PostgreSQL backend {backend_s:.1f}s "
              f"= {args.rows / max(cpu_s + backend_s, 1e-9):,.0f} rows per CPU second "
              f"({args.rows / max(cpu_s, 1e-9):,.0f} per CPU second of Python alone)")
        print(f"load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f} "
              f"on {os.cpu_count()} cores")
        print(f"RSS before import {rss_before / 2**20:,.0f} MiB, peak during import {rss.peak / 2**20:,.0f} MiB "
              f"(+{(rss.peak - rss_before) / 2**20:,.0f} MiB for a {size_mb:,.0f} MB file)")
        drop(project)


if __name__ == "__main__":
    main()
