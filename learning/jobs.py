"""Background jobs of the learning app: thin wrappers that take ids and call actions.

Enqueued by dotted path (`labelhub.jobs.enqueue("learning.jobs.train_project", ...)`).
"""
from __future__ import annotations

from learning import actions


def embed_project(project_id: int) -> None:
    actions.embed_project(project_id)


def train_project(project_id: int) -> None:
    actions.run_training(project_id)


def report_project(project_id: int) -> None:
    actions.report_project(project_id)


def finetune_project(run_id: int) -> None:
    # On the `gpu` queue: minutes of work that must not hold up the model updates on `default`.
    from learning import finetuning

    finetuning.run_finetune(run_id)
