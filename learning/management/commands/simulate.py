"""``manage.py simulate``: replay labelled CSVs with a simulated annotator (the evaluation harness)."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from learning import acquisition, simulation


def read_labelled_csv(path: str, *, multi_label: bool) -> tuple[list[str], list[list[str]]]:
    csv.field_size_limit(sys.maxsize)
    texts: list[str] = []
    labels: list[list[str]] = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise CommandError(f"{path}: expected columns text,label, got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                raw = (row["label"] or "").strip()
                parts = [p.strip() for p in raw.split("|") if p.strip()] if multi_label else [raw]
                if not multi_label and not raw:
                    raise CommandError(f"{path}:{line}: empty label")
                texts.append(row["text"] or "")
                labels.append(parts)
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path}: {exc}") from exc
    if not texts:
        raise CommandError(f"{path}: no rows")
    return texts, labels


class Command(BaseCommand):
    help = "Compare acquisition strategies by replaying a labelled train/test split."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--train", required=True)
        parser.add_argument("--test", required=True)
        parser.add_argument("--strategy", action="append", dest="strategies", choices=sorted(acquisition.STRATEGIES))
        parser.add_argument("--seed-size", type=int, default=50)
        parser.add_argument("--batch-size", type=int, default=20)
        parser.add_argument("--budget", type=int, default=1000)
        parser.add_argument("--repeats", type=int, default=3)
        parser.add_argument("--out", required=True)
        parser.add_argument("--plot")
        parser.add_argument("--multi-label", action="store_true")
        parser.add_argument("--encoder", help="path to a sentence-transformers model folder")
        parser.add_argument("--cache-dir")

    def handle(self, *args: Any, **options: Any) -> None:
        from learning.encoder import EmbeddingCache, get_encoder

        multi_label: bool = options["multi_label"]
        strategies = options["strategies"] or ["random", acquisition.DEFAULT_STRATEGY]
        train_texts, train_labels = read_labelled_csv(options["train"], multi_label=multi_label)
        test_texts, test_labels = read_labelled_csv(options["test"], multi_label=multi_label)
        names = sorted({label for row in train_labels for label in row})
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted({label for row in test_labels for label in row} - set(index))
        if unknown:
            raise CommandError(f"test labels not in train: {', '.join(unknown[:10])}")
        if multi_label:
            y_train = np.zeros((len(train_labels), len(names)), dtype=np.int64)
            y_test = np.zeros((len(test_labels), len(names)), dtype=np.int64)
            for y, rows in ((y_train, train_labels), (y_test, test_labels)):
                for i, row in enumerate(rows):
                    y[i, [index[label] for label in row]] = 1
        else:
            y_train = np.array([index[row[0]] for row in train_labels])
            y_test = np.array([index[row[0]] for row in test_labels])

        cache_dir = (options["cache_dir"] or os.environ.get("LABELHUB_CACHE_DIR")
                     or Path(settings.BASE_DIR) / "var" / "cache" / "embeddings")
        cache = EmbeddingCache(cache_dir)
        encoder = get_encoder(options["encoder"])
        started = time.perf_counter()

        def encoding(done: int, total: int) -> None:
            if done == total or done % 1024 < encoder.batch_size:
                self.stdout.write(f"encoding {done}/{total}")

        X_train = cache.encode(encoder, train_texts, progress=encoding)
        X_test = cache.encode(encoder, test_texts, progress=encoding)
        self.stdout.write(f"embeddings ready in {time.perf_counter() - started:.1f}s ({encoder.name})")

        def progress(strategy: str, seed: int, n_labels: int, point: dict[str, float]) -> None:
            self.stdout.write(
                f"{strategy} seed={seed} labels={n_labels} accuracy={point['accuracy']:.3f} "
                f"macro_f1={point['macro_f1']:.3f} ece={point['ece']:.3f} update={point['update_seconds']:.2f}s "
                f"report={point['report_seconds']:.2f}s"
            )

        result = simulation.simulate(
            X_train=X_train,
            y_train=y_train,
            X_test=X_test,
            y_test=y_test,
            n_classes=len(names),
            strategies=strategies,
            seed_size=options["seed_size"],
            batch_size=options["batch_size"],
            budget=options["budget"],
            repeats=options["repeats"],
            multi_label=multi_label,
            label_names=names,
            progress=progress,
        )
        result["config"].update({"train": options["train"], "test": options["test"], "encoder": encoder.name})
        Path(options["out"]).parent.mkdir(parents=True, exist_ok=True)
        Path(options["out"]).write_text(json.dumps(result, indent=1))
        if options["plot"]:
            simulation.plot_curves(result, options["plot"])
        self.stdout.write("")
        self.stdout.write(
            f"{'strategy':<18}{'final macro-F1':>15}{'AUC':>8}{'labels to random@budget':>26}{'ratio':>8}"
        )
        for name, entry in result["strategies"].items():
            s = entry["summary"]
            reached = s["labels_to_reach_random_final"]
            ratio = s["ratio_to_random"]
            self.stdout.write(
                f"{name:<18}{s['final_macro_f1']:>15.3f}{s['auc_macro_f1']:>8.3f}"
                f"{reached if reached is not None else '-':>26}{f'{ratio:.2f}' if ratio is not None else '-':>8}"
            )
        self.stdout.write(self.style.SUCCESS(f"wrote {options['out']}"))
