"""The labelling page's figures that must be true after every label and cheap to read on every item.

- A taxonomy version's labels are read once per process: a version never changes once its
  transaction has committed (every edit makes a new one), so its pk and creation time name it.
- The project's example and labelled counts are kept in the cache and moved by the actions that
  change them: a submit that gives an example its first annotation adds one, an undo or an import
  drops the figures so the next read counts again. Counting distinct labelled examples costs tens
  of milliseconds on a large project, too much for every item; reading two cache keys does not.
  The figures also expire after `COUNTS_SECONDS`, which bounds what a change made outside these
  actions (deleting a dataset, the admin) can leave stale.
"""
from __future__ import annotations

from collections import OrderedDict
from threading import Lock
from typing import Any

from django.core.cache import cache

from annotation.models import Annotation
from projects.models import Example, Label, Project, TaxonomyVersion

COUNTS_SECONDS = 60
_NAMES = ("examples", "labelled")

_LABELS: OrderedDict[tuple[Any, ...], tuple[Label, ...]] = OrderedDict()
_LABELS_MAX = 256
_LABELS_LOCK = Lock()


def labels_of(version: TaxonomyVersion) -> tuple[Label, ...]:
    """The version's labels in taxonomy order (deprecated ones included), read once per process."""
    key = (version.pk, version.project_id, version.number, version.created_at)
    with _LABELS_LOCK:
        labels = _LABELS.get(key)
        if labels is not None:
            _LABELS.move_to_end(key)
            return labels
    labels = tuple(Label.objects.filter(version_id=version.pk).order_by("position", "name"))
    with _LABELS_LOCK:
        _LABELS[key] = labels
        while len(_LABELS) > _LABELS_MAX:
            _LABELS.popitem(last=False)
    return labels


def _key(project_id: int, name: str) -> str:
    return f"labelhub:label-progress:{project_id}:{name}"


def project_counts(project: Project) -> dict[str, int]:
    """{'examples', 'labelled'}: how many examples the project has and how many carry a label."""
    keys = {name: _key(project.pk, name) for name in _NAMES}
    cached = cache.get_many(list(keys.values()))
    if len(cached) == len(keys):
        return {name: int(cached[key]) for name, key in keys.items()}
    counts = {"examples": Example.objects.in_project(project).count(),
              "labelled": Annotation.objects.in_project(project).labelled_count()}
    cache.set_many({keys[name]: value for name, value in counts.items()}, COUNTS_SECONDS)
    return counts


def example_labelled(project_id: int) -> None:
    """An example got its first annotation (call after the commit)."""
    try:
        cache.incr(_key(project_id, "labelled"))
    except ValueError:
        pass  # not cached: the next read counts


def counts_changed(project_id: int) -> None:
    """Examples or labels came or went in a way the cache cannot follow: count again at the next read."""
    cache.delete_many([_key(project_id, name) for name in _NAMES])
