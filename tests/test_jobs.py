"""The job runner a first look uses when no Redis is configured."""
from __future__ import annotations

import threading

import pytest
from django.db import transaction

from labelhub import jobs

seen: list[str] = []
done = threading.Event()


def record_thread() -> None:
    seen.append(threading.current_thread().name)
    done.set()


@pytest.mark.django_db(transaction=True)
def test_it_runs_jobs_in_a_background_thread_after_commit_without_redis(settings):
    settings.REDIS_URL = ""
    seen.clear()
    done.clear()
    with transaction.atomic():
        jobs.enqueue("tests.test_jobs.record_thread")
        assert seen == []  # nothing runs before the commit
    assert done.wait(10)
    assert seen[0].startswith("labelhub-job") and seen[0] != threading.current_thread().name


@pytest.mark.django_db(transaction=True)
def test_it_drops_jobs_of_a_rolled_back_transaction(settings):
    settings.REDIS_URL = ""
    seen.clear()
    done.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        jobs.enqueue("tests.test_jobs.record_thread")
        raise RuntimeError("rolled back")
    assert not done.wait(0.5)
