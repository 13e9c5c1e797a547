"""The token bucket that keeps a run under an endpoint's requests-per-minute quota.

A token bucket rather than a fixed sleep between calls (the reference design), which is
both too slow for a generous quota and too fast for a tight one. One bucket per endpoint
and key in the process (``shared_limiter``), because the quota is the endpoint's.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Hashable

from mmsearch.providers.errors import CancelledError

#: Tokens the bucket holds when full. One means requests are evenly spaced at the configured
#: rate; DashScope enforces its per-minute quotas over short windows, so bursts get 429s.
DEFAULT_BURST = 1.0


class RateLimiter:
    """A token bucket shared by threads: ``per_minute`` tokens a minute, ``burst`` at most.

    ``reserve`` takes a token at once, going into debt if the bucket is empty, and says how
    long to wait before using it; threads are thereby served in arrival order with no
    polling, and the requests that leave never exceed ``burst + rate * window`` in any window.
    """

    def __init__(
        self,
        per_minute: float,
        burst: float = DEFAULT_BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, float(burst))
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        """Add the tokens earned since the last update, up to the capacity (lock held)."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def reserve(self) -> float:
        """Take one token; return the seconds to wait before the request may leave."""
        with self._lock:
            self._refill()
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def pause(self, seconds: float) -> None:
        """Send nothing more for ``seconds`` (a server's ``Retry-After``): the quota is the
        endpoint's, so one request told to wait means all of them should."""
        with self._lock:
            self._refill()
            self._tokens = min(self._tokens, 1.0 - seconds * self.rate)

    def acquire(self, abort: threading.Event | None = None) -> None:
        """Block until a request may leave; raise ``CancelledError`` if ``abort`` is set."""
        delay = self.reserve()
        if delay <= 0:
            return
        if abort is None:
            time.sleep(delay)
        elif abort.wait(delay):
            raise CancelledError("cancelled")


_LIMITERS: dict[Hashable, RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(key: Hashable, per_minute: float, burst: float = DEFAULT_BURST) -> RateLimiter:
    """One limiter per endpoint and key in this process.

    The embedder and the describer of one provider (and every ``MMSearch`` in the process)
    draw from the same quota, so they share one bucket.
    """
    full_key = (key, float(per_minute), float(burst))
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(full_key)
        if limiter is None:
            limiter = _LIMITERS[full_key] = RateLimiter(per_minute, burst)
        return limiter


def secret_fingerprint(secret: str | None) -> str:
    """A short hash that tells keys apart without holding the key in a dict key or a log."""
    return hashlib.sha256((secret or "").encode("utf-8")).hexdigest()[:12]
