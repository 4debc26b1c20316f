"""Explore: what the pool holds that the taxonomy may not cover (rare-class discovery).

The pool's sentence embeddings are clustered with scikit-learn's MiniBatchKMeans (k grows with the square root
of the pool, at most MAX_CLUSTERS so a person can read the page). Each cluster shows its size, the texts
nearest its centre, the current model's label distribution over it and its mean BALD (the model's own
uncertainty there), and is marked **unexplored** when no labelled item lies within its radius: the distance
from its centre within which RADIUS_QUANTILE of its items lie. A cluster nobody labelled near is where a
class nobody thought of hides; from there a manager adds a label and sends the cluster's items to the front
of the annotation queue.

Clustering runs in the request for pools up to INLINE_LIMIT items and as a background job (with progress)
above; results are cached per (model version, encoder, pool size), so a page view costs one cache read.
The math (`cluster_embeddings`) is plain numpy / scikit-learn; the rest reads the embedding store and the
latest model version. The page is `learning.explore_views`; the same clusters and actions as JSON,
`learning.explore_api` (`add_label_from_cluster` adds the label and queues the items in one transaction).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.core.cache import cache
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from sklearn.cluster import MiniBatchKMeans  # type: ignore[import-untyped]
from threadpoolctl import threadpool_limits

from annotation.models import Annotation, ExampleScore
from labelhub.errors import ActionError, ConflictError
from labelhub.jobs import enqueue
from learning import acquisition, bayes, store
from learning.models import ModelVersion
from projects import taxonomy as taxonomy_actions
from projects.models import Example, Project

MAX_CLUSTERS = 50
MIN_CLUSTERS = 2
REPRESENTATIVES = 5
RADIUS_QUANTILE = 0.5  # the median distance: calibrated on trec with a class held back (tests/test_explore.py)
INLINE_LIMIT = 3000
CACHE_SECONDS = 7 * 24 * 3600
PROGRESS_SECONDS = 600
STAGES = ("Reading the embeddings", "Clustering", "Asking the model", "Saving")


def cluster_count(n: int) -> int:
    """k for a pool of n items: sqrt(n) / 2, between MIN_CLUSTERS and MAX_CLUSTERS (600 items: 12; 10,000: 50)."""
    if n < 2 * MIN_CLUSTERS:
        return 1 if n else 0
    return int(min(MAX_CLUSTERS, max(MIN_CLUSTERS, round(math.sqrt(n) / 2))))


@dataclass
class Clustering:
    assignment: np.ndarray  # (N,) cluster index of each item
    centres: np.ndarray  # (k, D) on the unit sphere's scale (items are normalised)
    radius: np.ndarray  # (k,) RADIUS_QUANTILE of the members' distances to their centre
    nearest_labelled: np.ndarray  # (k,) distance from the centre to the nearest labelled item (inf: none labelled)
    representatives: list[np.ndarray]  # per cluster, row indices of the members nearest the centre
    distance_to_centre: np.ndarray  # (N,)

    @property
    def unexplored(self) -> np.ndarray:
        return self.nearest_labelled > self.radius


def cluster_embeddings(X: np.ndarray, labelled: np.ndarray, *, k: int, seed: int = 0,
                       representatives: int = REPRESENTATIVES) -> Clustering:
    """Cluster the rows of X (normalised first) into k groups and measure each against the labelled rows.

    `labelled` is a boolean mask over the rows. Euclidean distance between unit vectors, so 0 is the same
    direction and 2 the opposite (it is sqrt(2 - 2 cos)).
    """
    X = np.asarray(X, dtype=np.float32)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    n = len(X)
    k = max(1, min(k, n))
    model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=2048, max_iter=100)
    assignment = model.fit_predict(X)
    centres = model.cluster_centers_.astype(np.float32)
    distance = np.linalg.norm(X - centres[assignment], axis=1)
    radius = np.zeros(k)
    reps: list[np.ndarray] = []
    for c in range(k):
        members = np.flatnonzero(assignment == c)
        radius[c] = float(np.quantile(distance[members], RADIUS_QUANTILE)) if len(members) else 0.0
        reps.append(members[np.argsort(distance[members], kind="stable")[:representatives]])
    nearest = np.full(k, np.inf)
    L = X[labelled]
    for start in range(0, len(L), 4096):
        block = L[start:start + 4096]
        # ||c - x||^2 = ||c||^2 + 1 - 2 c.x for unit x
        d2 = (centres**2).sum(axis=1)[:, None] + 1.0 - 2.0 * centres @ block.T
        nearest = np.minimum(nearest, np.sqrt(np.maximum(d2, 0.0)).min(axis=1))
    return Clustering(assignment, centres, radius, nearest, reps, distance)


# --- The project's clustering, cached per model version -----------------------------------------------------------


def _encoder_name(project: Project) -> str:
    from learning.actions import project_encoder

    return str(project_encoder(project.pk).name)


def _state(project: Project) -> tuple[str, int | None, str]:
    """(cache key, model version number, encoder) of what a clustering now would be computed from."""
    encoder = _encoder_name(project)
    emb = store.load(project.pk, encoder)
    version = ModelVersion.objects.filter(project=project).aggregate(n=Max("number"))["n"]
    raw = f"{project.pk}:{encoder}:{version}:{len(emb.example_ids)}:{emb.last_chunk_id}"
    return f"labelhub:explore:{project.pk}:{hashlib.sha1(raw.encode()).hexdigest()[:16]}", version, encoder


def _progress_key(project_id: int) -> str:
    return f"labelhub:explore-progress:{project_id}"


def current(project: Project) -> dict[str, Any] | None:
    """The clustering of the project as it is now (same model version and pool), if one was computed."""
    return cache.get(_state(project)[0])


def progress(project: Project) -> dict[str, Any] | None:
    """{'stage', 'step', 'steps'} while a clustering job runs."""
    return cache.get(_progress_key(project.pk))


def _forget_progress(project_id: int) -> None:
    # The queue was unreachable: no job will clear the bar, and the next click may queue again.
    cache.delete(_progress_key(project_id))
    cache.delete(f"labelhub:explore-queued:{project_id}")


def _report(project_id: int, step: int) -> None:
    cache.set(_progress_key(project_id), {"stage": STAGES[step], "step": step + 1, "steps": len(STAGES)},
              PROGRESS_SECONDS)


def compute(project: Project) -> dict[str, Any]:
    """Cluster the project's embedded examples and describe each cluster; cached under the current state."""
    key, version_number, encoder = _state(project)
    _report(project.pk, 0)
    emb = store.load(project.pk, encoder)
    n = len(emb.example_ids)
    if n < 2 * MIN_CLUSTERS:
        cache.delete(_progress_key(project.pk))
        raise ActionError(f"{n} example(s) have embeddings: clustering needs at least {2 * MIN_CLUSTERS}. "
                          "Upload data, or wait for the embedding job to finish.")
    labelled_ids = Annotation.objects.in_project(project).labelled_ids()
    labelled = np.isin(emb.example_ids, labelled_ids, assume_unique=True)
    k = cluster_count(n)
    _report(project.pk, 1)
    with threadpool_limits(limits=1, user_api="blas"):
        clustering = cluster_embeddings(emb.vectors, labelled, k=k, seed=0)
        _report(project.pk, 2)
        model = _model_view(project, version_number, encoder, emb.vectors)
    _report(project.pk, 3)
    texts = dict(Example.objects.filter(pk__in=[int(emb.example_ids[i]) for r in clustering.representatives
                                                 for i in r]).values_list("pk", "text"))
    clusters = []
    for c in range(len(clustering.centres)):
        members = np.flatnonzero(clustering.assignment == c)
        if not len(members):
            continue
        row: dict[str, Any] = {
            "index": c, "size": int(len(members)), "labelled": int(labelled[members].sum()),
            "unexplored": bool(clustering.unexplored[c]), "radius": round(float(clustering.radius[c]), 4),
            "nearest_labelled": (None if not np.isfinite(clustering.nearest_labelled[c])
                                 else round(float(clustering.nearest_labelled[c]), 4)),
            "representatives": [{"id": int(emb.example_ids[i]), "text": texts.get(int(emb.example_ids[i]), "")}
                                for i in clustering.representatives[c]],
            # Nearest the centre first: the queue serves the most typical items of the cluster first.
            "example_ids": [int(i) for i in emb.example_ids[members[np.argsort(clustering.distance_to_centre[members],
                                                                                kind="stable")]]],
            "distribution": [], "mean_bald": None,
        }
        if model is not None:
            counts = model["predicted"][members].sum(axis=0) / len(members)
            row["distribution"] = sorted(({"key": key_, "share": float(s)} for key_, s in
                                          zip(model["keys"], counts.tolist(), strict=True) if s > 0),
                                         key=lambda d: -d["share"])
            row["mean_bald"] = float(model["bald"][members].mean())
        clusters.append(row)
    # Unexplored first, then the largest: where to look first.
    clusters.sort(key=lambda r: (not r["unexplored"], -r["size"]))
    result = {"key": key, "model_version": version_number, "encoder": encoder, "n": n, "k": k,
              "labelled": int(labelled.sum()), "radius_quantile": RADIUS_QUANTILE, "clusters": clusters,
              "unexplored": sum(1 for r in clusters if r["unexplored"]), "computed_at": timezone.now()}
    cache.set(key, result, CACHE_SECONDS)
    cache.delete(_progress_key(project.pk))
    return result


def _model_view(project: Project, version_number: int | None, encoder: str,
                X: np.ndarray) -> dict[str, Any] | None:
    """The latest model's predicted labels (0/1 per label) and BALD on every embedded item; None without a model
    trained on these vectors."""
    if version_number is None:
        return None
    version = ModelVersion.objects.filter(project=project, number=version_number).only(
        "artifact", "encoder", "label_keys").first()
    if version is None or version.encoder != encoder or not version.artifact:
        return None
    try:
        posterior = bayes.Posterior.from_bytes(bytes(version.artifact))
    except (ValueError, KeyError, OSError):
        return None
    scored = acquisition.score_pool(posterior, X, strategy="bald", rng=np.random.default_rng(0))
    if posterior.multi_label:
        predicted = (scored.proba >= 0.5).astype(np.float64)
    else:
        predicted = np.eye(scored.proba.shape[1])[scored.proba.argmax(axis=1)]
    return {"keys": list(version.label_keys), "predicted": predicted, "bald": scored.scores}


def start(project: Project) -> str:
    """Cluster now (small pools) or in the background; 'done' or 'queued'."""
    n = len(store.load(project.pk, _encoder_name(project)).example_ids)
    if n <= INLINE_LIMIT:
        compute(project)
        return "done"
    if cache.add(f"labelhub:explore-queued:{project.pk}", 1, timeout=PROGRESS_SECONDS):
        _report(project.pk, 0)
        project_id = project.pk
        enqueue("learning.explore.cluster_job", project_id, on_failure=lambda: _forget_progress(project_id))
    return "queued"


def cluster_job(project_id: int) -> None:
    """The background job: cluster the project's pool (its progress shows on the Explore page)."""
    cache.delete(f"labelhub:explore-queued:{project_id}")
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return
    try:
        compute(project)
    finally:
        cache.delete(_progress_key(project_id))


def cluster_row(project: Project, *, key: str, cluster: int) -> dict[str, Any]:
    """The cluster `cluster` of the clustering `key`, which must still be the project's current one (409 else)."""
    result = cache.get(key) if key else None
    if result is None or key != _state(project)[0]:
        raise ConflictError("The clusters changed since this page was drawn (new labels, a new model or new data). "
                            "Cluster again and choose from the new list.")
    row = next((r for r in result["clusters"] if r["index"] == cluster), None)
    if row is None:
        raise ActionError(f"There is no cluster {cluster} in this clustering.")
    return dict(row)


@transaction.atomic
def send_to_front(project: Project, *, key: str, cluster: int) -> int:
    """Put the cluster's unlabelled items at the front of the annotation queue (nearest its centre first).

    They are marked `is_routed`, which the queue serves before the model's picks and which a retrain keeps,
    so they stay in front until labelled. Returns how many items were sent.
    """
    row = cluster_row(project, key=key, cluster=cluster)
    labelled = set(Annotation.objects.filter(example_id__in=row["example_ids"]).values_list("example_id", flat=True))
    todo = [i for i in row["example_ids"] if i not in labelled]
    if not todo:
        raise ActionError("Every item of this cluster is labelled already.")
    top = ExampleScore.objects.filter(project=project).aggregate(m=Max("priority"))["m"] or 0.0
    now = timezone.now()
    rows = [ExampleScore(example_id=i, project=project, is_routed=True, priority=float(top) + len(todo) - rank,
                         updated_at=now) for rank, i in enumerate(todo)]
    ExampleScore.objects.bulk_create(rows, batch_size=5000, update_conflicts=True, unique_fields=["example"],
                                     update_fields=["is_routed", "priority", "updated_at"])
    return len(todo)


@transaction.atomic
def add_label_from_cluster(project: Project, *, key: str, cluster: int, name: str, description: str, user: Any,
                           expected_number: int | None, queue: bool) -> tuple[Any, int]:
    """Add a label named after what cluster `cluster` shows (a new taxonomy version) and, with `queue`, send the
    cluster's unlabelled items to the front of the queue: both or neither. Returns (taxonomy version, items sent).

    The cluster is checked first (the clustering must be the current one), so a stale or unknown cluster adds no
    label; the queue is changed before the taxonomy, whose new version retrains the model and so ends this
    clustering's currency."""
    row = cluster_row(project, key=key, cluster=cluster)
    sent = send_to_front(project, key=key, cluster=row["index"]) if queue else 0
    version = taxonomy_actions.add_labels(
        project, labels=[taxonomy_actions.LabelSpec(name=name, description=description)], user=user,
        expected_number=expected_number)
    return version, sent
