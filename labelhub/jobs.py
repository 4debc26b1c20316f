"""Background jobs: RQ when REDIS_URL is set, an in-process runner otherwise.

Every job is enqueued with `enqueue`, inside `transaction.on_commit`, so a worker
never sees a row before it is committed. Jobs are named by dotted path
("learning.jobs.train_project"), so no module imports the jobs of the layer above
it, and a job module never imports its caller. With Redis, any number of
`manage.py rqworker default` processes on any machine pick the jobs up; `make run`
starts a private Redis and one worker when no REDIS_URL is given
(labelhub/firstlook.py). The in-process runner (a thread pool in the web process)
is the last resort for a process started by hand without REDIS_URL: still in the
background, never inside the request, but lost if the process stops.

Enqueueing happens after the commit, so it must not fail the request: the rows are
saved already. When the queue is unreachable (Redis down) the error is logged and
the caller's `on_failure` runs, which lets it leave a state that the next request
retries from.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
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
        # "auto": enqueue() already waited for the commit (or was told not to); never defer a second time.
        rq_queue = django_rq.get_queue(queue, commit_mode="auto")
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


def _dispatch_or_log(path: str, args: tuple[Any, ...], kwargs: dict[str, Any], queue: str, job_id: str | None,
                     delay: float, on_failure: Callable[[], None] | None) -> None:
    try:
        _dispatch(path, args, kwargs, queue, job_id, delay)
    except Exception:  # noqa: BLE001 - after the commit: the request has done its work and must answer
        logger.exception("could not queue background job %s%r (queue %r unreachable?)", path, args, queue)
        if on_failure is not None:
            try:
                on_failure()
            except Exception:  # noqa: BLE001
                logger.exception("on_failure of background job %s failed", path)


def enqueue(path: str, *args: Any, queue: str = "default", job_id: str | None = None, delay: float = 0.0,
            on_failure: Callable[[], None] | None = None, after_commit: bool = True, **kwargs: Any) -> None:
    """Run the job at dotted `path` with (*args, **kwargs) in the background once the current transaction
    commits, `delay` seconds later when given; if it cannot be queued, log it and call `on_failure`.

    `after_commit=False` queues it now, for work whose rows are already committed and must not wait for
    (or be lost with) an enclosing transaction, e.g. a webhook retry after an attempt's outcome is saved.
    """
    if after_commit:
        transaction.on_commit(lambda: _dispatch_or_log(path, args, kwargs, queue, job_id, delay, on_failure))
    else:
        _dispatch_or_log(path, args, kwargs, queue, job_id, delay, on_failure)


def job_waiting(job_id: str, queue: str = "default") -> bool:
    """Whether the job `job_id` is still waiting in its RQ queue (queued, scheduled or deferred).

    For recovery of lost work: a job that waits is not lost. False without Redis (the in-process
    runner keeps no record) and when Redis cannot be asked.
    """
    if not uses_rq():
        return False
    import django_rq
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        job = Job.fetch(job_id, connection=django_rq.get_connection(queue))
        return job.get_status() in {"queued", "scheduled", "deferred"}
    except NoSuchJobError:
        return False
    except Exception:  # noqa: BLE001 - Redis down: the caller decides on its other evidence
        logger.warning("could not look up job %s in queue %r", job_id, queue, exc_info=True)
        return False
