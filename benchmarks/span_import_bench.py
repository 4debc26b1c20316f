"""Span-project import time: conll2003 train (14,041 sentences) through the real import path, in each format.

    DEBUG=1 DATABASE_URL=postgres://postgres@127.0.0.1:5432/labelhub_bench OMP_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/span_import_bench.py [--data ../shared/data/conll2003/train.jsonl]

Imports the sentences into a throwaway span project (created and dropped) four ways: pre-tokenized JSONL
{"tokens", "tags"}, the same as a CoNLL file, as {"text", "spans"} (tokenized by spaCy at import, spans
checked against the tokens), and as plain text (tokenized, no annotations); and, as the peer, the same texts
into a classification project through its fast path (COPY). The machine is shared, so beside wall time it
prints the CPU seconds of this process and of the PostgreSQL backend, and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "labelhub.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from import_bench import PeakRss, _backend_process, _cpu, drop  # noqa: E402

from projects import imports, spanformats, taxonomy  # noqa: E402
from projects.models import Dataset, DatasetStatus, Team  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "conll2003" / "train.jsonl"


def write_files(rows: list[dict], folder: Path) -> dict[str, tuple[Path, str, str, str]]:
    """{way: (file, format, text column, label column)}."""
    tokens_tags = folder / "tokens_tags.jsonl"
    conll = folder / "train.conll"
    spans = folder / "spans.jsonl"
    plain = folder / "plain.jsonl"
    with tokens_tags.open("w") as a, conll.open("w") as b, spans.open("w") as c, plain.open("w") as d:
        b.write("-DOCSTART- O\n\n")
        for row in rows:
            a.write(json.dumps(row) + "\n")
            b.write("".join(f"{token} {tag}\n" for token, tag in zip(row["tokens"], row["tags"], strict=True)) + "\n")
            text, _, found = spanformats.spans_from_tags(row["tokens"], row["tags"])
            c.write(json.dumps({"text": text, "spans": found}) + "\n")
            d.write(json.dumps({"text": text}) + "\n")
    return {"tokens/tags JSONL": (tokens_tags, "jsonl", "tokens", "tags"), "CoNLL": (conll, "conll", "tokens", "tags"),
            "text/spans JSONL": (spans, "jsonl", "text", "spans"), "plain text JSONL": (plain, "jsonl", "text", ""),
            "classification peer (plain text JSONL, COPY path)": (plain, "jsonl", "text", "")}


def run(way: str, path: Path, fmt: str, text_column: str, label_column: str, user: User, team: Team) -> None:
    task = "single_label" if way.startswith("classification") else "span"
    for old in team.projects.filter(name="span-bench"):
        drop(old)
    labels = [taxonomy.LabelSpec(name) for name in ("PER", "ORG", "LOC", "MISC")]
    project = taxonomy.create_project(team, name="span-bench", task_type=task, created_by=user, labels=labels)
    dataset = Dataset.objects.create(project=project, name=path.name, file_format=fmt, created_by=user,
                                     columns=[text_column, label_column] if label_column else [text_column],
                                     text_column=text_column, label_column=label_column,
                                     status=DatasetStatus.QUEUED)
    dataset.file.name = str(path.relative_to(settings.MEDIA_ROOT))
    dataset.save()
    backend = _backend_process()
    load = os.getloadavg()[0]
    cpu0, backend0, t0 = time.process_time(), _cpu(backend), time.perf_counter()
    with PeakRss() as rss:
        dataset = imports.run_import(dataset.pk, embed=False)
    wall = time.perf_counter() - t0
    cpu, backend_cpu = time.process_time() - cpu0, _cpu(backend) - backend0
    assert dataset.status == DatasetStatus.DONE, dataset.errors[:3]
    print(f"{way:<50} {dataset.imported_count:>7,} examples {dataset.labelled_count:>7,} labelled  "
          f"wall {wall:5.1f}s  CPU {cpu:5.1f}s + PostgreSQL {backend_cpu:4.1f}s  "
          f"{dataset.total_rows / max(cpu + backend_cpu, 1e-9):7,.0f} sentences/CPU s  "
          f"peak RSS {rss.peak / 2**20:,.0f} MiB  load {load:.1f}")
    drop(project)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    t0 = time.process_time()
    scheme = spanformats.detect_scheme(row["tags"] for row in rows)
    for row in rows:
        spanformats.spans_from_tags(row["tokens"], row["tags"], scheme)
    floor = time.process_time() - t0
    spanformats.tokenize("warm up", "en")
    print(f"{len(rows):,} sentences from {args.data}; database {connection.vendor}, {os.cpu_count()} cores")
    print(f"floor: tags -> spans alone {floor:.2f} CPU s")
    user, _ = User.objects.get_or_create(username="span-import-bench")
    team, _ = Team.objects.get_or_create(name="span-import-bench")
    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.MEDIA_ROOT) as tmp:
        for way, (path, fmt, text_column, label_column) in write_files(rows, Path(tmp)).items():
            run(way, path, fmt, text_column, label_column, user, team)


if __name__ == "__main__":
    main()
