"""Background jobs of the learning app: thin wrappers that take ids and call actions."""
from __future__ import annotations

from learning import actions


def embed_project(project_id: int) -> None:
    actions.embed_project(project_id)


def train_project(project_id: int) -> None:
    actions.run_training(project_id)


def deliver_webhook(delivery_id: str) -> None:
    from learning import webhooks

    webhooks.deliver(delivery_id)
