"""Embedding throughput: the app's path (`learning.actions.embed_project`) against the raw encoder, same texts.

    psql -h 127.0.0.1 -U postgres -c "create database labelhub_bench"
    DEBUG=0 SECRET_KEY=bench DATABASE_URL=postgres://postgres@127.0.0.1:5432/labelhub_bench \\
        .venv/bin/python benchmarks/encode_bench.py [--set trec] [--n 2000] [--repeats 2] \\
        [--backends torch onnx onnx-int8] [--sentence-transformers]

Texts: the first --n train rows of a set in ../shared/data (default trec: 5,452 short questions,
the set a new user embedded in issue 11). One process, one torch/BLAS/ONNX thread (as a worker
runs). For each backend, interleaved --repeats times so both see the same machine load:

- raw: `Encoder.encode(texts)` on the process's encoder (tokenise, batch by token count, forward,
  pool), no database;
- app: `embed_project` on a throwaway project holding the same texts: read the ids and texts,
  encode, store the float16 chunks, report progress to the cache, rank the seed batch. Its
  embeddings are deleted before each repeat, so every repeat encodes everything.

Prints texts/s for both (wall clock: best and median of the repeats; this process's CPU time,
which the load of a shared machine inflates far less) and app / raw, the figure issue 11 asks to
be ≥ 0.9: the median of the per-repeat wall ratios, and the ratio of median CPU times (the
database server's own time is not in the CPU figure; it is in the wall one).
--sentence-transformers adds `SentenceTransformer.encode` (PyTorch) as an outside reference.
The model load is timed separately (once per process, not per job).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "labelhub.settings")

import django  # noqa: E402

django.setup()

import torch  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.label_efficiency import DATA, read_csv  # noqa: E402
from learning import actions, store  # noqa: E402
from learning.models import EmbeddingChunk  # noqa: E402
from projects import taxonomy  # noqa: E402
from projects.importing import content_hash  # noqa: E402
from projects.models import Example, Project, Team  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="trec")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    parser.add_argument("--sentence-transformers", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    threadpool_limits(1)
    settings.ENCODER_THREADS = 1
    call_command("migrate", verbosity=0)

    texts = read_csv(DATA / args.set / "train.csv")[0][: args.n]
    team, _ = Team.objects.get_or_create(name="Encode benchmark")
    user, _ = User.objects.get_or_create(username="encode-bench")
    Project.objects.filter(team=team).delete()
    project = taxonomy.create_project(team, name="Encode benchmark", task_type="single_label", created_by=user,
                                      labels=[taxonomy.LabelSpec("A"), taxonomy.LabelSpec("B")])
    # Inserted directly: an import would queue its own embedding job.
    Example.objects.bulk_create(Example(project=project, text=t, content_hash=content_hash(t))
                                for t in dict.fromkeys(texts))
    texts = list(dict.fromkeys(texts))
    n = len(texts)

    encoders = {}
    for backend in args.backends:
        settings.ENCODER_BACKEND = backend
        started = time.perf_counter()
        encoders[backend] = actions.current_encoder()
        print(f"{backend}: {encoders[backend]!r} loaded in {time.perf_counter() - started:.1f} s "
              "(exported on first use for ONNX)", flush=True)
        encoders[backend].encode(texts[:64])  # warm-up
    reference = None
    if args.sentence_transformers:
        from sentence_transformers import SentenceTransformer

        from learning.encoder import default_model_path

        reference = SentenceTransformer(default_model_path(), device="cpu")

    times: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}  # this process's CPU seconds: what machine load does not inflate
    for repeat in range(args.repeats):
        for backend, encoder in encoders.items():
            settings.ENCODER_BACKEND = backend
            started, cpu = time.perf_counter(), time.process_time()
            encoder.encode(texts)
            times.setdefault(f"{backend} raw", []).append(time.perf_counter() - started)
            cpus.setdefault(f"{backend} raw", []).append(time.process_time() - cpu)

            EmbeddingChunk.objects.filter(project=project).delete()
            store.forget(project.pk)
            started, cpu = time.perf_counter(), time.process_time()
            done = actions.embed_project(project.pk)
            times.setdefault(f"{backend} app", []).append(time.perf_counter() - started)
            cpus.setdefault(f"{backend} app", []).append(time.process_time() - cpu)
            assert done == n, (done, n)
        if reference is not None:
            started, cpu = time.perf_counter(), time.process_time()
            reference.encode(texts, batch_size=64, convert_to_numpy=True)
            times.setdefault("sentence-transformers", []).append(time.perf_counter() - started)
            cpus.setdefault("sentence-transformers", []).append(time.process_time() - cpu)
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {n / v[-1]:.0f}/s" for k, v in times.items()), flush=True)

    print()
    print(f"{n:,} {args.set} texts, 1 thread, {args.repeats} interleaved repeats, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| path | wall texts/s, best | wall, median | CPU texts/s, median |")
    print("|---|---:|---:|---:|")
    for key, values in times.items():
        print(f"| {key} | {n / min(values):.0f} | {n / statistics.median(values):.0f} | "
              f"{n / statistics.median(cpus[key]):.0f} |")
    for backend in encoders:
        raw, app = times[f"{backend} raw"], times[f"{backend} app"]
        pairs = [r / a for r, a in zip(raw, app, strict=True)]
        cpu = statistics.median(cpus[f"{backend} raw"]) / statistics.median(cpus[f"{backend} app"])
        print(f"{backend}: app / raw = {statistics.median(pairs):.2f} wall (median of the repeats: "
              f"{', '.join(f'{p:.2f}' for p in pairs)}), {cpu:.2f} CPU")
    Project.objects.filter(pk=project.pk).delete()


if __name__ == "__main__":
    main()
