"""Issue 16 follow-ups: (a) a fine-tune candidate without a quality report shows its held-out figures in the
Versions table, labelled as held-out; (b) `simulate --finetune-at` compares each fine-tune with the current model on
held-out labels through the app's own comparison (learning.finetuning) and switches the replay's features only when
the candidate wins, recording each fine-tune in the JSON."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from django.urls import reverse

from learning import finetuning, simulation
from learning.management.commands.simulate import app_heldout_rule
from learning.models import FinetuneRun, ModelVersion
from projects.models import Project

TREC = Path(__file__).resolve().parents[2] / "shared" / "data" / "trec" / "train.csv"


# --- (a) The Versions table ----------------------------------------------------------------------------------------


def _comparison(wins: bool) -> dict[str, Any]:
    """A comparison as the app computes it (finetuning.compare) on 40 held-out labels of 2 classes."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    good = np.eye(2)[y] * 0.8 + 0.1
    noisy = np.eye(2)[np.where(rng.random(40) < 0.3, 1 - y, y)] * 0.8 + 0.1
    current, candidate = (noisy, good) if wins else (good, noisy)
    return finetuning.compare(y, current, candidate, 2, seed=0)


@pytest.mark.django_db
def test_a_candidate_that_lost_shows_its_held_out_figures_in_the_versions_table(
        trained: Project, alice: Any, bob: Any, charlie: Any, login: Any) -> None:
    base = ModelVersion.objects.get(project=trained, number=1)
    lost = ModelVersion.objects.create(project=trained, number=2, taxonomy_version=base.taxonomy_version,
                                       label_keys=base.label_keys, encoder="tuned-L256", strategy=base.strategy,
                                       n_labels=base.n_labels, artifact=base.artifact)
    plain = ModelVersion.objects.create(project=trained, number=3, taxonomy_version=base.taxonomy_version,
                                        label_keys=base.label_keys, encoder=base.encoder, strategy=base.strategy,
                                        n_labels=base.n_labels, artifact=base.artifact)
    comparison = _comparison(wins=False)
    assert not comparison["candidate_wins"]
    FinetuneRun.objects.create(project=trained, number=1, status="succeeded", encoder="tuned-L256",
                               current_version=base, candidate_version=lost, comparison=comparison,
                               n_heldout=comparison["n_heldout"])
    url = reverse("serving:versions", args=[trained.pk])
    for user in (alice, bob):  # every member reads the Versions page
        page = login(user).get(url, HTTP_HX_REQUEST="true").content.decode()
        row = page.split("<b>v2</b>")[1].split("</tr>")[0]
        figures = comparison["candidate"]
        assert f"{figures['macro_f1']['value']:.3f}" in row
        assert f"{figures['macro_f1']['low']:.3f}–{figures['macro_f1']['high']:.3f}" in row
        assert f"{figures['accuracy']['value']:.3f}" in row and f"{figures['ece']:.3f}" in row
        assert "held-out, 40 labels (fine-tune 1, not better)" in row
        # The version with a report keeps its cross-validated figures, unlabelled; one with neither shows none.
        reported = page.split("<b>v1</b>")[1].split("</tr>")[0]
        assert "held-out" not in reported and f"{base.report.value('macro_f1'):.3f}" in reported
        assert "held-out" not in page.split(f"<b>v{plain.number}</b>")[1].split("</tr>")[0]
    assert login(charlie).get(url).status_code == 404
    # Once its report lands (a winner's does), the report's figures are shown instead.
    ModelVersion.objects.filter(pk=lost.pk).update(metrics=base.metrics)
    row = login(alice).get(url, HTTP_HX_REQUEST="true").content.decode().split("<b>v2</b>")[1].split("</tr>")[0]
    assert "held-out" not in row


# --- (b) The harness --------------------------------------------------------------------------------------------


def _blobs(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8))
    y = rng.integers(0, 3, 300)
    y_test = rng.integers(0, 3, 90)
    return {"centres": centres, "y": y, "y_test": y_test, "rng": rng,
            "X": (centres[y] + rng.normal(size=(300, 8)) * 1.5).astype(np.float32),
            "X_test": (centres[y_test] + rng.normal(size=(90, 8)) * 1.5).astype(np.float32)}


def _replay(data: dict[str, Any], refeaturize: Any, rule: Any = None, finetune_at: tuple[int, ...] = (60,)
            ) -> dict[str, Any]:
    return simulation.simulate(X_train=data["X"], y_train=data["y"], X_test=data["X_test"], y_test=data["y_test"],
                               n_classes=3, strategies=["random", "bald"], seed_size=20, batch_size=20, budget=100,
                               repeats=1, finetune_at=finetune_at, refeaturize=refeaturize, heldout_rule=rule)


def test_a_replay_switches_to_a_fine_tunes_features_only_when_it_wins_on_held_out_labels(monkeypatch: Any) -> None:
    data = _blobs()
    seen: dict[str, list[Any]] = {"rows": [], "held": [], "compared": []}
    split, compare = finetuning.heldout_split, finetuning.compare

    def spy_split(y: np.ndarray, n_classes: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        out = split(y, n_classes, share, seed)
        seen["held"].append(out[1])
        return out

    def spy_compare(*args: Any, **kwargs: Any) -> dict[str, Any]:
        out = compare(*args, **kwargs)
        seen["compared"].append(out)
        return out

    monkeypatch.setattr(finetuning, "heldout_split", spy_split)
    monkeypatch.setattr(finetuning, "compare", spy_compare)
    rule = app_heldout_rule()

    def sharper(rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        seen["rows"].append(rows)
        noise = np.random.default_rng(seed)
        return ((data["centres"][data["y"]] + noise.normal(size=data["X"].shape) * 0.3).astype(np.float32),
                (data["centres"][data["y_test"]] + noise.normal(size=data["X_test"].shape) * 0.3).astype(np.float32),
                2.5)

    def worse(rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        noise = np.random.default_rng(seed + 100)
        return (noise.normal(size=data["X"].shape).astype(np.float32),
                noise.normal(size=data["X_test"].shape).astype(np.float32), 1.0)

    won = _replay(data, sharper, rule)
    assert won["config"]["finetune_compared"] is True
    for entry in won["strategies"].values():
        run = entry["runs"][0]
        (tune,) = run["finetunes"]
        assert {"labels", "current_macro_f1", "candidate_macro_f1", "promoted", "seconds"} <= set(tune)
        assert tune["labels"] == 60 and tune["promoted"] is True and tune["seconds"] == 2.5
        assert tune["candidate_macro_f1"] > tune["current_macro_f1"]
        points = run["points"]
        assert [p["finetunes"] for p in points] == [0, 0, 1, 1, 1]
        assert points[2]["macro_f1"] > points[1]["macro_f1"] + 0.1  # it went on with the sharper features
    # The app's functions did the work: its split held labels out, the fine-tune saw only the rest, its comparison
    # gave the figures recorded.
    for rows, held, compared, run in zip(seen["rows"], seen["held"], seen["compared"],
                                         [e["runs"][0] for e in won["strategies"].values()], strict=True):
        assert len(held) > 0 and len(rows) + len(held) == 60
        assert run["finetunes"][0]["current_macro_f1"] == compared["current"]["macro_f1"]["value"]
        assert run["finetunes"][0]["heldout"] == compared["n_heldout"] == len(held)

    lost = _replay(data, worse, rule)
    plain = _replay(data, None, None, finetune_at=())
    for name, entry in lost["strategies"].items():
        (tune,) = entry["runs"][0]["finetunes"]
        assert tune["promoted"] is False and tune["candidate_macro_f1"] < tune["current_macro_f1"]
        # Kept: the replay goes on exactly as without the fine-tune (same picks, same figures).
        for kept, base in zip(entry["runs"][0]["points"], plain["strategies"][name]["runs"][0]["points"],
                              strict=True):
            assert {k: kept[k] for k in ("n_labels", "accuracy", "macro_f1", "ece")} == \
                {k: base[k] for k in ("n_labels", "accuracy", "macro_f1", "ece")}
    # Without the rule (the harness's old contract), every fine-tune is used, and recorded as such.
    always = _replay(data, worse)
    assert always["config"]["finetune_compared"] is False
    assert always["strategies"]["random"]["runs"][0]["finetunes"][0]["promoted"] is True
    assert "finetunes" not in plain["strategies"]["random"]["runs"][0]


def test_a_fine_tune_with_too_few_labels_to_hold_out_changes_nothing() -> None:
    data = _blobs(1)
    calls: list[int] = []

    def never(rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        calls.append(len(rows))
        raise AssertionError("no fine-tune without held-out labels")

    # Two classes of one item each at 2 labels: nothing can be held out (the app fails such a run).
    result = simulation.simulate(X_train=data["X"], y_train=np.arange(300) % 3, X_test=data["X_test"],
                                 y_test=data["y_test"], n_classes=3, strategies=["random"], seed_size=2,
                                 batch_size=20, budget=22, repeats=1, finetune_at=[2], refeaturize=never,
                                 heldout_rule=app_heldout_rule())
    (tune,) = result["strategies"]["random"]["runs"][0]["finetunes"]
    assert calls == [] and tune["promoted"] is False and tune["current_macro_f1"] is None and "error" in tune


@pytest.mark.django_db
def test_simulate_records_each_fine_tune_it_compared(tmp_path: Path, monkeypatch: Any) -> None:
    if not TREC.exists():
        pytest.skip("needs ../shared/data/trec")
    with TREC.open(newline="", encoding="utf-8") as handle:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(handle) if r["label"] in {"DESC", "LOC", "NUM"}][:120]
    for name, part in (("train.csv", rows[::2]), ("test.csv", rows[1::2])):
        with (tmp_path / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    names = sorted({label for _, label in rows})
    y_train = np.array([names.index(label) for _, label in rows[::2]])
    y_test = np.array([names.index(label) for _, label in rows[1::2]])
    asked: list[int] = []

    def refeaturizer(train_texts: Any, test_texts: Any, y: Any, **kwargs: Any) -> Any:
        # Instead of minutes of real fine-tuning: features that know the gold labels, so the candidate wins.
        def refeaturize(rows_: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
            asked.append(len(rows_))
            noise = np.random.default_rng(seed)
            return (np.eye(3)[y_train] * 3 + noise.normal(size=(len(y_train), 3)),
                    np.eye(3)[y_test] * 3 + noise.normal(size=(len(y_test), 3)), 0.5)
        return refeaturize

    monkeypatch.setattr(simulation, "finetune_refeaturizer", refeaturizer)
    out = tmp_path / "curve.json"
    stdout = io.StringIO()
    call_command("simulate", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
                 "--strategy", "random", "--seed-size", "20", "--batch-size", "20", "--budget", "60",
                 "--repeats", "1", "--finetune-at", "40", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 stdout=stdout)
    result = json.loads(out.read_text())
    run = result["strategies"]["random"]["runs"][0]
    assert [p["finetunes"] for p in run["points"]] == [0, 1, 1]  # the existing fields, as before
    (tune,) = run["finetunes"]
    assert tune["labels"] == 40 and tune["promoted"] is True and tune["seconds"] == 0.5
    assert tune["candidate_macro_f1"] > tune["current_macro_f1"] and asked == [40 - tune["heldout"]]
    assert "fine-tune at 40 labels: held-out macro-F1 current" in stdout.getvalue()
