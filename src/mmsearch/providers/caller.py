"""Every remote request goes through ``RemoteCaller``: rate limit, retries, concurrency, cache.

It waits for the rate limiter, retries ``TransientError`` (429, 5xx, timeouts, dropped
connections) with exponential backoff and jitter (``tenacity``), honours ``Retry-After``,
never retries anything else, and runs a batch's calls concurrently, at most
``max_concurrency`` at a time, caching their results (``map_cached``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from mmsearch.providers.base import FatalProviderError, ProviderError
from mmsearch.providers.errors import CancelledError, TransientError
from mmsearch.providers.limiter import RateLimiter

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Backoff between retries: ``BACKOFF_INITIAL * 2**n`` seconds plus up to
#: ``BACKOFF_INITIAL`` of random jitter, capped at ``BACKOFF_MAX``. Module constants so
#: that tests can make them small; read at call time.
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
#: A server's ``Retry-After`` is honoured up to this many seconds.
RETRY_AFTER_MAX = 60.0
#: Results kept per provider instance, so that ingest's one-by-one retry of a failed batch
#: re-sends only the images that failed, not the ones that succeeded a moment ago.
CACHE_SIZE = 1024


class LRUCache:
    """A small thread-safe LRU map."""

    def __init__(self, maxsize: int = CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)


def _retry_after(state: RetryCallState) -> float | None:
    """The ``Retry-After`` of the failure that ended this attempt, if the server sent one."""
    exc = state.outcome.exception() if state.outcome else None
    return getattr(exc, "retry_after", None)


def backoff(state: RetryCallState) -> float:
    """Exponential backoff with jitter, or the server's ``Retry-After`` if that is longer."""
    exponent = min(state.attempt_number - 1, 30)
    seconds = BACKOFF_INITIAL * 2**exponent + random.uniform(0, BACKOFF_INITIAL)
    seconds = min(seconds, BACKOFF_MAX)
    retry_after = _retry_after(state)
    if retry_after is not None:
        return max(seconds, min(retry_after, RETRY_AFTER_MAX))
    return seconds


def _sleeper(abort: threading.Event | None) -> Callable[[float], None]:
    """A sleep that a fatal error elsewhere in the batch cuts short with ``CancelledError``."""

    def sleep(seconds: float) -> None:
        if abort is None:
            time.sleep(seconds)
        elif abort.wait(seconds):
            raise CancelledError("cancelled")

    return sleep


class RemoteCaller:
    """Rate limit, retries and bounded concurrency for one provider's requests.

    ``service`` names the provider in messages and threads; ``max_retries`` is the number
    of tries after the first.
    """

    def __init__(
        self, *, service: str, limiter: RateLimiter, max_retries: int, max_concurrency: int
    ) -> None:
        self.service = service
        self.limiter = limiter
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.cache = LRUCache()

    def _before_sleep(self, state: RetryCallState) -> None:
        """Hold back the whole endpoint for a ``Retry-After``, and say why we wait."""
        retry_after = _retry_after(state)
        if retry_after:
            self.limiter.pause(min(retry_after, RETRY_AFTER_MAX))
        log.info(
            "%s; retry %d of %d in %.2f s",
            state.outcome.exception() if state.outcome else None,
            state.attempt_number,
            self.max_retries,
            state.next_action.sleep if state.next_action else 0.0,
        )

    def _retrying(self, abort: threading.Event | None) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=backoff,
            sleep=_sleeper(abort),
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def call(self, fn: Callable[[], T], *, abort: threading.Event | None = None) -> T:
        """``fn()`` under the rate limit, retried on ``TransientError``.

        After the last retry a connection that could not be opened becomes a
        ``FatalProviderError`` (the endpoint is down or the URL is wrong: every other image
        would wait through the same retries), anything else a ``ProviderError``.
        """

        def attempt() -> T:
            if abort is not None and abort.is_set():
                raise CancelledError("cancelled")
            self.limiter.acquire(abort)
            return fn()

        try:
            return self._retrying(abort)(attempt)
        except TransientError as exc:
            attempts = self.max_retries + 1
            if exc.unreachable:
                raise FatalProviderError(
                    f"{self.service}: cannot connect after {attempts} attempts ({exc})"
                ) from None
            raise ProviderError(f"{exc} (gave up after {attempts} attempts)") from None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn`` over ``items`` (one request each), concurrently, results in order.

        All calls run to the end even if one fails, so that their results can be cached and
        ingest's one-by-one retry costs only the failed images; then the first failure is
        raised. A fatal error cancels the calls not yet sent and is raised at once.
        """
        if not items:
            return []
        if len(items) == 1 or self.max_concurrency == 1:
            return self._map_serial(fn, items)
        return self._map_concurrent(fn, items)

    def _map_serial(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        abort = threading.Event()
        out: list[R] = []
        failures: list[ProviderError] = []
        for item in items:
            try:
                out.append(self.call(lambda item=item: fn(item), abort=abort))
            except FatalProviderError:
                raise
            except ProviderError as exc:
                failures.append(exc)
        if failures:
            raise self._batch_error(failures, len(items))
        return out

    def _map_concurrent(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        abort = threading.Event()
        workers = min(len(items), self.max_concurrency)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=self.service)
        try:
            futures = [
                pool.submit(self.call, lambda item=item: fn(item), abort=abort) for item in items
            ]
            _raise_first_fatal(futures, abort)
            errors = [e for f in futures if (e := f.exception()) is not None]
            for error in errors:
                if not isinstance(error, ProviderError):
                    raise error  # a bug, not a provider failure: let it surface as itself
            if errors:
                raise self._batch_error(errors, len(items))
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def map_cached(
        self, fn: Callable[[T], R], items: Sequence[T], keys: Sequence[Hashable]
    ) -> list[R]:
        """``map`` that answers repeated items (same key) from the cache.

        Each result is cached as soon as its request succeeds, so when another request of
        the batch fails and ingest retries the images one by one, only the failed ones are
        sent again.
        """
        results: dict[Hashable, R] = {}
        todo: dict[Hashable, T] = {}
        for item, key in zip(items, keys, strict=True):
            hit = self.cache.get(key)
            if hit is not None:
                results[key] = hit
            elif key not in todo:
                todo[key] = item

        def run(pair: tuple[Hashable, T]) -> R:
            key, item = pair
            value = fn(item)
            self.cache.put(key, value)
            return value

        fresh = self.map(run, list(todo.items()))
        results.update(zip(todo, fresh, strict=True))
        return [results[key] for key in keys]

    @staticmethod
    def _batch_error(failures: Sequence[BaseException], total: int) -> ProviderError:
        if total == 1:
            first = failures[0]
            return first if isinstance(first, ProviderError) else ProviderError(str(first))
        return ProviderError(f"{len(failures)} of {total} requests failed; first: {failures[0]}")


def _raise_first_fatal(futures: Sequence[Future[Any]], abort: threading.Event) -> None:
    """Wait for ``futures``; on the first ``FatalProviderError``, cancel the rest and raise it."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
        for fut in done:
            exc = fut.exception()
            if isinstance(exc, FatalProviderError):
                abort.set()
                raise exc
