"""``manage.py simulate``: replay labelled CSVs (classification) or tagged JSONL (``--task ner``) with a
simulated annotator (the evaluation harness)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from learning import acquisition, simulation, spans


def app_heldout_rule() -> simulation.HeldoutRule:
    """The app's replace-when-better rule (``learning.finetuning``: its held-out split at LABELHUB_FINETUNE_HELDOUT,
    its cold fit of the Bayesian layer, its comparison), for ``simulate(heldout_rule=…)``."""
    from learning import finetuning

    return simulation.HeldoutRule(
        split=lambda y, n_classes, seed: finetuning.heldout_split(y, n_classes, settings.FINETUNE_HELDOUT, seed),
        fit_and_predict=finetuning._fit_and_predict, compare=finetuning.compare)


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


def read_tagged_jsonl(path: str) -> tuple[list[str], list[list[tuple[int, int]]], list[list[dict[str, Any]]]]:
    """Texts, token offsets and char spans (label names) of a ``{"tokens", "tags"}`` JSONL file (the
    format of the NER sets in ../shared/data), IOB/IOB2/BILOU/IO detected over the whole file."""
    from projects.spanformats import SpanFormatError, detect_scheme, spans_from_tags

    rows: list[tuple[int, list[str], list[str]]] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CommandError(f"{path}:{line_no}: not JSON ({exc.msg})") from exc
                if not isinstance(row, dict) or not isinstance(row.get("tokens"), list) \
                        or not isinstance(row.get("tags"), list):
                    raise CommandError(f'{path}:{line_no}: expected an object with lists "tokens" and "tags"')
                rows.append((line_no, row["tokens"], row["tags"]))
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path}: {exc}") from exc
    if not rows:
        raise CommandError(f"{path}: no rows")
    try:
        scheme = detect_scheme(tags for _, _, tags in rows)
    except SpanFormatError as exc:
        raise CommandError(f"{path}: {exc}") from exc
    texts, offsets, spans = [], [], []
    for line_no, tokens, tags in rows:
        try:
            text, token_offsets, row_spans = spans_from_tags(tokens, tags, scheme)
        except SpanFormatError as exc:
            raise CommandError(f"{path}:{line_no}: {exc}") from exc
        texts.append(text)
        offsets.append(token_offsets)
        spans.append([dict(span) for span in row_spans])
    return texts, offsets, spans


class Command(BaseCommand):
    help = "Compare acquisition strategies by replaying a labelled train/test split."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--task", choices=["classification", "ner"], default="classification",
                            help="ner: --train/--test are {tokens, tags} JSONL; budget and batches count sentences")
        parser.add_argument("--aggregation", choices=sorted(spans.AGGREGATIONS), default=spans.DEFAULT_AGGREGATION,
                            help="ner: how per-token scores make an example's score")
        parser.add_argument("--pooling", choices=["first", "mean"], help="ner: a word's vector from its sub-words")
        parser.add_argument("--report-every", type=int, default=1,
                            help="calibrate at every n-th update only (the app skips reports under load too)")
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
        parser.add_argument("--finetune-at", default="",
                            help="comma-separated label counts (e.g. 500,1000) at which the encoder is fine-tuned on "
                                 "the labels so far, compared with the current model on held-out labels as the app "
                                 "does, and the curve goes on with the new features only if it wins (classification, "
                                 "single-label; LABELHUB_FINETUNE_* settings); each run's `finetunes` in the JSON "
                                 "says what each fine-tune scored and whether it was promoted")

    def handle(self, *args: Any, **options: Any) -> None:
        from learning.encoder import EmbeddingCache, get_encoder

        if options["task"] == "ner":
            if options["finetune_at"].strip():
                raise CommandError("--finetune-at replays classification only; a span project's fine-tune is "
                                   "measured by benchmarks/ner_finetune_bench.py (and runs in the app from the "
                                   "Versions page)")
            self.handle_ner(options)
            return
        multi_label: bool = options["multi_label"]
        try:
            finetune_at = sorted({int(v) for v in options["finetune_at"].split(",") if v.strip()})
        except ValueError as exc:
            raise CommandError(f"--finetune-at: label counts separated by commas, e.g. 500,1000 ({exc})") from exc
        if any(n < 2 for n in finetune_at):
            raise CommandError("--finetune-at: each label count must be at least 2")
        if finetune_at and multi_label:
            raise CommandError("--finetune-at fine-tunes single-label classification; drop --multi-label")
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
            tuned = (f" finetunes={point['finetunes']} finetune={point['finetune_seconds']:.1f}s"
                     if "finetunes" in point else "")
            self.stdout.write(
                f"{strategy} seed={seed} labels={n_labels} accuracy={point['accuracy']:.3f} "
                f"macro_f1={point['macro_f1']:.3f} ece={point['ece']:.3f} update={point['update_seconds']:.2f}s "
                f"report={point['report_seconds']:.2f}s{tuned}"
            )

        refeaturize = None
        if finetune_at:
            from learning.finetuning import finetune_config

            refeaturize = simulation.finetune_refeaturizer(
                train_texts, test_texts, y_train, n_classes=len(names), model_path=encoder.model_path,
                config=finetune_config(), workdir=Path(cache_dir).parent, threads=settings.ENCODER_THREADS or 1)

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
            report_every=options["report_every"],
            finetune_at=finetune_at,
            refeaturize=refeaturize,
            heldout_rule=app_heldout_rule() if finetune_at else None,
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
        for name, entry in result["strategies"].items():
            for run in entry["runs"]:
                for tune in run.get("finetunes", []):
                    figures = ("" if tune["current_macro_f1"] is None else
                               f": held-out macro-F1 current {tune['current_macro_f1']:.3f}, candidate "
                               f"{tune['candidate_macro_f1']:.3f} on {tune['heldout']} labels")
                    self.stdout.write(f"{name} seed={run['seed']} fine-tune at {tune['labels']} labels{figures} -> "
                                      f"{'promoted' if tune['promoted'] else 'kept the current model'} "
                                      f"({tune['seconds']:.1f}s)")
        self.stdout.write(self.style.SUCCESS(f"wrote {options['out']}"))


    def handle_ner(self, options: dict[str, Any]) -> None:
        from learning.encoder import DEFAULT_TOKEN_POOLING, get_encoder

        if options["multi_label"]:
            raise CommandError("--multi-label is for classification; span tagging tags each token once")
        strategies = options["strategies"] or ["random", acquisition.DEFAULT_STRATEGY]
        train = read_tagged_jsonl(options["train"])
        test = read_tagged_jsonl(options["test"])
        names = sorted({span["label"] for row in train[2] for span in row})
        if not names:
            raise CommandError(f"{options['train']}: no entity in any sentence; nothing to learn")
        unknown = sorted({span["label"] for row in test[2] for span in row} - set(names))
        if unknown:
            raise CommandError(f"test entity labels not in train: {', '.join(unknown[:10])}")
        tagset = spans.TagSet(names)
        train_tags = [spans.tag_ids(o, s, tagset) for o, s in zip(train[1], train[2], strict=True)]
        test_tags = [spans.tag_ids(o, s, tagset) for o, s in zip(test[1], test[2], strict=True)]
        cache_dir = Path(options["cache_dir"] or os.environ.get("LABELHUB_CACHE_DIR")
                         or Path(settings.BASE_DIR) / "var" / "cache" / "embeddings") / "tokens"
        encoder = get_encoder(options["encoder"], threads=1)
        pooling = options["pooling"] or DEFAULT_TOKEN_POOLING
        started = time.perf_counter()

        def vectors(path: str, texts: list[str], offsets: list[list[tuple[int, int]]]) -> list[Any]:
            key = hashlib.sha1(Path(path).read_bytes()).hexdigest()

            def encoding(done: int, total: int) -> None:
                if done == total or done % 1024 < encoder.batch_size:
                    self.stdout.write(f"encoding {Path(path).name} {done}/{total}")

            return simulation.cached_token_vectors(encoder, texts, offsets, cache_dir, key=key, pooling=pooling,
                                                   progress=encoding)

        train_vectors = vectors(options["train"], train[0], train[1])
        test_vectors = vectors(options["test"], test[0], test[1])
        self.stdout.write(f"token vectors ready in {time.perf_counter() - started:.1f}s "
                          f"({encoder.token_name(pooling)})")

        def progress(strategy: str, seed: int, n_labels: int, point: dict[str, float]) -> None:
            self.stdout.write(
                f"{strategy} seed={seed} labels={n_labels} tokens={int(point['n_tokens'])} "
                f"entity_f1={point['entity_f1']:.3f} macro_f1={point['macro_f1']:.3f} ece={point['ece']:.3f} "
                f"update={point['update_seconds']:.2f}s report={point['report_seconds']:.2f}s"
            )

        result = simulation.simulate_spans(
            train_vectors=train_vectors, train_tags=train_tags, test_vectors=test_vectors, test_tags=test_tags,
            label_names=names, strategies=strategies, seed_size=options["seed_size"],
            batch_size=options["batch_size"], budget=options["budget"], repeats=options["repeats"],
            aggregation=options["aggregation"], progress=progress, report_every=options["report_every"],
        )
        result["config"].update({"train": options["train"], "test": options["test"],
                                 "encoder": encoder.token_name(pooling)})
        Path(options["out"]).parent.mkdir(parents=True, exist_ok=True)
        Path(options["out"]).write_text(json.dumps(result, indent=1))
        if options["plot"]:
            simulation.plot_curves(result, options["plot"], key="entity_f1")
        self.stdout.write("")
        self.stdout.write(f"{'strategy':<24}{'final entity-F1':>16}{'AUC':>8}{'sentences to random@budget':>28}"
                          f"{'ratio':>7}{'tokens':>9}{'ratio':>7}")
        for name, entry in result["strategies"].items():
            s = entry["summary"]
            reached, ratio = s["labels_to_reach_random_final"], s["ratio_to_random"]
            tokens, token_ratio = s["tokens_to_reach_random_final"], s["token_ratio_to_random"]
            self.stdout.write(
                f"{name:<24}{s['final_entity_f1']:>16.3f}{s['auc_entity_f1']:>8.3f}"
                f"{reached if reached is not None else '-':>28}{f'{ratio:.2f}' if ratio is not None else '-':>7}"
                f"{f'{tokens:.0f}' if tokens is not None else '-':>9}"
                f"{f'{token_ratio:.2f}' if token_ratio is not None else '-':>7}"
            )
        self.stdout.write(self.style.SUCCESS(f"wrote {options['out']}"))
