"""The token bucket: the rate bound with a fake clock, and with threads over a short window."""

from __future__ import annotations

import threading
import time

import pytest

from mmsearch.providers.errors import CancelledError
from mmsearch.providers.limiter import RateLimiter, secret_fingerprint, shared_limiter

from ..fake_dashscope import max_excess


def test_token_bucket_spaces_requests_by_the_rate():
    now = [0.0]
    limiter = RateLimiter(600, burst=3, clock=lambda: now[0])  # 10/s, 3 at once
    delays = [limiter.reserve() for _ in range(6)]
    assert delays == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])
    now[0] = 10.0  # idle time refills to the burst, no further
    assert [limiter.reserve() for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])
    now[0] = 20.0
    limiter.pause(2.0)  # a Retry-After holds back every request to the endpoint
    assert [limiter.reserve() for _ in range(2)] == pytest.approx([2.0, 2.1])


def test_debt_is_paid_back_by_waiting():
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])  # 1/s, burst 1
    assert [limiter.reserve() for _ in range(3)] == pytest.approx([0, 1, 2])
    now[0] = 2.5  # the two reserved requests have left; half a token earned since
    assert limiter.reserve() == pytest.approx(0.5)


def test_pause_never_adds_tokens():
    now = [0.0]
    limiter = RateLimiter(60, burst=5, clock=lambda: now[0])
    limiter.pause(0.0)  # a Retry-After of 0 leaves one token: no burst after a 429
    assert [limiter.reserve() for _ in range(2)] == pytest.approx([0, 1])


def test_burst_is_at_least_one_and_the_rate_positive():
    assert RateLimiter(60, burst=0).capacity == 1.0
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_acquire_waits_and_abort_cuts_the_wait_short():
    limiter = RateLimiter(600)  # 10/s
    start = time.monotonic()
    limiter.acquire()
    limiter.acquire()
    assert 0.08 <= time.monotonic() - start < 0.5
    abort = threading.Event()
    abort.set()
    start = time.monotonic()
    with pytest.raises(CancelledError):
        limiter.acquire(abort)
    assert time.monotonic() - start < 0.05


def test_token_bucket_holds_across_threads():
    rate = 50  # per second: 20 requests take 0.4 s
    limiter = RateLimiter(rate * 60, burst=1)
    times: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            limiter.acquire()
            with lock:
                times.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(times) == 20
    assert max_excess(times, rate=rate, burst=1, slack=0.05) <= 0


def test_one_limiter_per_endpoint_key_and_rate():
    a = shared_limiter(("svc", "http://a", secret_fingerprint("k1")), 60)
    assert shared_limiter(("svc", "http://a", secret_fingerprint("k1")), 60) is a
    assert shared_limiter(("svc", "http://a", secret_fingerprint("k2")), 60) is not a
    assert shared_limiter(("svc", "http://b", secret_fingerprint("k1")), 60) is not a
    assert shared_limiter(("svc", "http://a", secret_fingerprint("k1")), 120) is not a


def test_fingerprint_tells_keys_apart_without_holding_them():
    key = "sk-0123456789abcdef"
    assert secret_fingerprint(key) == secret_fingerprint(key) != secret_fingerprint(key + "x")
    assert key not in secret_fingerprint(key) and len(secret_fingerprint(key)) == 12
    assert secret_fingerprint(None) == secret_fingerprint("")
