"""Prediction API latency and throughput on CPU, beside the raw model forward pass.

    psql -h 127.0.0.1 -U postgres -c "create database labelhub_bench"
    DEBUG=0 SECRET_KEY=bench DATABASE_URL=postgres://postgres@127.0.0.1:5432/labelhub_bench \\
        .venv/bin/python benchmarks/predict_bench.py [--workers 2] [--clients 8] [--requests 400]

Sets up a throwaway project from the demo data (LegalBench overruling sentences: the first
--train rows imported with their labels, embedded with the real packaged encoder, one model
fitted), creates an API key, and starts the production server (gunicorn, DEBUG off) on a
loopback port. Then, with texts the model has not seen:

1. one client, one text per request (--requests), and right after each request the raw forward
   pass on the same text in this process (encoder + posterior, no HTTP, no database) with each
   encoder backend: PyTorch, ONNX Runtime and int8 ONNX Runtime, one thread each. Interleaved,
   so machine load weighs on all four alike: p50 / p99 of each;
2. --clients concurrent clients, one text per request: p50 / p99 and requests/s;
3. --clients concurrent clients, --batch texts per request: texts/s.

4. span projects (--span-requests, default 200; 0 skips it): a span (NER) project from
   ../shared/data/sec_filings_ner (the first --span-train training sentences with their entities, token
   vectors from the same encoder, a learning.spans.SpanModel saved as model v1 the way the learning
   loop saves it), then one client, one unseen test sentence per request, and right after each the raw
   forward pass in this process (spaCy tokenizer + Encoder.encode_tokens + SpanModel.predict): p50 / p99
   and CPU per call of both. --span-only runs this part alone.

The server encodes with LABELHUB_ENCODER_BACKEND (default auto: ONNX Runtime on CPU); the int8
forward pass uses the float model's posterior, which is right for timing only. The project is
deleted at the end. The threshold is 0 so no request writes routed examples (routing writes
are measured separately with --route).
"""
from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "labelhub.settings")
# The 600 labels the bench fits on pass the automatic fine-tune's threshold: a fine-tune would then train in a
# thread of this process (no Redis) and in the measured seconds. The bench measures serving, not that.
os.environ.setdefault("LABELHUB_FINETUNE_AUTO", "0")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402

from labelhub.jobs import uses_rq  # noqa: E402
from learning import actions as learning_actions  # noqa: E402
from learning.models import ModelVersion, TrainingRun  # noqa: E402
from projects import imports, taxonomy  # noqa: E402
from projects.models import Project, Team  # noqa: E402
from serving import keys  # noqa: E402
from serving import served as serving  # noqa: E402

DEMO = ROOT / "demo" / "legal_overruling.csv"
NER = ROOT.parent / "shared" / "data" / "sec_filings_ner"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_up(train_rows: int, threshold: float) -> tuple[Project, str, list[str]]:
    with DEMO.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    team, _ = Team.objects.get_or_create(name="Prediction benchmark")
    user, _ = User.objects.get_or_create(username="predict-bench")
    Project.objects.filter(team=team).delete()
    project = taxonomy.create_project(team, name="Prediction benchmark", task_type="single_label", created_by=user,
                                     labels=[taxonomy.LabelSpec("Yes"), taxonomy.LabelSpec("No")])
    records = [{"text": r["text"], "label": r["label"]} for r in rows[:train_rows]]
    imports.import_records(project, records=records, user=user, add_unknown_labels=False)
    t0 = time.perf_counter()
    learning_actions.embed_project(project.pk)  # queues the first model update
    deadline = time.time() + 600
    while not ModelVersion.objects.filter(project=project).exists():
        if uses_rq():
            learning_actions.run_training(project.pk)  # no worker needed: claim the queued run here
        failed = TrainingRun.objects.filter(project=project, status="failed").first()
        if failed or time.time() > deadline:
            raise SystemExit(f"training failed: {failed.error if failed else 'timed out'}")
        time.sleep(0.5)
    print(f"set-up: {train_rows} labelled rows embedded and model v1 fitted in {time.perf_counter() - t0:.1f} s")
    serving.set_threshold(project, mode="confidence", confidence_threshold=threshold)
    key = keys.create_api_key(project, name="bench", scopes=["predict"], user=user)[1]
    unseen = [r["text"] for r in rows[train_rows:]]
    return project, key, unseen


def set_up_span(train_rows: int, user: User) -> tuple[Project, str, list[str]]:
    """A span project with model v1 fitted on the first train_rows NER sentences; its key and unseen texts."""
    from annotation.models import Annotation, AnnotationSource
    from learning import spans as spanml
    from projects.importing import content_hash
    from projects.models import Example
    from projects.spanformats import spans_from_tags

    def read(name: str) -> list[tuple[str, list[tuple[int, int]], list[Any]]]:
        rows = [json.loads(line) for line in (NER / name).read_text(encoding="utf-8").splitlines() if line.strip()]
        return [spans_from_tags(r["tokens"], r["tags"]) for r in rows]

    train = read("train.jsonl")[:train_rows]
    names = sorted({str(sp["label"]) for _, _, spans in train for sp in spans})
    team, _ = Team.objects.get_or_create(name="Prediction benchmark (spans)")
    Project.objects.filter(team=team).delete()
    project = taxonomy.create_project(team, name="Span prediction benchmark", task_type="span", created_by=user,
                                     labels=[taxonomy.LabelSpec(n) for n in names])
    version = project.current_taxonomy()
    key_of = dict(version.labels.values_list("name", "key"))
    t0 = time.perf_counter()
    examples = Example.objects.bulk_create(
        Example(project=project, text=text, content_hash=content_hash(text), tokens=[list(o) for o in offsets])
        for text, offsets, _ in train)
    keyed = [[{"start": sp["start"], "end": sp["end"], "label": key_of[str(sp["label"])]} for sp in spans]
             for _, _, spans in train]
    Annotation.objects.bulk_create(
        Annotation(example=e, annotator=user, taxonomy_version=version, spans=sp,
                   label_keys=sorted({str(x["label"]) for x in sp}), source=AnnotationSource.UI)
        for e, sp in zip(examples, keyed, strict=True))
    encoder = learning_actions.current_encoder()
    offsets = [o for _, o, _ in train]
    vectors = encoder.encode_tokens([t for t, _, _ in train], offsets)
    label_keys = [key_of[n] for n in names]
    tagset = spanml.TagSet(label_keys)
    model = spanml.SpanModel.fit(vectors, [spanml.tag_ids(o, sp, tagset) for o, sp in zip(offsets, keyed,
                                                                                          strict=True)], tagset)
    ModelVersion.objects.create(project=project, number=1, taxonomy_version=version, label_keys=label_keys,
                                encoder=encoder.name, strategy="bald", n_labels=len(train),
                                artifact=model.to_npz(), metrics={"task": "span"})
    print(f"set-up (spans): {len(train)} sentences of sec_filings_ner ({len(names)} labels) encoded token by token "
          f"and the span model fitted in {time.perf_counter() - t0:.1f} s")
    serving.set_threshold(project, mode="confidence", confidence_threshold=0.0)
    key = keys.create_api_key(project, name="bench", scopes=["predict"], user=user)[1]
    return project, key, [text for text, _, _ in read("test.jsonl")]


def span_forward(project: Project) -> Callable[[str], tuple[float, float]]:
    """Tokenizer + encode_tokens + SpanModel.predict on one text, in process (what the API wraps)."""
    from projects.spanformats import tokenize

    encoder = learning_actions.current_encoder()
    model = serving.served_model(project.pk)
    assert model.span_model is not None
    span_model = model.span_model
    encoder.encode_tokens(["warm-up text"], [tokenize("warm-up text", model.language)])

    def run(text: str) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        offsets = tokenize(text, model.language)
        span_model.predict(encoder.encode_tokens([text], [offsets]), [offsets])
        return time.perf_counter() - started, time.process_time() - cpu

    return run


def span_interleaved(port: int, project: Project, key: str, texts: list[str],
                     server: subprocess.Popen[bytes]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """The span project's API and raw forward pass, one text at a time, interleaved (as `interleaved`)."""
    import torch

    torch.set_num_threads(1)
    run = span_forward(project)
    times: dict[str, list[float]] = {"api": [], "app": [], "raw": []}
    cpu = {"api": 0.0, "raw": 0.0}
    failed = 0
    for _ in range(10):  # every worker loads the span model and PyTorch's copy of the encoder
        request(port, project.pk, key, [texts[0]])
    api_cpu = server_cpu(server)
    for text in texts:
        seconds, status = request(port, project.pk, key, [text], times["app"])
        times["api"].append(seconds)
        failed += status != 200
        wall, used = run(text)
        times["raw"].append(wall)
        cpu["raw"] += used
    cpu["api"] = server_cpu(server) - api_cpu
    if failed:
        print(f"{failed} span API requests failed")
    return times, {name: value / len(texts) for name, value in cpu.items()}


def start_server(port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DEBUG": "0", "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench",
           "ALLOWED_HOSTS": "127.0.0.1", "LABELHUB_API_KEY_RATE": "1000000/min", "LABELHUB_PLAIN_HTTP": "1",
           # One torch thread per worker: workers, not threads, use the cores.
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "gunicorn"), "labelhub.wsgi", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--timeout", "120", "--log-level", "warning"],
        cwd=ROOT, env=env)
    return server


def request(port: int, project_id: int, key: str, texts: list[str],
            app: list[float] | None = None) -> tuple[float, int]:
    """Seconds until the answer was read, and its status; `app` gets the server's own time (Server-Timing)."""
    body = json.dumps({"texts": texts})
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", f"/api/v1/projects/{project_id}/predict", body=body,
                 headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    if app is not None:
        timing = response.getheader("Server-Timing") or ""
        if timing.startswith("app;dur="):
            app.append(float(timing.split("=", 1)[1]) / 1000)
    return time.perf_counter() - started, response.status


def wait_ready(port: int, project_id: int, key: str, text: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            _, status = request(port, project_id, key, [text])
            if status == 200:
                return
            raise SystemExit(f"server answered {status}")
        except OSError:
            time.sleep(0.5)
    raise SystemExit("server did not start")


def load(port: int, project_id: int, key: str, texts: list[str], *, clients: int, per_request: int,
         requests_per_client: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(requests_per_client):
            start = ((c * requests_per_client + i) * per_request) % max(len(texts) - per_request, 1)
            seconds, status = request(port, project_id, key, texts[start:start + per_request])
            with lock:
                latencies.append(seconds)
                failures[0] += status != 200

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started, failures[0]


BACKENDS = ("torch", "onnx", "onnx-int8")


def forward(project: Project, backend: str) -> Callable[[str], tuple[float, float]]:
    """Encoder + posterior on one text, in process (what the API wraps), on the given encoder backend."""
    from django.conf import settings

    from learning.encoder import get_encoder

    encoder = get_encoder(settings.ENCODER or None, backend=backend, threads=1, onnx_dir=settings.ONNX_DIR)
    model = serving.served_model(project.pk)
    encoder.encode(["warm-up"])

    def run(text: str) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        model.posterior.predict_proba(encoder.encode([text]))
        return time.perf_counter() - started, time.process_time() - cpu

    return run


def server_cpu(server: subprocess.Popen[bytes]) -> float:
    """CPU seconds used so far by the gunicorn workers (the database server's are not included)."""
    import psutil

    total = 0.0
    for child in psutil.Process(server.pid).children(recursive=True):
        times = child.cpu_times()
        total += times.user + times.system
    return total


def interleaved(port: int, project: Project, key: str, texts: list[str],
                server: subprocess.Popen[bytes]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """One client, one text per request, and the raw forward pass of every backend on the same text right
    after it: whatever else runs on the machine weighs on all of them alike. Also the mean CPU time of
    each (the API's from its workers' counters), which machine load inflates far less than wall time."""
    import torch

    torch.set_num_threads(1)
    runs = {backend: forward(project, backend) for backend in BACKENDS}
    times: dict[str, list[float]] = {"api": [], "app": [], **{backend: [] for backend in BACKENDS}}
    cpu = {name: 0.0 for name in times}
    failed = 0
    api_cpu = server_cpu(server)
    for text in texts:
        seconds, status = request(port, project.pk, key, [text], times["app"])
        times["api"].append(seconds)
        failed += status != 200
        for backend, run in runs.items():
            wall, used = run(text)
            times[backend].append(wall)
            cpu[backend] += used
    cpu["api"] = server_cpu(server) - api_cpu
    if failed:
        print(f"{failed} API requests failed")
    return times, {name: value / len(texts) for name, value in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=600, help="labelled demo rows to fit the model on")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=400, help="single-client requests")
    parser.add_argument("--batch", type=int, default=32, help="texts per request in the batch test")
    parser.add_argument("--route", action="store_true", help="threshold 1.0: every input is routed to a person")
    parser.add_argument("--span-requests", type=int, default=200,
                        help="single-client requests to a span (NER) project (0: no span part)")
    parser.add_argument("--span-train", type=int, default=300, help="NER sentences to fit the span model on")
    parser.add_argument("--span-only", action="store_true", help="only the span part")
    parser.add_argument("--span-in-process", action="store_true",
                        help="with --span-only: only the raw in-process forward pass, no server")
    args = parser.parse_args()

    print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}")
    call_command("migrate", verbosity=0)
    span = None
    if args.span_requests and not (NER / "train.jsonl").exists():
        print(f"span part skipped: {NER / 'train.jsonl'} is not there (it needs ../shared/data)")
        args.span_requests = 0
    if args.span_requests:
        user, _ = User.objects.get_or_create(username="predict-bench")
        span = set_up_span(args.span_train, user)
    if args.span_only:
        assert span is not None, "--span-only needs --span-requests > 0"
        if args.span_in_process:
            run = span_forward(span[0])
            raw, used = [], 0.0
            for text in span[2][:args.span_requests]:
                wall, cpu_s = run(text)
                raw.append(wall)
                used += cpu_s
            print(f"| span project: raw tokenize + encode_tokens + SpanModel.predict (in process, 1 text) | "
                  f"{len(raw)} | {percentile(raw, 50) * 1000:.1f} ms | {percentile(raw, 99) * 1000:.1f} ms | "
                  f"{used / len(raw) * 1000:.1f} ms | {len(raw) / sum(raw):.0f} texts/s | – |")
            print(f"/proc/loadavg at the end: {Path('/proc/loadavg').read_text().strip()}")
            Project.objects.filter(pk=span[0].pk).delete()
            return
        port = free_port()
        server = start_server(port, args.workers)
        try:
            # The first span request loads PyTorch's copy of the encoder: minutes on a loaded machine.
            wait_ready(port, span[0].pk, span[1], span[2][0], seconds=600)
            span_times, span_cpu = span_interleaved(port, span[0], span[1], span[2][:args.span_requests], server)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        print_span(args, span_times, span_cpu, header=True)
        Project.objects.filter(pk=span[0].pk).delete()
        return
    project, key, texts = set_up(args.train, 1.0 if args.route else 0.0)
    port = free_port()
    server = start_server(port, args.workers)
    try:
        wait_ready(port, project.pk, key, texts[0])
        for _ in range(2 * args.workers * 5):  # every worker loads the encoder and the model
            request(port, project.pk, key, [texts[1]])
        single, cpu = interleaved(port, project, key, texts[:args.requests], server)
        per_client = max(args.requests // args.clients, 10)
        concurrent, conc_wall, failed_c = load(port, project.pk, key, texts, clients=args.clients, per_request=1,
                                               requests_per_client=per_client)
        batch_requests = max(per_client // 4, 4)
        batches, batch_wall, failed_b = load(port, project.pk, key, texts, clients=args.clients,
                                             per_request=args.batch, requests_per_client=batch_requests)
        if span is not None:
            span_times, span_cpu = span_interleaved(port, span[0], span[1], span[2][:args.span_requests], server)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    ms = 1000.0
    backend = os.environ.get("LABELHUB_ENCODER_BACKEND", "auto")
    print()
    print(f"server: gunicorn, {args.workers} sync workers, DEBUG off, encoder backend {backend}; texts unseen by "
          f"the model; {'every input routed' if args.route else 'no routing (threshold 0)'}; "
          f"/proc/loadavg at the end: {Path('/proc/loadavg').read_text().strip()}")
    print("| load | requests | p50 | p99 | CPU per call | throughput | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    api = single["api"]
    print(f"| API, 1 client, 1 text | {len(api)} | {percentile(api, 50) * ms:.1f} ms | "
          f"{percentile(api, 99) * ms:.1f} ms | {cpu['api'] * ms:.1f} ms | {len(api) / sum(api):.0f} req/s | – |")
    app = single["app"]
    if app:
        print(f"| API, server side (Server-Timing: Django's own time) | {len(app)} | "
              f"{percentile(app, 50) * ms:.1f} ms | {percentile(app, 99) * ms:.1f} ms | – | – | – |")
    for name in BACKENDS:
        values = single[name]
        print(f"| raw {name} (encoder + posterior, in process, 1 text, interleaved) | {len(values)} | "
              f"{percentile(values, 50) * ms:.1f} ms | {percentile(values, 99) * ms:.1f} ms | "
              f"{cpu[name] * ms:.1f} ms | {len(values) / sum(values):.0f} texts/s | – |")
    print(f"| API, {args.clients} clients, 1 text | {len(concurrent)} | {percentile(concurrent, 50) * ms:.1f} ms | "
          f"{percentile(concurrent, 99) * ms:.1f} ms | – | {len(concurrent) / conc_wall:.0f} req/s | {failed_c} |")
    print(f"| API, {args.clients} clients, {args.batch} texts | {len(batches)} | "
          f"{percentile(batches, 50) * ms:.1f} ms | {percentile(batches, 99) * ms:.1f} ms | – | "
          f"{len(batches) * args.batch / batch_wall:.0f} texts/s | {failed_b} |")
    served_by = "onnx" if backend in ("auto", "onnx") else backend
    print(f"API p50 − raw {served_by} p50 = {(percentile(api, 50) - percentile(single[served_by], 50)) * ms:.1f} ms")
    print(f"target p99 ≤ 20 ms for one text (API, 1 client): {'met' if percentile(api, 99) <= 0.02 else 'NOT met'}")
    if span is not None:
        print_span(args, span_times, span_cpu, header=False)
        Project.objects.filter(pk=span[0].pk).delete()
    Project.objects.filter(pk=project.pk).delete()


def print_span(args: argparse.Namespace, times: dict[str, list[float]], cpu: dict[str, float], *,
               header: bool) -> None:
    """The span project's rows, in the classification table's columns."""
    ms = 1000.0
    if header:
        print()
        print(f"server: gunicorn, {args.workers} sync workers, DEBUG off, encoder backend "
              f"{os.environ.get('LABELHUB_ENCODER_BACKEND', 'auto')} (token vectors: PyTorch); /proc/loadavg at "
              f"the end: {Path('/proc/loadavg').read_text().strip()}")
        print("| load | requests | p50 | p99 | CPU per call | throughput | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|")
    api, raw, app = times["api"], times["raw"], times["app"]
    print(f"| span project: API, 1 client, 1 text | {len(api)} | {percentile(api, 50) * ms:.1f} ms | "
          f"{percentile(api, 99) * ms:.1f} ms | {cpu['api'] * ms:.1f} ms | {len(api) / sum(api):.0f} req/s | – |")
    if app:
        print(f"| span project: API, server side (Server-Timing) | {len(app)} | {percentile(app, 50) * ms:.1f} ms | "
              f"{percentile(app, 99) * ms:.1f} ms | – | – | – |")
    print(f"| span project: raw tokenize + encode_tokens + SpanModel.predict (in process, 1 text, interleaved) | "
          f"{len(raw)} | {percentile(raw, 50) * ms:.1f} ms | {percentile(raw, 99) * ms:.1f} ms | "
          f"{cpu['raw'] * ms:.1f} ms | {len(raw) / sum(raw):.0f} texts/s | – |")


if __name__ == "__main__":
    main()
