"""Counting attempts per scope and key in fixed windows, in the shared cache.

Used for failed logins, failed pairing codes, sign-ups, WebSocket tickets and voice
access tokens, among others (the scopes are settings.RATE_LIMITS).
With REDIS_URL set the cache is Redis, so every worker counts together. The
clock is replaceable for tests (`ratelimit.clock = lambda: …`).
"""

import hashlib
import math
import time

from django.conf import settings
from django.core.cache import cache

from devices.errors import ServiceError

clock = time.time


def _key(scope: str, key: str, window: int) -> str:
    hashed = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"rl:{scope}:{hashed}:{window}"


def _window(scope: str) -> tuple[int, int, float]:
    limit, period = settings.RATE_LIMITS[scope]
    now = clock()
    return limit, period, now


def check(scope: str, *keys: str) -> None:
    """Raise 429 with Retry-After if any key has used up its attempts."""
    limit, period, now = _window(scope)
    window = int(now // period)
    for key in keys:
        if (cache.get(_key(scope, key, window)) or 0) >= limit:
            retry_after = max(1, math.ceil((window + 1) * period - now))
            raise ServiceError(
                "rate_limited",
                "Too many attempts. Try again later.",
                retry_after=retry_after,
            )


def hit(scope: str, *keys: str) -> None:
    limit, period, now = _window(scope)
    window = int(now // period)
    for key in keys:
        cache_key = _key(scope, key, window)
        cache.add(cache_key, 0, timeout=period + 1)
        try:
            cache.incr(cache_key)
        except ValueError:  # expired between add and incr
            cache.set(cache_key, 1, timeout=period + 1)


def check_and_hit(scope: str, *keys: str) -> None:
    """For scopes that count every attempt, not only failures."""
    check(scope, *keys)
    hit(scope, *keys)
