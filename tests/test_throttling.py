"""The API's rate limit counts exactly when many requests for one key arrive at once.

DRF's history throttle reads, filters and writes a list, so concurrent requests could all
pass; projects.throttling counts in one Redis transaction per request.
"""
from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from django.core.cache import caches

from projects.throttling import AtomicSlidingWindow

pytestmark = pytest.mark.django_db


class KeyThrottle(AtomicSlidingWindow):
    cache_alias = "throttle"
    scope = "test"

    def __init__(self, key: str, rate: str) -> None:
        self.rate = rate
        self.num_requests, self.duration = self.parse_rate(rate)
        self._key = key

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self._key


@pytest.fixture
def key() -> str:
    if not type(caches["throttle"]).__module__.startswith("django_redis"):
        pytest.skip("the exact count needs the Redis cache (REDIS_URL)")
    return f"labelhub:test-throttle:{uuid.uuid4().hex}"


def test_exactly_the_rate_passes_when_requests_arrive_together(key: str) -> None:
    allowed: list[bool] = []
    start = threading.Barrier(40)

    def one_request() -> None:
        start.wait()
        allowed.append(KeyThrottle(key, "10/min").allow_request(None, None))  # type: ignore[arg-type]

    threads = [threading.Thread(target=one_request) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 10 and allowed.count(False) == 30


def test_a_refused_request_is_not_counted_and_says_when_to_retry(key: str) -> None:
    throttle = KeyThrottle(key, "2/min")
    assert [throttle.allow_request(None, None) for _ in range(2)] == [True, True]  # type: ignore[arg-type]
    for _ in range(5):
        assert not throttle.allow_request(None, None)  # type: ignore[arg-type]
    wait = throttle.wait()
    assert wait is not None and 55 <= wait <= 60
    # Refused requests left no trace: the window holds the two that passed.
    from django_redis import get_redis_connection  # type: ignore[import-untyped]

    assert get_redis_connection("throttle").zcard(key) == 2


def test_the_window_slides(key: str) -> None:
    throttle = KeyThrottle(key, "2/s")
    assert [throttle.allow_request(None, None) for _ in range(3)] == [True, True, False]  # type: ignore[arg-type]
    threading.Event().wait(1.05)
    assert throttle.allow_request(None, None)  # type: ignore[arg-type]
