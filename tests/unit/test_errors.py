"""The one mapping of failures to errors: HTTP statuses, Retry-After, transport exceptions."""

from __future__ import annotations

import time

import httpx
import pytest

from mmsearch.providers.base import FatalProviderError, ProviderError
from mmsearch.providers.errors import (
    TransientError,
    TransportErrors,
    http_error,
    parse_retry_after,
    redact,
    transport_error,
)

KEY = "sk-secret-0123456789"


# -- Retry-After ------------------------------------------------------------------------------


def test_retry_after_header_forms():
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"x-other": "1"}) is None
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after({"Retry-After": date}) <= 31


def test_retry_after_edge_cases():
    assert parse_retry_after(None) is None and parse_retry_after({}) is None
    assert parse_retry_after({"RETRY-AFTER": "1.5"}) == 1.5  # header names are case-blind
    assert parse_retry_after(httpx.Headers({"Retry-After": "3"})) == 3.0
    assert parse_retry_after({"Retry-After": "-5"}) == 0.0  # never a negative wait
    assert parse_retry_after({"Retry-After": "soon"}) is None
    past = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() - 60))
    assert parse_retry_after({"Retry-After": past}) == 0.0
    # The milliseconds win when both are sent; a bad one falls back to the seconds.
    assert parse_retry_after({"retry-after-ms": "100", "Retry-After": "9"}) == 0.1
    assert parse_retry_after({"retry-after-ms": "x", "Retry-After": "9"}) == 9.0


# -- redaction --------------------------------------------------------------------------------


def test_redact_cuts_the_key_out():
    assert redact(f"bad key {KEY}, again {KEY}", KEY) == "bad key ***, again ***"
    assert redact("nothing here", KEY) == "nothing here"
    assert redact("a b c", None) == "a b c"
    assert redact("a b c", "a") == "a b c"  # too short to be a key worth hiding


# -- HTTP statuses ----------------------------------------------------------------------------


def status(http_status: int, **kw) -> ProviderError:
    values = dict(
        service="Svc",
        status=http_status,
        code=None,
        message=f"the key {KEY} is wrong",
        headers=None,
        key_env="SVC_API_KEY",
        secret=KEY,
        auth_codes=frozenset({"BadKey"}),
        fatal_codes=frozenset({"NoModel"}),
        config_hint="svc_model ('m')",
    )
    values.update(kw)
    return http_error(**values)


@pytest.mark.parametrize(
    ("code", "error_code", "kind"),
    [
        (401, None, FatalProviderError),
        (403, None, FatalProviderError),
        (400, "BadKey", FatalProviderError),
        (404, None, FatalProviderError),
        (400, "NoModel", FatalProviderError),
        (429, None, TransientError),
        (500, None, TransientError),
        (502, None, TransientError),
        (503, None, TransientError),
        (400, None, ProviderError),
        (413, None, ProviderError),
        (422, "Other", ProviderError),
    ],
)
def test_status_to_error_class(code, error_code, kind):
    error = status(code, code=error_code)
    assert type(error) is kind
    assert KEY not in str(error) and "***" in str(error)
    assert f"HTTP {code}" in str(error)


def test_rejected_key_names_the_variable():
    assert "check SVC_API_KEY" in str(status(401))
    assert "may use" not in str(status(401))
    assert "and that the key may use svc_model ('m')" in str(status(403))
    assert "HTTP 400 BadKey" in str(status(400, code="BadKey"))


def test_wrong_model_or_url_names_the_setting():
    assert str(status(404)).endswith("; check svc_model ('m')")
    assert "check" not in str(status(404, config_hint="", message=None))


def test_transient_status_carries_retry_after():
    assert status(429, headers={"Retry-After": "7"}).retry_after == 7.0
    assert status(503).retry_after is None
    assert not status(503).unreachable


# -- transport exceptions ---------------------------------------------------------------------


class BadURL(Exception):
    pass


class Slow(Exception):
    pass


class SlowToConnect(Slow):
    pass


class Broken(Exception):
    pass


KINDS = TransportErrors(
    invalid_url=(BadURL,),
    timeout=(Slow,),
    failure=(Broken,),
    unreachable=lambda exc: isinstance(exc, SlowToConnect) or "refused" in str(exc),
)


def mapped(exc: Exception, kinds: TransportErrors = KINDS) -> ProviderError | None:
    return transport_error(
        exc,
        kinds,
        service="Svc",
        url="http://svc/v1/chat",
        url_setting="svc_base_url",
        base_url="http://svc/v1",
        timeout=1.5,
        secret=KEY,
    )


def test_invalid_url_is_fatal_and_names_the_setting():
    error = mapped(BadURL("no scheme"))
    assert type(error) is FatalProviderError
    assert (
        str(error) == "Svc: 'http://svc/v1/chat' is not a valid URL (no scheme); check svc_base_url"
    )


def test_timeouts_and_failures_are_transient():
    slow, cold = mapped(Slow()), mapped(SlowToConnect())
    assert type(slow) is TransientError and str(slow) == "Svc: no answer within 1.5 s"
    assert not slow.unreachable and cold.unreachable
    broken, refused = mapped(Broken("reset")), mapped(Broken("refused"))
    assert type(broken) is TransientError
    assert str(broken) == "Svc: Broken talking to http://svc/v1"
    assert not broken.unreachable and refused.unreachable


def test_other_exceptions_are_the_sdks_complaint_or_a_bug():
    assert mapped(ValueError(f"key {KEY}")) is None  # a bug: it propagates as itself
    sdk = TransportErrors(KINDS.invalid_url, KINDS.timeout, KINDS.failure, KINDS.unreachable, "SDK")
    error = mapped(ValueError(f"bad input with key {KEY}"), sdk)
    assert type(error) is ProviderError
    assert str(error) == "Svc SDK: ValueError: bad input with key ***"
