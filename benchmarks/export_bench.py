"""Export throughput and memory: a 1,000,000-example project through every streamed export format.

    DEBUG=1 DATABASE_URL=postgres://postgres@127.0.0.1:5432/labelhub_bench \\
        .venv/bin/python benchmarks/export_bench.py [--rows 1000000] [--formats csv,jsonl,...]

Creates (and drops) a throwaway project in the database DATABASE_URL names (PostgreSQL: the rows are
made by one INSERT ... SELECT generate_series each, a few seconds for a million), with metadata on
every example, 30 % of them labelled and a model suggestion on the rest. Then runs each format's
export (`learning.exports.stream_export`, what the page, the API and `manage.py export` stream),
counting the bytes without keeping them, and prints rows/s (wall and CPU time) and this process's
peak RSS beside its RSS before the export: flat memory means the peak does not grow with the
number of rows (run with --rows 100000 to compare). spaCy is left out by default: a DocBin is built
in memory (`--formats spacy` measures it).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "labelhub.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from annotation.models import Annotation, ExampleScore  # noqa: E402
from benchmarks.import_bench import PeakRss  # noqa: E402
from learning import exports  # noqa: E402
from projects import taxonomy  # noqa: E402
from projects.models import Example, Project, Team  # noqa: E402

STREAMED = ["csv", "jsonl", "hf-jsonl", "hf-parquet", "label-studio"]


def drop(project: Project) -> None:
    # Raw deletes: the ORM's cascade would load a million rows into memory.
    ExampleScore.objects.filter(project=project)._raw_delete(using="default")
    Annotation.objects.filter(example__project=project)._raw_delete(using="default")
    Example.objects.filter(project=project)._raw_delete(using="default")
    project.delete()


def fill(project: Project, user: User, rows: int) -> None:
    """`rows` examples with metadata, 30 % of them labelled, a model suggestion on the others."""
    version = project.current_taxonomy()
    yes, no = (label.key for label in version.labels.order_by("position"))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Example._meta.db_table} (project_id, text, metadata, external_id, content_hash, created_at) "
            "SELECT %s, 'row ' || g || ' the court ' "
            "|| (ARRAY['overrules', 'affirms', 'remands', 'reverses'])[1 + g %% 4]"
            " || ' the holding in case ' || (g::bigint * 7919 %% 100000) || ' on appeal from the district court', "
            "jsonb_build_object('court', 'court-' || (g %% 50), 'year', 1950 + g %% 70, 'docket', 'D-' || g), "
            "'row-' || g, md5(g::text), now() FROM generate_series(1, %s) AS g",
            [project.pk, rows])
        cursor.execute(
            f"INSERT INTO {Annotation._meta.db_table} (example_id, annotator_id, taxonomy_version_id, label_keys, "
            "spans, source, created_at) SELECT id, %s, %s, "
            "jsonb_build_array(CASE WHEN id %% 2 = 0 THEN %s ELSE %s END), "
            f"'[]', 'ui', now() FROM {Example._meta.db_table} WHERE project_id = %s AND id %% 10 < 3",
            [user.pk, version.pk, yes, no, project.pk])
        cursor.execute(
            f"INSERT INTO {ExampleScore._meta.db_table} (example_id, project_id, model_version_number, predicted_keys,"
            " confidence, score, priority, is_seed, is_routed, suggested_spans, updated_at) SELECT id, project_id, 1, "
            "jsonb_build_array(CASE WHEN id %% 3 = 0 THEN %s ELSE %s END), 0.5 + (id %% 50) / 100.0, 0, 0, false, "
            f"false, '[]', now() FROM {Example._meta.db_table} WHERE project_id = %s AND id %% 10 >= 3",
            [yes, no, project.pk])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default=",".join(STREAMED))
    parser.add_argument("--predictions", action="store_true", help="also export the model's suggestions")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("export_bench makes its rows with PostgreSQL's generate_series: set DATABASE_URL to PostgreSQL.")
    call_command("migrate", verbosity=0)
    user, _ = User.objects.get_or_create(username="export-bench")
    team, _ = Team.objects.get_or_create(name="export-bench")
    for old in team.projects.all():  # left by an interrupted run
        drop(old)
    project = taxonomy.create_project(team, name=f"bench-{os.getpid()}", task_type="single_label", created_by=user,
                                      labels=[taxonomy.LabelSpec("Yes"), taxonomy.LabelSpec("No")])
    try:
        t0 = time.perf_counter()
        fill(project, user, args.rows)
        print(f"database: {connection.vendor}; made {args.rows:,} examples (30 % labelled) in "
              f"{time.perf_counter() - t0:.1f}s")
        for fmt in args.formats.split(","):
            options = exports.parse_options({"format": fmt, "predictions": args.predictions})
            plan = exports.plan_export(project, options)
            rss_before = psutil.Process().memory_info().rss
            size = chunks = 0
            wall, cpu = time.perf_counter(), time.process_time()
            with PeakRss() as rss:
                for chunk in exports.stream_export(plan):
                    size += len(chunk)
                    chunks += 1
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{fmt:<13} {args.rows / wall:>9,.0f} rows/s wall ({wall:6.1f}s), {args.rows / cpu:>9,.0f} rows/s "
                  f"CPU ({cpu:6.1f}s); {size / 1e6:8,.0f} MB in {chunks:,} chunks; RSS before "
                  f"{rss_before / 2**20:,.0f} MiB, peak {rss.peak / 2**20:,.0f} MiB "
                  f"(+{(rss.peak - rss_before) / 2**20:,.0f} MiB)", flush=True)
    finally:
        drop(project)


if __name__ == "__main__":
    main()
