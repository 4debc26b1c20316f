"""Background jobs of the serving app: thin wrappers that take ids and call actions.

Enqueued by dotted path (`labelhub.jobs.enqueue("serving.jobs.deliver_webhook", ...)`).
"""
from __future__ import annotations

from serving import webhooks


def deliver_webhook(delivery_id: str) -> None:
    webhooks.deliver(delivery_id)
