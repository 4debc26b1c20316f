"""Background jobs of the projects app: thin wrappers that take ids and call actions."""
from __future__ import annotations

from projects import imports


def import_dataset(dataset_id: int) -> None:
    imports.run_import(dataset_id)
