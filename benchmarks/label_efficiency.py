"""Label-efficiency benchmark: learning curves of acquisition strategies on every set.

Usage (from the repository root):
    .venv/bin/python benchmarks/label_efficiency.py [--datasets trec sms_spam] [--repeats 3] [--budget 1000]

Pools are capped so the run fits on 2 CPU cores: at most 10,000 random train rows (the pool)
and 2,000 random test rows per set (fixed seed, so every run and every strategy sees the same
rows). Embeddings come from the EmbeddingCache, so only the first run pays for encoding.

The `small-text` library's strategies (see smalltext_compare.py) run in the same process on the
same embeddings, seed sets, batches, budget and test rows; `--smalltext-strategies` with no
names skips them. Writes the full curves to benchmarks/out/label_efficiency-<set>.json
(ignored by git), a small summary (mean curves) and a PNG per set to benchmarks/results/, and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learning import bayes, metrics, simulation  # noqa: E402
from learning.encoder import EmbeddingCache, get_encoder  # noqa: E402

DATA = Path(os.environ.get("LABELHUB_DATA_DIR", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "out"
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = [
    "ag_news",
    "trec",
    "sst2",
    "sst2_sentences",
    "sms_spam",
    "legal_overruling",
    "it_service_tickets",
    "cfpb_complaints",
    "hwu64",
    "trec_fine",
]
# Sets stored as other files of another set's folder: trec's 50 fine labels.
VARIANTS = {"trec_fine": ("trec", "_fine")}
STRATEGIES = ["random", "entropy", "margin", "bald", "bald_diversity", "bald_density_diversity"]
MAX_TRAIN = 10_000
MAX_TEST = 2_000


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    csv.field_size_limit(sys.maxsize)
    texts: list[str] = []
    labels: list[str] = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            texts.append(row["text"])
            labels.append(row["label"])
    return texts, labels


def capped(texts: list[str], labels: list[str], cap: int, seed: int) -> tuple[list[str], list[str]]:
    if len(texts) <= cap:
        return texts, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=cap, replace=False))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def load_dataset(name: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train texts, train labels, test texts, test labels), capped with a fixed seed."""
    folder, suffix = VARIANTS.get(name, (name, ""))
    train_texts, train_labels = capped(*read_csv(DATA / folder / f"train{suffix}.csv"), MAX_TRAIN, seed=0)
    test_texts, test_labels = capped(*read_csv(DATA / folder / f"test{suffix}.csv"), MAX_TEST, seed=1)
    return train_texts, train_labels, test_texts, test_labels


def cache_dir() -> Path:
    return Path(os.environ.get("LABELHUB_CACHE_DIR", ROOT / "var" / "cache" / "embeddings"))


def embed(name: str) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    train_texts, train_labels, test_texts, test_labels = load_dataset(name)
    cache = EmbeddingCache(cache_dir())
    # PyTorch unless LABELHUB_BENCH_ENCODER_BACKEND says otherwise: every figure in
    # benchmarks/README.md was measured on its vectors, and the CPU default (int8 ONNX) gives others.
    encoder = get_encoder(backend=os.environ.get("LABELHUB_BENCH_ENCODER_BACKEND", "torch"))
    started = time.perf_counter()
    x_train = cache.encode(encoder, train_texts)
    x_test = cache.encode(encoder, test_texts)
    print(f"[{name}] embeddings {x_train.shape} + {x_test.shape} in {time.perf_counter() - started:.1f}s", flush=True)
    return x_train, train_labels, x_test, test_labels


def code_fingerprint() -> dict[str, str]:
    """sha1 (12 hex) of the modules a curve depends on, read when the set starts: several people
    edit them, and a table is only comparable across sets that ran on the same code."""
    return {
        name: hashlib.sha1((ROOT / "learning" / f"{name}.py").read_bytes()).hexdigest()[:12]
        for name in ("simulation", "bayes", "quality", "acquisition", "metrics")
    }


def full_pool_ceiling(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, n_classes: int
) -> float:
    """Macro-F1 of our model fitted on the whole (capped) pool: the most any strategy can reach."""
    posterior = bayes.fit(x_train, y_train, n_classes=n_classes)
    return metrics.macro_f1(y_test, posterior.predict(x_test), n_classes)


def run_dataset(
    name: str,
    *,
    strategies: list[str],
    smalltext_strategies: list[str],
    repeats: int,
    budget: int,
    seed_size: int,
    batch_size: int,
    report_every: int = 1,
    tag: str = "",
    results_dir: Path = RESULTS,
    reference_target: float | None = None,
) -> dict:
    code = code_fingerprint()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    x_train, train_labels, x_test, test_labels = embed(name)
    classes = sorted(set(train_labels))
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([label in index for label in test_labels])
    y_train = np.array([index[c] for c in train_labels])
    y_test = np.array([index[c] for c, k in zip(test_labels, keep, strict=True) if k])
    started = time.perf_counter()
    traces: dict[tuple[str, int], list[dict]] = {}

    def progress(strategy: str, seed: int, n_labels: int, point: dict) -> None:
        if n_labels % 200 < batch_size or n_labels >= min(budget, len(y_train)):
            print(
                f"  [{name}] {strategy:<26} seed {seed} {n_labels:>5} labels  macro-F1 {point['macro_f1']:.3f}  "
                f"ECE {point['ece']:.3f}  update {point['update_seconds']:.2f}s",
                flush=True,
            )

    result = simulation.simulate(
        X_train=x_train,
        y_train=y_train,
        X_test=x_test[keep],
        y_test=y_test,
        n_classes=len(classes),
        strategies=strategies,
        seed_size=seed_size,
        batch_size=batch_size,
        budget=budget,
        repeats=repeats,
        label_names=classes,
        progress=progress,
        report_every=report_every,
        traces=traces,
    )
    result["config"]["dataset"] = name
    result["config"]["report_every"] = report_every
    # Which pool rows each update picked, and the model's prior precision and calibration then
    # (benchmarks/issue12_analysis.py reads them: class coverage, outlier share, lambda).
    result["traces"] = {f"{strategy}/{seed}": steps for (strategy, seed), steps in traces.items()}
    result["y_train"] = y_train.tolist()
    result["config"]["code"] = code
    result["config"]["started_at"] = started_at
    result["config"]["pool_cap"] = MAX_TRAIN
    result["config"]["test_cap"] = MAX_TEST
    result["config"]["full_pool_macro_f1"] = full_pool_ceiling(x_train, y_train, x_test[keep], y_test, len(classes))
    if smalltext_strategies:
        import smalltext_compare

        ours_random = result["strategies"].get("random", {}).get("summary", {})
        result["smalltext"] = smalltext_compare.simulate(
            X_train=x_train,
            y_train=y_train,
            X_test=x_test[keep],
            y_test=y_test,
            n_classes=len(classes),
            strategies=smalltext_strategies,
            seed_size=seed_size,
            batch_size=batch_size,
            budget=budget,
            repeats=repeats,
            reference_target=ours_random.get("target_macro_f1", reference_target),
            progress=progress,
        )
    result["config"]["seconds"] = time.perf_counter() - started
    stem = f"label_efficiency-{name}{f'-{tag}' if tag else ''}"
    OUT.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps(result))
    (results_dir / f"{stem}.json").write_text(json.dumps(summary(result), indent=1) + "\n")
    plot(result, results_dir / f"{stem}.png", title=name)
    return result


def _mean(entry: dict, key: str) -> list[float]:
    return [float(v) for v in np.mean([[p[key] for p in run["points"]] for run in entry["runs"]], axis=0)]


def summary(result: dict) -> dict:
    """What the README needs from a run, small enough to keep in the repository: config,
    summaries and mean curves (the per-repeat curves stay in benchmarks/out)."""

    def part(block: dict) -> dict:
        return {
            name: {
                "summary": entry["summary"],
                "n_labels": [p["n_labels"] for p in entry["runs"][0]["points"]],
                "macro_f1": [round(v, 4) for v in _mean(entry, "macro_f1")],
                "ece": [round(v, 4) for v in _mean(entry, "ece")],
            }
            for name, entry in block["strategies"].items()
        }

    out = {"config": result["config"], "labelhub": part(result)}
    if "smalltext" in result:
        out["smalltext"] = {"config": result["smalltext"]["config"], "strategies": part(result["smalltext"])}
    return out


def plot(result: dict, path: Path, *, title: str) -> None:
    """Two panels with one y-axis: LabelHub's strategies left, small-text's right (if run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [("LabelHub (Bayesian last layer)", result)]
    if "smalltext" in result:
        blocks.append(("small-text (LogisticRegression)", result["smalltext"]))
    fig, axes = plt.subplots(1, len(blocks), figsize=(5.2 * len(blocks), 3.8), sharey=True, squeeze=False)
    target = result["strategies"].get("random", {}).get("summary", {}).get("target_macro_f1")
    for ax, (label, block) in zip(axes[0], blocks, strict=True):
        for name, entry in block["strategies"].items():
            runs = entry["runs"]
            n_labels = np.array([p["n_labels"] for p in runs[0]["points"]])
            values = np.array([[p["macro_f1"] for p in run["points"]] for run in runs])
            color = COLORS.get(name)
            (line,) = ax.plot(n_labels, values.mean(axis=0), label=name, linewidth=1.5, color=color)
            ax.fill_between(n_labels, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.12)
        if target is not None:
            ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="LabelHub random @ budget")
            ax.axvline(result["config"]["budget"] / 3, color="grey", linestyle="--", linewidth=0.8, label="budget / 3")
        ax.set_title(f"{title}: {label}", fontsize=9)
        ax.set_xlabel("labels")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    axes[0][0].set_ylabel("macro-F1 (test; mean, min-max of repeats)")
    low = min(
        float(np.mean([run["points"][0]["macro_f1"] for run in entry["runs"]]))
        for _, block in blocks
        for entry in block["strategies"].values()
    )
    axes[0][0].set_ylim(max(0.0, low - 0.05), min(1.0, result["config"]["full_pool_macro_f1"] + 0.03))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# One colour per strategy in both panels, so "margin" left and right read as the same idea.
COLORS = {
    "random": "tab:blue",
    "least_confidence": "tab:brown",
    "entropy": "tab:orange",
    "margin": "tab:green",
    "bald": "tab:red",
    "bald_diversity": "tab:purple",
    "bald_density_diversity": "tab:pink",
}


def _rows(name: str, result: dict, library: str, block: dict) -> list[str]:
    lines = []
    for strategy, entry in block["strategies"].items():
        s = entry["summary"]
        last = [run["points"][-1] for run in entry["runs"]]
        updates = [p["update_seconds"] for run in entry["runs"] for p in run["points"]]
        reached = s["labels_to_reach_random_final"]
        ratio = s["ratio_to_random"]
        reference = s.get("labels_to_reach_reference", reached)
        lines.append(
            f"| {name} | {result['config']['n_train']:,} | {library} | {strategy} | {s['final_macro_f1']:.3f} | "
            f"{np.mean([p['ece'] for p in last]):.3f} | {f'{reached:,}' if reached is not None else 'not reached'} | "
            f"{f'{ratio:.2f}' if ratio is not None else '-'} | "
            f"{f'{reference:,}' if reference is not None else 'not reached'} | {np.median(updates):.2f} s |"
        )
    return lines


def table(results: dict[str, dict]) -> str:
    """One markdown table. "own random" is the same library's random strategy; the last
    labels column measures everyone against LabelHub's random at the budget."""
    lines = [
        "| set | pool | library | strategy | macro-F1 @ budget | ECE @ budget "
        "| labels to reach own random@budget | ratio | labels to reach LabelHub random@budget | median update |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        lines += _rows(name, result, "LabelHub", result)
        if "smalltext" in result:
            lines += _rows(name, result, "small-text", result["smalltext"])
    return "\n".join(lines)


def ceilings(results: dict[str, dict]) -> str:
    return "\n".join(
        f"- {name}: macro-F1 with the whole pool ({r['config']['n_train']:,} labels) labelled: "
        f"{r['config']['full_pool_macro_f1']:.3f}"
        for name, r in results.items()
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--strategies", nargs="*", default=STRATEGIES,
                        help="LabelHub strategies (none: small-text only)")
    parser.add_argument(
        "--reference-target", type=float,
        help="LabelHub random's macro-F1 at the budget from an earlier run, for small-text-only runs",
    )
    parser.add_argument(
        "--smalltext-strategies",
        nargs="*",
        default=None,
        help="small-text strategies to run beside ours (default: all of them; give none to skip)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--seed-size", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument(
        "--report-every", type=int, default=1,
        help="run the quality report (cross-validation + calibration) at every n-th update and the last only",
    )
    parser.add_argument("--tag", default="", help="suffix of the output files, so variant runs keep apart")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the summaries and PNGs go")
    parser.add_argument("--encode-only", action="store_true", help="fill the embedding cache and stop")
    args = parser.parse_args(argv)
    if args.encode_only:
        for name in args.datasets:
            embed(name)
        return
    if args.smalltext_strategies is None:
        import smalltext_compare

        args.smalltext_strategies = list(smalltext_compare.STRATEGIES)
    results = {}
    for name in args.datasets:
        results[name] = run_dataset(
            name,
            strategies=args.strategies,
            smalltext_strategies=args.smalltext_strategies,
            repeats=args.repeats,
            budget=args.budget,
            seed_size=args.seed_size,
            batch_size=args.batch_size,
            report_every=args.report_every,
            tag=args.tag,
            results_dir=args.results_dir,
            reference_target=args.reference_target,
        )
        print(table({name: results[name]}), flush=True)
        print(ceilings({name: results[name]}), flush=True)
    print()
    print(f"Pools capped at {MAX_TRAIN} random train rows and {MAX_TEST} random test rows per set.")
    print(table(results))
    print(ceilings(results))
    # Named after the sets so one-set-at-a-time runs do not overwrite each other's table.
    stem = f"label_efficiency-{'-'.join(results)}{f'-{args.tag}' if args.tag else ''}"
    (OUT / f"{stem}.md").write_text(table(results) + "\n\n" + ceilings(results) + "\n")


if __name__ == "__main__":
    main()
