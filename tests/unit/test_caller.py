"""The caller: retries and backoff, no retry where none helps, bounded concurrency, the cache."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from mmsearch.providers import caller as caller_module
from mmsearch.providers.base import FatalProviderError, ProviderError
from mmsearch.providers.caller import LRUCache, RemoteCaller, backoff
from mmsearch.providers.errors import CancelledError, TransientError
from mmsearch.providers.limiter import RateLimiter

#: Every test here retries with millisecond backoff (fixture in conftest).
pytestmark = pytest.mark.usefixtures("fast_backoff")


class RecordingLimiter(RateLimiter):
    """No rate to speak of; remembers the pauses a Retry-After asked for."""

    def __init__(self) -> None:
        super().__init__(per_minute=1e9)
        self.pauses: list[float] = []

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        super().pause(seconds)


def make(max_retries: int = 2, max_concurrency: int = 4) -> RemoteCaller:
    return RemoteCaller(
        service="Svc",
        limiter=RecordingLimiter(),
        max_retries=max_retries,
        max_concurrency=max_concurrency,
    )


def script(*outcomes):
    """A request that raises or returns each outcome in turn; ``calls`` counts the tries."""
    queue = list(outcomes)

    def fn():
        fn.calls += 1
        outcome = queue.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    fn.calls = 0
    return fn


# -- one call ---------------------------------------------------------------------------------


def test_transient_failures_are_retried():
    fn = script(TransientError("429"), TransientError("timeout"), "ok")
    assert make(max_retries=2).call(fn) == "ok"
    assert fn.calls == 3


def test_retries_give_up_after_max_retries():
    fn = script(*[TransientError("Svc: HTTP 500")] * 5)
    with pytest.raises(ProviderError, match=r"HTTP 500 \(gave up after 3 attempts\)") as err:
        make(max_retries=2).call(fn)
    assert type(err.value) is ProviderError  # this image failed; the run goes on
    assert fn.calls == 3


def test_an_endpoint_that_never_answers_stops_the_run():
    fn = script(*[TransientError("refused", unreachable=True)] * 5)
    with pytest.raises(FatalProviderError, match="Svc: cannot connect after 2 attempts"):
        make(max_retries=1).call(fn)


@pytest.mark.parametrize("error", [ProviderError("HTTP 400"), FatalProviderError("HTTP 401")])
def test_other_errors_are_not_retried(error):
    fn = script(error, "never")
    with pytest.raises(type(error)):
        make().call(fn)
    assert fn.calls == 1


def test_retry_after_is_honoured_and_holds_back_the_endpoint():
    c = make()
    fn = script(TransientError("429", retry_after=0.2), "ok")
    start = time.monotonic()
    assert c.call(fn) == "ok"
    assert time.monotonic() - start >= 0.2  # the backoff alone would be ~0.01 s
    assert c.limiter.pauses == [0.2]


def test_an_aborted_batch_sends_nothing_more():
    abort = threading.Event()
    abort.set()
    fn = script("never")
    with pytest.raises(CancelledError):
        make().call(fn, abort=abort)
    assert fn.calls == 0


def state(attempt: int, error: BaseException | None = None) -> SimpleNamespace:
    """The little of tenacity's RetryCallState that ``backoff`` reads."""
    return SimpleNamespace(attempt_number=attempt, outcome=SimpleNamespace(exception=lambda: error))


def test_backoff_doubles_with_jitter_and_is_capped(monkeypatch):
    monkeypatch.setattr(caller_module, "BACKOFF_INITIAL", 0.5)
    monkeypatch.setattr(caller_module, "BACKOFF_MAX", 30.0)
    for attempt, low in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0)]:
        waits = [backoff(state(attempt)) for _ in range(50)]
        assert all(low <= w <= low + 0.5 for w in waits)
        assert len(set(waits)) > 1  # jitter: retries from many threads do not line up
    assert backoff(state(40)) == 30.0


def test_backoff_waits_at_least_the_retry_after_up_to_a_limit(monkeypatch):
    monkeypatch.setattr(caller_module, "BACKOFF_INITIAL", 0.5)
    monkeypatch.setattr(caller_module, "BACKOFF_MAX", 30.0)
    assert backoff(state(1, TransientError("429", retry_after=5))) == 5.0
    assert backoff(state(1, TransientError("429", retry_after=0.1))) >= 0.5
    assert (
        backoff(state(1, TransientError("429", retry_after=1e6))) == caller_module.RETRY_AFTER_MAX
    )


# -- a batch ----------------------------------------------------------------------------------


def test_map_keeps_order_and_bounds_concurrency():
    c = make(max_concurrency=2)
    in_flight, peak, lock = [0], [0], threading.Lock()

    def fn(x: int) -> int:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.03)
        with lock:
            in_flight[0] -= 1
        return x * x

    assert c.map(fn, list(range(6))) == [x * x for x in range(6)]
    assert peak[0] == 2
    assert c.map(fn, []) == []


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_failure_does_not_stop_the_rest_of_the_batch(concurrency):
    done: list[int] = []

    def fn(x: int) -> int:
        if x == 1:
            raise ProviderError("HTTP 400 bad image")
        done.append(x)
        return x

    with pytest.raises(ProviderError, match="1 of 3 requests failed; first: HTTP 400") as err:
        make(max_concurrency=concurrency).map(fn, [0, 1, 2])
    assert type(err.value) is ProviderError and sorted(done) == [0, 2]


def test_a_single_failure_is_raised_as_itself():
    error = ProviderError("HTTP 400 bad image")
    with pytest.raises(ProviderError) as err:
        make().map(lambda _: script(error)(), [0])
    assert err.value is error


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_fatal_error_stops_the_batch_at_once(concurrency):
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        if x == 0:
            raise FatalProviderError("HTTP 401")
        time.sleep(0.05)
        return x

    with pytest.raises(FatalProviderError, match="HTTP 401"):
        make(max_concurrency=concurrency).map(fn, list(range(8)))
    assert len(calls) < 8


def test_a_bug_surfaces_as_itself():
    def fn(x: int) -> int:
        if x == 1:
            raise KeyError("bug")
        return x

    with pytest.raises(KeyError):
        make(max_concurrency=2).map(fn, [0, 1, 2])


# -- the cache --------------------------------------------------------------------------------


def test_map_cached_sends_each_distinct_item_once():
    c = make()
    sent: list[str] = []

    def fn(item: str) -> str:
        sent.append(item)
        return item.upper()

    assert c.map_cached(fn, ["a", "b", "a"], ["ka", "kb", "ka"]) == ["A", "B", "A"]
    assert sorted(sent) == ["a", "b"]
    assert c.map_cached(fn, ["b", "a"], ["kb", "ka"]) == ["B", "A"]
    assert sorted(sent) == ["a", "b"]  # answered from the cache


def test_one_by_one_retry_after_a_failed_batch_resends_only_the_failures():
    c = make()
    sent: list[str] = []
    flaky = {"b"}

    def fn(item: str) -> str:
        sent.append(item)
        if item in flaky:
            flaky.discard(item)
            raise ProviderError(f"HTTP 400 {item}")
        return item.upper()

    items = ["a", "b", "c"]
    with pytest.raises(ProviderError):
        c.map_cached(fn, items, items)
    results = [c.map_cached(fn, [item], [item])[0] for item in items]  # as ingest retries
    assert results == ["A", "B", "C"]
    assert sorted(sent) == ["a", "b", "b", "c"]


def test_lru_cache_drops_the_least_recently_used():
    cache = LRUCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the more recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
