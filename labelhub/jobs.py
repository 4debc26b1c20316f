"""Background jobs: RQ when REDIS_URL is set, an in-process runner otherwise.

Every job is enqueued with `enqueue`, inside `transaction.on_commit`, so a worker
never sees a row before it is committed. Jobs are named by dotted path
("learning.jobs.train_project"), so no module imports the jobs of the layer above
it, and a job module never imports its caller. With Redis, any number of
`manage.py rqworker default` processes on any machine pick the jobs up. Without
Redis (the first look), a small thread pool in the web process runs them: still in
the background, never inside the request, but lost if the process stops.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.utils.module_loading import import_string

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


def _run_embedded(path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    close_old_connections()
    try:
        import_string(path)(*args, **kwargs)
    except Exception:
        logger.exception("background job %s failed", path)
    finally:
        connections.close_all()


def _dispatch(path: str, args: tuple[Any, ...], kwargs: dict[str, Any], queue: str, job_id: str | None,
              delay: float) -> None:
    if uses_rq():
        import django_rq

        options: dict[str, Any] = {}
        if job_id:
            options["job_id"] = job_id
        rq_queue = django_rq.get_queue(queue)
        if delay > 0:
            # Needs a worker started with --with-scheduler (`make worker` and `make run` do).
            rq_queue.enqueue_in(timedelta(seconds=delay), path, *args, **kwargs, **options)
        else:
            rq_queue.enqueue(path, *args, **kwargs, **options)
    elif delay > 0:
        timer = threading.Timer(delay, lambda: _embedded_executor().submit(_run_embedded, path, args, kwargs))
        timer.daemon = True
        timer.start()
    else:
        _embedded_executor().submit(_run_embedded, path, args, kwargs)


def enqueue(path: str, *args: Any, queue: str = "default", job_id: str | None = None, delay: float = 0.0,
            **kwargs: Any) -> None:
    """Run the job at dotted `path` with (*args, **kwargs) in the background once the current transaction
    commits, `delay` seconds later when given."""
    transaction.on_commit(lambda: _dispatch(path, args, kwargs, queue, job_id, delay))
