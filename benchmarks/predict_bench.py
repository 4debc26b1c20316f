"""Prediction API latency and throughput on CPU, beside the raw model forward pass.

    psql -h 127.0.0.1 -U postgres -c "create database labelhub_bench"
    DEBUG=0 SECRET_KEY=bench DATABASE_URL=postgres://postgres@127.0.0.1:5432/labelhub_bench \\
        .venv/bin/python benchmarks/predict_bench.py [--workers 2] [--clients 8] [--requests 400]

Sets up a throwaway project from the demo data (LegalBench overruling sentences: the first
--train rows imported with their labels, embedded with the real packaged encoder, one model
fitted), creates an API key, and starts the production server (gunicorn, DEBUG off) on a
loopback port. Then, with texts the model has not seen:

1. one client, one text per request (--requests): p50 / p99 latency;
2. --clients concurrent clients, one text per request: p50 / p99 and requests/s;
3. --clients concurrent clients, --batch texts per request: texts/s;

and, in this process, the raw forward pass on the same texts (encoder + posterior, no HTTP,
no database) one text at a time, for the overhead ratio API p50 / forward p50. The project
is deleted at the end. The threshold is 0 so no request writes routed examples (routing
writes are measured separately with --route).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "labelhub.settings")

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


def start_server(port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DEBUG": "0", "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench",
           "ALLOWED_HOSTS": "127.0.0.1", "LABELHUB_API_KEY_RATE": "1000000/min", "SECURE_COOKIES": "0",
           # One torch thread per worker: workers, not threads, use the cores.
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "gunicorn"), "labelhub.wsgi", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--timeout", "120", "--log-level", "warning"],
        cwd=ROOT, env=env)
    return server


def request(port: int, project_id: int, key: str, texts: list[str]) -> tuple[float, int]:
    body = json.dumps({"texts": texts})
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", f"/api/v1/projects/{project_id}/predict", body=body,
                 headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return time.perf_counter() - started, response.status


def wait_ready(port: int, project_id: int, key: str, text: str) -> None:
    deadline = time.time() + 120
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


def forward_pass(project: Project, texts: list[str]) -> list[float]:
    """Encoder + posterior on one text at a time, in process (what the API wraps)."""
    import torch

    torch.set_num_threads(1)
    encoder = learning_actions.current_encoder()
    model = serving.served_model(project.pk)
    times = []
    for text in texts:
        started = time.perf_counter()
        model.posterior.predict_proba(encoder.encode([text]))
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=600, help="labelled demo rows to fit the model on")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=400, help="single-client requests")
    parser.add_argument("--batch", type=int, default=32, help="texts per request in the batch test")
    parser.add_argument("--route", action="store_true", help="threshold 1.0: every input is routed to a person")
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    project, key, texts = set_up(args.train, 1.0 if args.route else 0.0)
    port = free_port()
    server = start_server(port, args.workers)
    try:
        wait_ready(port, project.pk, key, texts[0])
        for _ in range(2 * args.workers * 5):  # every worker loads the encoder and the model
            request(port, project.pk, key, [texts[1]])
        single, single_wall, failed = load(port, project.pk, key, texts, clients=1, per_request=1,
                                           requests_per_client=args.requests)
        per_client = max(args.requests // args.clients, 10)
        concurrent, conc_wall, failed_c = load(port, project.pk, key, texts, clients=args.clients, per_request=1,
                                               requests_per_client=per_client)
        batch_requests = max(per_client // 4, 4)
        batches, batch_wall, failed_b = load(port, project.pk, key, texts, clients=args.clients,
                                             per_request=args.batch, requests_per_client=batch_requests)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    forward = forward_pass(project, texts[:args.requests])

    ms = 1000.0
    print()
    print(f"server: gunicorn, {args.workers} sync workers, DEBUG off, PostgreSQL; texts unseen by the model; "
          f"{'every input routed' if args.route else 'no routing (threshold 0)'}")
    print("| load | requests | p50 | p99 | throughput | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| 1 client, 1 text | {len(single)} | {percentile(single, 50) * ms:.1f} ms | "
          f"{percentile(single, 99) * ms:.1f} ms | {len(single) / single_wall:.0f} req/s | {failed} |")
    print(f"| {args.clients} clients, 1 text | {len(concurrent)} | {percentile(concurrent, 50) * ms:.1f} ms | "
          f"{percentile(concurrent, 99) * ms:.1f} ms | {len(concurrent) / conc_wall:.0f} req/s | {failed_c} |")
    print(f"| {args.clients} clients, {args.batch} texts | {len(batches)} | {percentile(batches, 50) * ms:.1f} ms | "
          f"{percentile(batches, 99) * ms:.1f} ms | {len(batches) * args.batch / batch_wall:.0f} texts/s | "
          f"{failed_b} |")
    print(f"| raw forward pass (in process, 1 text) | {len(forward)} | {percentile(forward, 50) * ms:.1f} ms | "
          f"{percentile(forward, 99) * ms:.1f} ms | {len(forward) / sum(forward):.0f} texts/s | – |")
    print(f"overhead ratio (API p50 / forward p50, 1 client): "
          f"{percentile(single, 50) / percentile(forward, 50):.2f}; "
          f"API p50 − forward p50 = {(percentile(single, 50) - percentile(forward, 50)) * ms:.1f} ms")
    print(f"target p99 < 50 ms for one text (1 client): {'met' if percentile(single, 99) < 0.05 else 'NOT met'}")
    Project.objects.filter(pk=project.pk).delete()


if __name__ == "__main__":
    main()
