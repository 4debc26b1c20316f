"""Background jobs of the projects app: thin wrappers that take ids and call actions."""
from __future__ import annotations

from projects import actions


def import_dataset(dataset_id: int) -> None:
    actions.run_import(dataset_id)
