"""Span projects' model update: refit + rescore time on a real conll2003 pool, and the token store's memory.

What the app's update job does for a span project (learning/span_loop.py), without the database: fit the span
model on the labelled sentences' token vectors (warm-started from the previous update's), then rescore the pool
a chunk at a time from the on-disk float16 token store (learning/token_store.py) with the same
``span_quality.score_pool`` (BALD per token summed per sentence, x density, diverse batch of 20). Each update adds
the 20 sentences the previous one ranked first, as annotators working the queue would. As in the app, an update
never searches the prior precision itself once a model exists (``defer_search``): when the labels have grown
enough for a new search it marks it due, the report job runs it (``SpanModel.search_prior``, timed here as
``search_cpu_s``, off the update's path) and its refit replaces the deferred one, which the next update
starts from.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/span_update_bench.py --pool 10000 --updates 12 --replicate 10

Token vectors come from the real encoder (``Encoder.encode_tokens``), cached under var/bench-cache so a rerun
does not encode again. ``--replicate K`` then writes the pool K times (new ids) into a second store and rescores
that once, to show the memory a 10x pool needs (e.g. 100k sentences). Prints wall and CPU seconds (BLAS on one
thread, as the app's jobs run) and RSS (anonymous = the process's own memory; file-backed = mapped token pages,
which the kernel can drop).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from learning import acquisition, bayes, span_quality, token_store  # noqa: E402
from learning import spans as spanml  # noqa: E402
from projects.spanformats import spans_from_tags  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "conll2003" / "train.jsonl"
CACHE = Path(__file__).resolve().parent.parent / "var" / "bench-cache"
LABELS = ["PER", "ORG", "LOC", "MISC"]


def rss() -> dict[str, float]:
    """RssAnon / RssFile / VmHWM of this process in MiB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) / 1024
    return out


class PeakAnon:
    """Samples RssAnon every 20 ms."""

    def __init__(self) -> None:
        self.peak = rss()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss()["RssAnon"])

    def __enter__(self) -> PeakAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def load(n: int) -> tuple[list[str], list[list[tuple[int, int]]], list[list[dict]]]:
    texts, offsets, spans = [], [], []
    with DATA.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if not row["tokens"] or row["tokens"][0] == "-DOCSTART-":
                continue
            text, offs, sp = spans_from_tags(row["tokens"], row["tags"])
            texts.append(text)
            offsets.append(offs)
            spans.append(sp)
            if len(texts) == n:
                break
    return texts, offsets, spans


def token_vectors(texts: list[str], offsets: list[list[tuple[int, int]]]) -> tuple[list[np.ndarray], str, dict]:
    from learning.encoder import get_encoder

    encoder = get_encoder()
    name = encoder.token_name()
    path = CACHE / f"conll{len(texts)}-{name.replace('/', '_')}.npz"
    if path.exists():
        with np.load(path) as data:
            return spanml.unpack(data["flat"], data["bounds"]), name, {"cached": str(path)}
    wall, cpu = time.perf_counter(), time.process_time()
    out: list[np.ndarray] = []
    for lo in range(0, len(texts), 256):
        out += encoder.encode_tokens(texts[lo:lo + 256], offsets[lo:lo + 256])
        print(f"  encoded {len(out)} / {len(texts)}", file=sys.stderr, flush=True)
    figures = {"encode_wall_s": time.perf_counter() - wall, "encode_cpu_s": time.process_time() - cpu}
    flat, bounds = spanml.pack(out, np.float16)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, flat=flat, bounds=bounds)
    return [v.astype(np.float16) for v in out], name, figures


def write_store(root: Path, vectors: list[np.ndarray], ids: np.ndarray, dim: int) -> token_store.TokenStore:
    store = token_store.TokenStore(root, 1, "bench")
    for lo in range(0, len(ids), 2048):  # the embed job's chunks (settings.EMBED_BATCH)
        store.append(ids[lo:lo + 2048], vectors[lo:lo + 2048], dim=dim)
    return store


def rescore(model: spanml.SpanModel, store: token_store.TokenStore, pool: np.ndarray,
            offsets: dict[int, list[tuple[int, int]]], sentence: np.ndarray, density: np.ndarray,
            rng: np.random.Generator) -> span_quality.ScoredPool:
    def chunks():  # type: ignore[no-untyped-def]
        for part, flat, bounds in store.iter_chunks(pool, tokens_per_chunk=32768):
            yield part, flat, bounds, [offsets[(int(i) - 1) % len(offsets) + 1] for i in part]

    return span_quality.score_pool(model, chunks(), len(pool), strategy=acquisition.DEFAULT_STRATEGY, rng=rng,
                                   density=density, example_vectors=lambda: sentence, batch_size=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=10000, help="conll2003 train sentences in the project")
    parser.add_argument("--start", type=int, default=200, help="labelled sentences before the first update")
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument("--replicate", type=int, default=0, help="also rescore a pool this many times larger")
    args = parser.parse_args()

    texts, offsets, spans = load(args.pool)
    n_tokens = sum(len(o) for o in offsets)
    print(f"{len(texts)} sentences, {n_tokens} tokens ({n_tokens / len(texts):.1f} per sentence)")
    vectors, name, enc = token_vectors(texts, offsets)
    dim = next(v.shape[1] for v in vectors if len(v))
    print(f"token vectors: {name}, dim {dim}; {enc}")
    tagset = spanml.TagSet(LABELS)
    tags = [spanml.tag_ids(o, s, tagset) for o, s in zip(offsets, spans, strict=True)]
    ids = np.arange(1, len(texts) + 1, dtype=np.int64)
    offsets_by_id = {int(i): o for i, o in zip(ids, offsets, strict=True)}
    results: dict = {"pool": len(texts), "tokens": n_tokens, "encoder": name, "dim": dim, **enc}

    with tempfile.TemporaryDirectory(dir=CACHE.parent) as tmp, threadpool_limits(limits=1, user_api="blas"):
        before = rss()
        wall = time.perf_counter()
        store = write_store(Path(tmp), vectors, ids, dim)
        results["store_write_s"] = time.perf_counter() - wall
        results["store_bytes"] = store.nbytes()
        del vectors
        flat, bounds = spanml.pack(store.get(ids), np.float32)
        sentence = spanml.sentence_vectors(flat, bounds)
        del flat
        t = time.process_time()
        density = acquisition.information_density(sentence, rng=np.random.default_rng(0))
        results["density_cpu_s"] = time.process_time() - t  # once per project (store.density_of caches it)
        token_store.forget()
        store = token_store.TokenStore(Path(tmp), 1, "bench")
        rng = np.random.default_rng(0)
        labelled = np.sort(rng.choice(len(ids), args.start, replace=False))
        model = None
        updates = []
        for _ in range(args.updates):
            w0, c0 = time.perf_counter(), time.process_time()
            vecs = store.get(ids[labelled])
            targets = [tags[i] for i in labelled]
            model = spanml.SpanModel.fit(vecs, targets, tagset, warm=model, defer_search=True)
            w1, c1 = time.perf_counter(), time.process_time()
            pool_mask = np.ones(len(ids), dtype=bool)
            pool_mask[labelled] = False
            pool = ids[pool_mask]
            with PeakAnon() as peak:
                scored = rescore(model, store, pool, offsets_by_id, sentence[pool_mask], density[pool_mask], rng)
            w2, c2 = time.perf_counter(), time.process_time()
            row = {"labelled": int(len(labelled)), "fit_wall_s": w1 - w0, "fit_cpu_s": c1 - c0,
                   "rescore_wall_s": w2 - w1, "rescore_cpu_s": c2 - c1, "total_wall_s": w2 - w0,
                   "total_cpu_s": c2 - c0, "peak_anon_mib": peak.peak, "suggested": sum(map(len, scored.spans)),
                   "prior_precision": float(model.posterior.prior_precision), "search_cpu_s": 0.0}
            if bayes.search_due(model.posterior):  # the report job's search, off the path; its refit then serves
                c3 = time.process_time()
                model = model.search_prior(vecs, targets)
                row["search_cpu_s"] = time.process_time() - c3
            updates.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            top = np.argsort(-scored.priority)[:20]
            labelled = np.sort(np.concatenate([labelled, np.flatnonzero(pool_mask)[top]]))
        warm = updates[1:]  # the first fit is cold (no previous model)
        results["searches_off_path_cpu_s"] = [round(r["search_cpu_s"], 3) for r in updates if r["search_cpu_s"]]
        for key in ("total_wall_s", "total_cpu_s", "fit_cpu_s", "rescore_cpu_s"):
            values = np.array([r[key] for r in warm])
            results[f"{key}_p50"] = float(np.percentile(values, 50))
            results[f"{key}_p95"] = float(np.percentile(values, 95))
        results["first_update"] = updates[0]
        results["rss_before_mib"] = before
        results["rss_after_mib"] = rss()
        results["peak_anon_rescore_mib"] = max(r["peak_anon_mib"] for r in updates)

        if args.replicate > 1 and model is not None:
            big_ids = np.arange(1, args.replicate * len(ids) + 1, dtype=np.int64)
            source = store.get(ids)
            big_root = Path(tmp) / "big"
            wall = time.perf_counter()
            big = token_store.TokenStore(big_root, 1, "bench")
            for lo in range(0, len(big_ids), 2048):
                part = big_ids[lo:lo + 2048]
                big.append(part, [source[(int(i) - 1) % len(ids)] for i in part], dim=dim)
            del source
            results["big_pool"] = int(len(big_ids))
            results["big_store_bytes"] = big.nbytes()
            results["big_store_write_s"] = time.perf_counter() - wall
            big = token_store.TokenStore(big_root, 1, "bench")
            big_sentence = np.tile(sentence, (args.replicate, 1))
            big_density = np.tile(density, args.replicate)
            anon_before = rss()["RssAnon"]
            with PeakAnon() as peak:
                w, c = time.perf_counter(), time.process_time()
                scored = rescore(model, big, big_ids, offsets_by_id, big_sentence, big_density, rng)
                results["big_rescore_wall_s"] = time.perf_counter() - w
                results["big_rescore_cpu_s"] = time.process_time() - c
            results["big_anon_before_mib"] = anon_before
            results["big_peak_anon_mib"] = peak.peak
            results["big_rss_after_mib"] = rss()
            results["big_sentence_vectors_mib"] = big_sentence.nbytes / 2**20
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
