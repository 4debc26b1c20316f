"""Background jobs: RQ when REDIS_URL is set, an in-process runner otherwise.

Every job is enqueued with `enqueue`, inside `transaction.on_commit`, so a worker
never sees a row before it is committed. With Redis, any number of
`manage.py rqworker default` processes on any machine pick the jobs up. Without
Redis (the first look), a small thread pool in the web process runs them: still in
the background, never inside the request, but lost if the process stops.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections, transaction

logger = logging.getLogger(__name__)

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def uses_rq() -> bool:
    return bool(settings.REDIS_URL)


def _embedded_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            # One thread: SQLite has one writer anyway, and jobs for one project
            # must not race each other.
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labelhub-job")
        return _executor


def _run_embedded(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    close_old_connections()
    try:
        func(*args, **kwargs)
    except Exception:
        logger.exception("background job %s failed", getattr(func, "__name__", func))
    finally:
        connections.close_all()


def _dispatch(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], queue: str,
              job_id: str | None) -> None:
    if uses_rq():
        import django_rq

        options: dict[str, Any] = {}
        if job_id:
            options["job_id"] = job_id
        django_rq.get_queue(queue).enqueue(func, *args, **kwargs, **options)
    else:
        _embedded_executor().submit(_run_embedded, func, args, kwargs)


def enqueue(func: Callable[..., Any], *args: Any, queue: str = "default", job_id: str | None = None,
            **kwargs: Any) -> None:
    """Run func(*args, **kwargs) in the background once the current transaction commits."""
    transaction.on_commit(lambda: _dispatch(func, args, kwargs, queue, job_id))
