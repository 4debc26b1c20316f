"""Writes to projects and their taxonomies: create a project, add and edit labels, version diffs.

Edits that move annotations (merge, split, deprecate) are the annotation layer's
(`annotation/taxonomy.py`); they make their version through `new_version` here.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from labelhub.errors import ActionError, ConflictError
from projects import events
from projects.models import Label, Project, TaskType, TaxonomyVersion, Team

PALETTE = ["#4f6bed", "#e5534b", "#2da44e", "#bf8700", "#8250df", "#1b7c83", "#cf222e", "#6e7781",
           "#d4a72c", "#0969da"]


@dataclass(frozen=True)
class LabelSpec:
    name: str
    description: str = ""
    colour: str = ""
    shortcut: str = ""


def parse_label_lines(text: str) -> list[LabelSpec]:
    """'name' or 'name | description' per line, as typed in the project form."""
    specs: list[LabelSpec] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, description = line.partition("|")
        specs.append(LabelSpec(name=name.strip(), description=description.strip()))
    return specs


# Keys the labelling page keeps for itself (skip, undo, flag, comment, help, submit).
RESERVED_SHORTCUTS = frozenset("sufcgjk?")


def default_shortcut(position: int) -> str:
    return str(position + 1) if position < 9 else ""


def validate_label_specs(specs: Sequence[LabelSpec], existing: Iterable[str] = ()) -> None:
    seen = {name.casefold() for name in existing}
    for spec in specs:
        if not spec.name:
            raise ActionError("A label needs a name.")
        if len(spec.name) > 100:
            raise ActionError(f"Label name '{spec.name[:40]}…' is longer than 100 characters.")
        if spec.name.casefold() in seen:
            raise ActionError(f"Label '{spec.name}' appears twice; label names must be unique.")
        seen.add(spec.name.casefold())


@transaction.atomic
def create_project(team: Team, *, name: str, task_type: str, labels: Sequence[LabelSpec], created_by: Any,
                   description: str = "", guidelines: str = "") -> Project:
    """Create a project and its first taxonomy version."""
    if task_type not in TaskType.values:
        raise ActionError(f"Unknown task type '{task_type}'.")
    validate_label_specs(labels)
    if Project.objects.filter(team=team, name=name).exists():
        raise ActionError(f"Team {team} already has a project called '{name}'.")
    project = Project.objects.create(team=team, name=name, task_type=task_type, created_by=created_by,
                                     description=description, guidelines=guidelines)
    version = TaxonomyVersion.objects.create(
        project=project, number=1, created_by=created_by,
        changelog=[f"Created with {len(labels)} label{'s' if len(labels) != 1 else ''}."],
    )
    Label.objects.bulk_create(
        Label(version=version, name=spec.name, description=spec.description,
              colour=spec.colour or PALETTE[i % len(PALETTE)], shortcut=spec.shortcut or default_shortcut(i),
              position=i)
        for i, spec in enumerate(labels)
    )
    return project


def new_version(project: Project, *, user: Any, expected_number: int | None, changelog: list[str]
                  ) -> tuple[TaxonomyVersion, TaxonomyVersion]:
    """Lock the project's taxonomy and start a new version holding a copy of the current labels.

    Every edit goes through here; the caller changes the copy, then announces the
    change (`announce`) so the layers above can follow it.
    """
    # Locking the project row serialises taxonomy edits: two managers editing at
    # once queue up here, and the second one sees the version number move.
    Project.objects.select_for_update().get(pk=project.pk)
    current = project.current_taxonomy()
    if expected_number is not None and current.number != expected_number:
        raise ConflictError(
            f"The taxonomy changed while you were editing (you had version {expected_number}, it is now "
            f"version {current.number}). Reload the page and apply your change again."
        )
    new = TaxonomyVersion.objects.create(project=project, number=current.number + 1, created_by=user,
                                         changelog=changelog)
    Label.objects.bulk_create(
        Label(version=new, key=label.key, name=label.name, description=label.description, colour=label.colour,
              shortcut=label.shortcut, is_deprecated=label.is_deprecated, position=label.position)
        for label in current.labels.all()
    )
    return current, new


@transaction.atomic
def add_labels(project: Project, *, labels: Sequence[LabelSpec], user: Any,
               expected_number: int | None = None) -> TaxonomyVersion:
    """Add labels to the project's taxonomy as a new version."""
    if not labels:
        raise ActionError("No labels to add.")
    current = project.current_taxonomy()
    validate_label_specs(labels, existing=current.labels.values_list("name", flat=True))
    changelog = [f"Added label '{spec.name}'." for spec in labels]
    _, new = new_version(project, user=user, expected_number=expected_number, changelog=changelog)
    used_shortcuts = set(new.labels.exclude(shortcut="").values_list("shortcut", flat=True))
    start = new.labels.count()
    created = []
    for offset, spec in enumerate(labels):
        position = start + offset
        shortcut = spec.shortcut or default_shortcut(position)
        if shortcut in used_shortcuts:
            shortcut = ""
        used_shortcuts.add(shortcut)
        created.append(Label(version=new, name=spec.name, description=spec.description,
                             colour=spec.colour or PALETTE[position % len(PALETTE)], shortcut=shortcut,
                             position=position))
    try:
        Label.objects.bulk_create(created)
    except IntegrityError as exc:
        raise ActionError(f"Could not add the labels: {exc}") from exc
    announce(project, new)
    return new


def label_in(version: TaxonomyVersion, key: str) -> Label:
    try:
        return version.labels.get(key=key)
    except Label.DoesNotExist:
        raise ActionError(f"Taxonomy v{version.number} has no label with key '{key}'.") from None


@transaction.atomic
def edit_label(project: Project, *, key: str, user: Any, expected_number: int | None = None,
               name: str | None = None, description: str | None = None, colour: str | None = None,
               shortcut: str | None = None) -> TaxonomyVersion:
    """Rename a label or change its description, colour or shortcut, as a new version."""
    current = project.current_taxonomy()
    old = label_in(current, key)
    changes: list[str] = []
    if name is not None and name.strip() != old.name:
        name = name.strip()
        validate_label_specs([LabelSpec(name=name)],
                              existing=current.labels.exclude(key=key).values_list("name", flat=True))
        changes.append(f"Renamed '{old.name}' to '{name}'.")
    if description is not None and description.strip() != old.description:
        changes.append(f"Changed the description of '{name or old.name}'.")
    if colour is not None and colour != old.colour:
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
            raise ActionError(f"Colour '{colour}' is not a #rrggbb hex colour.")
        changes.append(f"Changed the colour of '{name or old.name}' to {colour}.")
    if shortcut is not None and shortcut != old.shortcut:
        if len(shortcut) > 1 or shortcut in RESERVED_SHORTCUTS:
            raise ActionError(f"Shortcut '{shortcut}' cannot be used: pick one character other than "
                              f"{', '.join(sorted(RESERVED_SHORTCUTS))} (they are the labelling page's own keys).")
        clash = current.labels.exclude(key=key).filter(shortcut=shortcut).first() if shortcut else None
        if clash is not None:
            raise ActionError(f"Shortcut '{shortcut}' already belongs to '{clash.name}'.")
        changes.append(f"Shortcut of '{name or old.name}' is now " + (f"'{shortcut}'." if shortcut else "none."))
    if not changes:
        raise ActionError("Nothing changed.")
    _, new = new_version(project, user=user, expected_number=expected_number, changelog=changes)
    label = new.labels.get(key=key)
    for field, value in (("name", name), ("description", description), ("colour", colour), ("shortcut", shortcut)):
        if value is not None:
            setattr(label, field, value.strip() if field == "description" else value)
    label.save()
    announce(project, new)
    return new


def taxonomy_diff(old: TaxonomyVersion, new: TaxonomyVersion) -> list[dict[str, Any]]:
    """What changed between two versions, label by label (matched by stable key)."""
    fields = ("name", "description", "colour", "shortcut", "is_deprecated")
    before = {label.key: label for label in old.labels.all()}
    after = {label.key: label for label in new.labels.all()}
    changes: list[dict[str, Any]] = []
    for key, label in after.items():
        if key not in before:
            changes.append({"change": "added", "key": key, "name": label.name})
            continue
        diff = {f: {"from": getattr(before[key], f), "to": getattr(label, f)}
                for f in fields if getattr(before[key], f) != getattr(label, f)}
        if diff:
            kind = "edited"
            if "is_deprecated" in diff:
                kind = "deprecated" if label.is_deprecated else "restored"
            elif "name" in diff:
                kind = "renamed"
            changes.append({"change": kind, "key": key, "name": label.name, "fields": diff})
    for key, label in before.items():
        if key not in after:
            changes.append({"change": "removed", "key": key, "name": label.name})
    return changes


def announce(project: Project, version: TaxonomyVersion, *, retrain_reason: str = "") -> None:
    """Tell the layers above that `version` is the project's taxonomy now (and whether to retrain)."""
    events.taxonomy_changed.send(sender=TaxonomyVersion, project=project, version=version,
                                 retrain_reason=retrain_reason)
