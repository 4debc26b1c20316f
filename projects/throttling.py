"""Request counting for the API's rate limits, exact under concurrency.

DRF's `SimpleRateThrottle` keeps each client's request history as a list in the cache and
does read → filter → write. Two web processes answering the same key at the same moment
both read the same history and both let their request through, so a key hammered from
many connections exceeds its rate (issue 11 measured the race). With a Redis cache this
module counts in one Redis sorted set per client instead, in a single MULTI/EXEC round
trip (drop entries older than the window, add this request, count): Redis runs the four
commands as one, so concurrent requests are counted in order and exactly `num_requests`
of them pass per sliding window. A refused request is taken out of the set again, as DRF
does not record refused requests either.

Without Redis (a single-machine first look with the file cache) DRF's own history is used:
one machine, few clients, no shared count needed.

Written here rather than taken from django-ratelimit because that library counts fixed
windows (a client may send twice its rate across a window boundary) and cannot fail
closed for project keys while failing open for people, which the two throttles need.
"""
from __future__ import annotations

import os
import time
from typing import Any

from django.core.cache import caches
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle


def _redis_client(alias: str) -> Any | None:
    """The raw Redis client behind a django-redis cache alias, or None for any other backend."""
    cache = caches[alias]
    if not type(cache).__module__.startswith("django_redis"):
        return None
    from django_redis import get_redis_connection  # type: ignore[import-untyped]

    return get_redis_connection(alias)


class AtomicSlidingWindow(SimpleRateThrottle):
    """A `SimpleRateThrottle` whose count is exact across processes when the cache is Redis.

    Subclasses set `cache_alias` and the usual `scope` / `get_rate` / `get_cache_key`.
    Redis errors propagate: each subclass decides whether to fail open or closed.
    """

    cache_alias = "default"
    num_requests: int | None
    duration: int | None

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None or self.num_requests is None or self.duration is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        client = _redis_client(self.cache_alias)
        if client is None:
            return super().allow_request(request, view)
        now = time.time()
        member = f"{now:.6f}:{os.urandom(4).hex()}"
        pipe = client.pipeline(transaction=True)
        pipe.zremrangebyscore(self.key, "-inf", now - self.duration)
        pipe.zadd(self.key, {member: now})
        pipe.zcard(self.key)
        pipe.expire(self.key, int(self.duration) + 1)
        count = pipe.execute()[2]
        if count <= self.num_requests:
            return True
        client.zrem(self.key, member)
        oldest = client.zrange(self.key, 0, 0, withscores=True)
        # Retry-After: when the oldest request in the window leaves it.
        self.retry_after = max(0.0, self.duration - (now - oldest[0][1])) if oldest else float(self.duration)
        return self.throttle_failure()

    def wait(self) -> float | None:
        retry_after: float | None = getattr(self, "retry_after", None)
        return retry_after if retry_after is not None else super().wait()
