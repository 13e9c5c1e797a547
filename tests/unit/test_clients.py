"""The two service clients, without servers: what each sends, and how its failures map.

Both go through one mapping (``RemoteClient.send`` and ``status_error``); these tests feed
each client its own library's exceptions and its service's error answers. The
protocol-server tests (``test_dashscope``, ``test_openai``) cover the same end to end.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import requests
import urllib3.exceptions
from PIL import Image

from mmsearch import Settings
from mmsearch.providers.base import FatalProviderError, ProviderError
from mmsearch.providers.dashscope import DashScopeClient
from mmsearch.providers.errors import TransientError
from mmsearch.providers.openai import OpenAIClient, OpenAIDescriber

KEY = "sk-unit-0123456789abcdef"
DS_URL = "http://dashscope.test/api/v1"
OA_URL = "http://openai.test/v1"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        dashscope_api_key=KEY,
        dashscope_base_url=DS_URL,
        openai_api_key=KEY,
        openai_base_url=OA_URL,
        openai_model="vl-model",
        request_timeout=1.5,
        requests_per_minute=60000,
    )
    values.update(overrides)
    return Settings(**values)


# -- DashScope (the SDK over requests) --------------------------------------------------------


class FakeApi:
    """Stands in for ``dashscope.MultiModalEmbedding``: answers or raises as told."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.kwargs: dict[str, Any] = {}

    def call(self, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def ds_request(outcome: Any) -> Any:
    return DashScopeClient(settings()).request(FakeApi(outcome), config_hint="hint", model="m")


def test_dashscope_sends_key_endpoint_and_timeout_with_each_call():
    api = FakeApi({"status_code": 200, "output": {"text": "ok"}})
    response = DashScopeClient(settings()).request(api, config_hint="hint", model="m")
    assert response["output"] == {"text": "ok"}
    assert api.kwargs == dict(api_key=KEY, base_address=DS_URL, request_timeout=1.5, model="m")


@pytest.mark.parametrize(
    ("status", "code", "message", "kind"),
    [
        (401, "InvalidApiKey", f"Invalid API-key provided: {KEY}", FatalProviderError),
        (
            400,
            "Arrearage",
            "Access denied, please make sure your account is in good standing",
            FatalProviderError,
        ),
        (400, "InvalidParameter", "Model not exist.", FatalProviderError),
        (429, "Throttling.RateQuota", "Requests rate limit exceeded", TransientError),
        (500, "InternalError", "An internal error has occured", TransientError),
        (400, "InvalidParameter", "The image is too large", ProviderError),
    ],
)
def test_dashscope_error_answers(status, code, message, kind):
    answer = {
        "status_code": status,
        "code": code,
        "message": message,
        "headers": {"Retry-After": "2"},
    }
    with pytest.raises(ProviderError) as err:
        ds_request(answer)
    assert type(err.value) is kind
    assert KEY not in str(err.value) and code in str(err.value)
    if status == 401:
        assert "DASHSCOPE_API_KEY" in str(err.value)
    if kind is TransientError:
        assert err.value.retry_after == 2.0


def refused() -> requests.ConnectionError:
    reason = urllib3.exceptions.NewConnectionError(None, "Connection refused")
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/", reason))


@pytest.mark.parametrize(
    ("exc", "message", "unreachable"),
    [
        (requests.exceptions.ConnectTimeout(), "no answer within 1.5 s", True),
        (requests.exceptions.ReadTimeout(), "no answer within 1.5 s", False),
        (refused(), f"ConnectionError talking to {DS_URL}", True),
        (requests.ConnectionError("Connection reset by peer"), "ConnectionError talking to", False),
        (requests.exceptions.ChunkedEncodingError(), "ChunkedEncodingError talking to", False),
    ],
)
def test_dashscope_transport_failures_are_transient(exc, message, unreachable):
    with pytest.raises(TransientError, match=message) as err:
        ds_request(exc)
    assert err.value.unreachable is unreachable


@pytest.mark.parametrize(
    "exc", [requests.exceptions.MissingSchema("no"), requests.exceptions.InvalidURL("bad")]
)
def test_dashscope_invalid_url_is_fatal(exc):
    with pytest.raises(
        FatalProviderError, match=f"'{DS_URL}' is not a valid URL.*dashscope_base_url"
    ):
        ds_request(exc)


def test_dashscope_sdk_complaints_fail_the_image_without_the_key():
    with pytest.raises(ProviderError) as err:
        ds_request(ValueError(f"upload failed for key {KEY}"))
    assert type(err.value) is ProviderError
    assert str(err.value) == "DashScope SDK: ValueError: upload failed for key ***"


def test_dashscope_needs_a_key(monkeypatch, tmp_path):
    for var in ("DASHSCOPE_API_KEY", "MMSEARCH_DASHSCOPE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no mmsearch.toml here
    with pytest.raises(FatalProviderError, match="DASHSCOPE_API_KEY"):
        DashScopeClient(settings(dashscope_api_key=None))


# -- OpenAI-compatible (httpx) ----------------------------------------------------------------


def oa_client(handler, **overrides: Any) -> OpenAIClient:
    return OpenAIClient(settings(**overrides), transport=httpx.MockTransport(handler))


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        handler.request = request
        if isinstance(body, str | bytes):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def test_openai_posts_to_chat_completions_with_the_key_as_bearer_token():
    handler = answer(200, {"choices": []})
    assert oa_client(handler).request({"model": "vl-model"}) == {"choices": []}
    assert str(handler.request.url) == f"{OA_URL}/chat/completions"
    assert handler.request.headers["Authorization"] == f"Bearer {KEY}"


def test_openai_without_a_key_sends_no_authorization(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "MMSEARCH_OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    handler = answer(200, {})
    oa_client(handler, openai_api_key=None).request({})
    assert "Authorization" not in handler.request.headers


def oa_error(code: str | None, message: str, **more: str) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"code": code, "message": message, **more}}


@pytest.mark.parametrize(
    ("status", "body", "kind", "says"),
    [
        (401, oa_error("invalid_api_key", f"Bad key: {KEY}"), FatalProviderError, "OPENAI_API_KEY"),
        (
            404,
            oa_error(None, "The model does not exist", type="invalid_request_error"),
            FatalProviderError,
            "openai_model ('vl-model')",
        ),
        (429, oa_error("insufficient_quota", "quota"), FatalProviderError, "insufficient_quota"),
        (429, oa_error("rate_limit_exceeded", "slow down"), TransientError, "exceeded: slow down"),
        (503, "<html>Service Unavailable</html>", TransientError, "HTTP 503: <html>Service"),
        # Ollama: {"error": "..."}; vLLM: {"message", "type"} at the top level.
        (400, {"error": "model 'x' not found, try pulling it"}, ProviderError, "try pulling"),
        (
            400,
            {"object": "error", "message": "too many images", "type": "BadRequestError"},
            ProviderError,
            "HTTP 400 BadRequestError: too many images",
        ),
    ],
)
def test_openai_error_answers(status, body, kind, says):
    with pytest.raises(ProviderError) as err:
        oa_client(answer(status, body, {"retry-after-ms": "250"})).request({})
    assert type(err.value) is kind
    assert says in str(err.value) and KEY not in str(err.value)
    if kind is TransientError:
        assert err.value.retry_after == 0.25


def test_openai_answer_that_is_not_json():
    with pytest.raises(ProviderError, match="not JSON"):
        oa_client(answer(200, "surprise")).request({})


def raising(exc: Exception):
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "message", "unreachable"),
    [
        (httpx.ConnectTimeout("timed out"), "no answer within 1.5 s", True),
        (httpx.ReadTimeout("timed out"), "no answer within 1.5 s", False),
        (httpx.ConnectError("refused"), f"ConnectError talking to {OA_URL}", True),
        (httpx.RemoteProtocolError("dropped"), "RemoteProtocolError talking to", False),
    ],
)
def test_openai_transport_failures_are_transient(exc, message, unreachable):
    with pytest.raises(TransientError, match=message) as err:
        oa_client(raising(exc)).request({})
    assert err.value.unreachable is unreachable


def test_openai_invalid_url_is_fatal():
    with pytest.raises(FatalProviderError, match="is not a valid URL.*openai_base_url"):
        oa_client(raising(httpx.UnsupportedProtocol("ftp")), openai_base_url="ftp://x").request({})
    with pytest.raises(FatalProviderError, match="'http://\\[::1/chat/completions' is not a valid"):
        OpenAIClient(settings(openai_base_url="http://[::1"))


def test_openai_other_exceptions_are_bugs_and_surface_as_themselves():
    with pytest.raises(RuntimeError, match="bug"):
        oa_client(raising(RuntimeError("bug"))).request({})


def test_openai_describer_reads_text_and_content_parts():
    parts = [{"type": "text", "text": "描述：一只狮子\n"}, {"type": "text", "text": "关键词：狮子"}]
    body = {"choices": [{"message": {"content": parts}}]}
    describer = OpenAIDescriber(oa_client(answer(200, body)), "zh")
    (desc,) = describer.describe([Image.new("RGB", (8, 8))])
    assert (desc.text, desc.keywords) == ("一只狮子", ["狮子"])
    broken = OpenAIDescriber(oa_client(answer(200, {"choices": []})), "zh")
    with pytest.raises(ProviderError, match="unexpected answer"):
        broken.describe([Image.new("RGB", (8, 8))])
