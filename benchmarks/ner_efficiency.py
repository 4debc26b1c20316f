"""NER label efficiency (issue 14): entity-F1 curves of the default strategy against random on the NER
sets, the sentences and tokens the default needs to reach random's entity F1 at the budget, and the
refit + rescore time of a 10k-sentence pool.

Usage (from the repository root):
    .venv/bin/python benchmarks/ner_efficiency.py [--datasets conll2003 sec_filings_ner lener_br] [--repeats 3]
        [--budget 1000] [--batch-size 50] [--max-train 4000] [--max-test 1000] [--report-every 4]
    .venv/bin/python benchmarks/ner_efficiency.py --latency [--pool 10000]
    .venv/bin/python benchmarks/ner_efficiency.py --aggregations sum mean max sqrt --datasets conll2003 ...

Curves run the harness's code (learning.simulation.run_span_strategy: the app's span model, warm
refits, calibration, per-token BALD aggregated per sentence x density + diversity) on a fixed random
subsample of each train file (the pool) and test file, repeat r with seed r for every strategy. Runs
go seed by seed (every strategy of seed 0, then seed 1, ...) and the JSON is rewritten after each, so
a run stopped early still has whole repeats. Token vectors come from Encoder.encode_tokens and are
cached per (encoder, file, subsample) under var/cache/embeddings/tokens. One BLAS thread.

Writes benchmarks/out/ner_efficiency-<set>.json (ignored by git) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "labelhub.settings")

from threadpoolctl import threadpool_limits  # noqa: E402

from learning import acquisition, simulation, spans  # noqa: E402
from learning.encoder import DEFAULT_TOKEN_POOLING, get_encoder  # noqa: E402
from learning.management.commands.simulate import read_tagged_jsonl  # noqa: E402

DATA = Path(os.environ.get("LABELHUB_DATA_DIR", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "out"
CACHE = ROOT / "var" / "cache" / "embeddings" / "tokens"
DATASETS = ["conll2003", "sec_filings_ner", "lener_br"]


def load(name: str, split: str, limit: int, pooling: str) -> tuple[list[np.ndarray], list[list[dict[str, Any]]],
                                                                    list[list[tuple[int, int]]]]:
    path = DATA / name / f"{split}.jsonl"
    texts, offsets, row_spans = read_tagged_jsonl(str(path))
    keep = np.arange(len(texts))
    if len(texts) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(texts), limit, replace=False))
    texts = [texts[i] for i in keep]
    offsets = [offsets[i] for i in keep]
    row_spans = [row_spans[i] for i in keep]
    key = f"{hashlib.sha1(path.read_bytes()).hexdigest()}-{len(keep)}"
    encoder = get_encoder(threads=1)
    started = time.process_time()
    vectors = simulation.cached_token_vectors(encoder, texts, offsets, CACHE, key=key, pooling=pooling)
    print(f"{name}/{split}: {len(texts)} sentences, {sum(len(o) for o in offsets)} tokens, vectors in "
          f"{time.process_time() - started:.1f}s CPU", flush=True)
    return vectors, row_spans, offsets


def curves(args: argparse.Namespace, name: str) -> dict[str, Any]:
    train_vectors, train_spans, train_offsets = load(name, "train", args.max_train, args.pooling)
    test_vectors, test_spans, test_offsets = load(name, "test", args.max_test, args.pooling)
    labels = sorted({s["label"] for row in train_spans for s in row})
    tagset = spans.TagSet(labels)
    train_tags = [spans.tag_ids(o, s, tagset) for o, s in zip(train_offsets, train_spans, strict=True)]
    test_tags = [spans.tag_ids(o, s, tagset) for o, s in zip(test_offsets, test_spans, strict=True)]
    variants = [(s, args.aggregations[0]) for s in args.strategies] if len(args.aggregations) == 1 else \
        [(s, a) for s in args.strategies for a in args.aggregations if s != "random"] + \
        ([("random", args.aggregations[0])] if "random" in args.strategies else [])
    result: dict[str, Any] = {"strategies": {}, "config": {
        "task": "ner", "dataset": name, "strategies": [f"{s}:{a}" if len(args.aggregations) > 1 and s != "random"
                                                       else s for s, a in variants],
        "seed_size": args.seed_size, "batch_size": args.batch_size, "budget": min(args.budget, len(train_tags)),
        "repeats": args.repeats, "label_names": labels, "n_train": len(train_tags), "n_test": len(test_tags),
        "n_train_tokens": int(sum(len(t) for t in train_tags)), "report_every": args.report_every,
        "pooling": args.pooling, "aggregations": args.aggregations, "command": " ".join(sys.argv)}}
    out = OUT / f"ner_efficiency-{name}{args.suffix}.json"
    OUT.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(limits=1, user_api="blas"):
        for seed in range(args.repeats):
            for strategy, aggregation in variants:
                key = f"{strategy}:{aggregation}" if len(args.aggregations) > 1 and strategy != "random" else strategy
                started = time.process_time()

                def progress(s: str, seed_: int, n: int, point: dict[str, float], _key: str = key) -> None:
                    print(f"{name} {_key} seed={seed_} sentences={n} tokens={int(point['n_tokens'])} "
                          f"entity_f1={point['entity_f1']:.3f} update={point['update_cpu_seconds']:.2f}s CPU",
                          flush=True)

                points = simulation.run_span_strategy(
                    strategy, train_vectors=train_vectors, train_tags=train_tags, test_vectors=test_vectors,
                    test_tags=test_tags, tagset=tagset, seed_size=args.seed_size, batch_size=args.batch_size,
                    budget=args.budget, seed=seed, aggregation=aggregation, progress=progress,
                    report_every=args.report_every)
                entry = result["strategies"].setdefault(key, {"runs": []})
                entry["runs"].append({"seed": seed, "points": points, "cpu_seconds": time.process_time() - started})
                complete = {k: v for k, v in result["strategies"].items()}
                # Summaries over the seeds every strategy has finished, so the file is always consistent.
                done = min(len(v["runs"]) for v in complete.values())
                partial = {"strategies": {k: {"runs": v["runs"][:done]} for k, v in complete.items()},
                           "config": result["config"]}
                if "random" not in partial["strategies"] or done == 0:
                    continue
                simulation.summarise_spans(partial)
                partial["config"]["repeats_done"] = done
                out.write_text(json.dumps(partial, indent=1))
                result["summary_view"] = partial
    return result.get("summary_view", result)


def table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(f"\n{cfg['dataset']}: pool {cfg['n_train']} sentences ({cfg['n_train_tokens']} tokens), "
          f"test {cfg['n_test']}, repeats {cfg.get('repeats_done')}, budget {cfg['budget']}, "
          f"seed {cfg['seed_size']}, batch {cfg['batch_size']}")
    print("| strategy | entity-F1 @ budget | AUC | sentences to random@budget | ratio | tokens | token ratio |")
    print("|---|---|---|---|---|---|---|")
    for key, entry in result["strategies"].items():
        s = entry.get("summary")
        if not s:
            continue
        reached, ratio = s["labels_to_reach_random_final"], s["ratio_to_random"]
        tokens, token_ratio = s["tokens_to_reach_random_final"], s["token_ratio_to_random"]
        print(f"| {key} | {s['final_entity_f1']:.3f} | {s['auc_entity_f1']:.3f} | {reached if reached else '-'} | "
              f"{f'{ratio:.2f}' if ratio else '-'} | {f'{tokens:.0f}' if tokens else '-'} | "
              f"{f'{token_ratio:.2f}' if token_ratio else '-'} |")


def latency(args: argparse.Namespace) -> None:
    """Refit + rescore + next batch for a ``--pool``-sentence pool (conll2003 train), CPU time per update:
    warm refits after each batch of ``--batch-size`` from ``--start`` labelled sentences, the default strategy.

    The pool is the ``--max-train`` encoded sentences repeated up to ``--pool`` when there are fewer
    (the time depends on the number of tokens, not on which sentences they are)."""
    vectors, row_spans, offsets = load("conll2003", "train", args.max_train, args.pooling)
    repeat = -(-args.pool // len(vectors))
    vectors, row_spans, offsets = ((list(x) * repeat)[: args.pool] for x in (vectors, row_spans, offsets))
    labels = sorted({s["label"] for row in row_spans for s in row})
    tagset = spans.TagSet(labels)
    tags = [spans.tag_ids(o, s, tagset) for o, s in zip(offsets, row_spans, strict=True)]
    flat, bounds = spans.pack(vectors, np.float16)
    example_vectors = spans.sentence_vectors(flat, bounds)
    density = acquisition.information_density(example_vectors, rng=np.random.default_rng(0))
    rng = np.random.default_rng(0)
    labelled = list(rng.choice(len(vectors), args.start, replace=False))
    times: list[float] = []
    with threadpool_limits(limits=1, user_api="blas"):
        model = spans.SpanModel.fit([vectors[i] for i in labelled], [tags[i] for i in labelled], tagset)
        model.calibrate([vectors[i] for i in labelled], [tags[i] for i in labelled])
        for _ in range(args.updates):
            is_labelled = np.zeros(len(vectors), dtype=bool)
            is_labelled[labelled] = True
            pool = np.flatnonzero(~is_labelled)
            started, wall = time.process_time(), time.perf_counter()
            model = spans.SpanModel.fit([vectors[i] for i in labelled], [tags[i] for i in labelled], tagset, warm=model)
            lengths = np.diff(bounds)
            rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in pool])
            pool_bounds = np.concatenate([[0], np.cumsum(lengths[pool])])
            _, scores = model.example_scores(flat[rows], pool_bounds, density=density[pool], rng=rng)
            picked = spans.select_examples(scores, example_vectors[pool], args.batch_size, rng=rng)
            cpu, elapsed = time.process_time() - started, time.perf_counter() - wall
            times.append(cpu)
            print(f"labelled {len(labelled)} pool {len(pool)} ({int(lengths[pool].sum())} tokens): "
                  f"{cpu:.3f}s CPU, {elapsed:.3f}s wall, lbfgs {model.posterior.info.get('lbfgs_iterations')}",
                  flush=True)
            labelled += [int(i) for i in pool[picked]]
    values = np.array(times)
    print(f"\nrefit + rescore + batch, {len(values)} updates, pool {args.pool} sentences ({len(flat)} tokens) from "
          f"{args.start} labelled: "
          f"CPU p50 {np.percentile(values, 50):.3f}s, p95 {np.percentile(values, 95):.3f}s, max {values.max():.3f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--strategies", nargs="+", default=["random", acquisition.DEFAULT_STRATEGY])
    parser.add_argument("--aggregations", nargs="+", default=[spans.DEFAULT_AGGREGATION], choices=spans.AGGREGATIONS)
    parser.add_argument("--pooling", default=DEFAULT_TOKEN_POOLING, choices=["first", "mean"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--seed-size", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--max-train", type=int, default=4000)
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--report-every", type=int, default=4)
    parser.add_argument("--suffix", default="", help="added to the output file's name")
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--start", type=int, default=500)
    parser.add_argument("--updates", type=int, default=12)
    args = parser.parse_args()
    if args.latency:
        latency(args)
        return
    for name in args.datasets:
        table(curves(args, name))


if __name__ == "__main__":
    main()
