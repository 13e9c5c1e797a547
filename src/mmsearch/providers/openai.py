"""The ``openai`` describer: any OpenAI-compatible chat completions endpoint with image input.

That covers a local vLLM or Ollama serving Qwen2.5-VL, DashScope's compatible mode and
OpenAI itself: ``POST {openai_base_url}/chat/completions`` with the image as a base64 data
URI and the reference prompt, the key (``OPENAI_API_KEY``) as a bearer token. A local
server often needs no key; then no ``Authorization`` header is sent. It only describes;
pair it with any embedder (``embedder = "offline"``, ``"dashscope"``, ``"clip"``).

``OpenAIClient`` sends the requests; rate limit, retries, concurrency and the mapping of
failures to errors are those of ``RemoteClient``, as for DashScope.
"""

from __future__ import annotations

from typing import Any

import httpx  # imported here so that a missing package gets the registry's install hint

from mmsearch.config import Language, Settings
from mmsearch.providers.answers import describe_prompt, parse_description
from mmsearch.providers.base import (
    Description,
    Images,
    ProviderError,
    register_describer,
)
from mmsearch.providers.client import RemoteClient
from mmsearch.providers.encoding import batch_data_uris, uri_key
from mmsearch.providers.errors import TransportErrors, invalid_url_error

SERVICE = "OpenAI-compatible endpoint"
KEY_ENV = "OPENAI_API_KEY"
#: Longest answer asked for, in tokens: a sentence and five keywords need ~100.
MAX_TOKENS = 300
#: Low temperature: a description should say what is in the image, not vary run to run.
TEMPERATURE = 0.2
#: OpenAI error codes that every further request would get too.
FATAL_CODES = frozenset({"model_not_found", "insufficient_quota"})
AUTH_CODES = frozenset({"invalid_api_key"})


def _error_fields(response: httpx.Response) -> tuple[str | None, str | None]:
    """(code, message) from an OpenAI-style error body, or from whatever the server sent."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text.strip()
        return None, text[:300] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        return (str(code) if code else None), str(error.get("message") or "")
    if isinstance(error, str):  # Ollama: {"error": "..."}
        return None, error
    if isinstance(body, dict):  # vLLM and others: {"message": ..., "code"/"type": ...}
        code = body.get("code") or body.get("type")
        return (str(code) if code else None), str(body.get("message") or body.get("detail") or "")
    return None, str(body)[:300]


#: What httpx raises. Nothing else is caught: any other exception is a bug.
HTTPX_ERRORS = TransportErrors(
    invalid_url=(httpx.UnsupportedProtocol,),
    timeout=(httpx.TimeoutException,),
    failure=(httpx.TransportError,),
    unreachable=lambda exc: isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError),
)


class OpenAIClient(RemoteClient):
    """``POST {openai_base_url}/chat/completions``, its answer as JSON or a provider error.

    A local server often needs no key; then no ``Authorization`` header is sent.
    """

    service = SERVICE
    key_env = KEY_ENV
    url_setting = "openai_base_url"
    transport_errors = HTTPX_ERRORS
    auth_codes = AUTH_CODES
    fatal_codes = FATAL_CODES

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> None:
        """``transport`` replaces the network (tests answer with ``httpx.MockTransport``)."""
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        super().__init__(
            settings, name="openai", base_url=settings.openai_base_url, key=key.strip() or None
        )
        self.url = f"{self.base_url}/chat/completions"
        self.model = settings.openai_model
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        try:
            self._http = httpx.Client(
                headers=headers,
                timeout=httpx.Timeout(settings.request_timeout),
                limits=httpx.Limits(max_connections=settings.max_concurrency),
                transport=transport,
            )
            self._http.build_request("POST", self.url)  # rejects a malformed URL now
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise invalid_url_error(SERVICE, self.url, exc, self.url_setting) from None

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One chat completion: the answer's JSON body.

        Raises ``TransientError`` (retried by the caller), ``FatalProviderError`` or
        ``ProviderError``.
        """
        response = self.send(lambda: self._http.post(self.url, json=payload), url=self.url)
        if response.status_code != 200:
            code, message = _error_fields(response)
            raise self.status_error(
                response.status_code,
                code=code,
                message=message,
                headers=response.headers,
                config_hint=f"openai_base_url ({self.base_url}) and openai_model ({self.model!r})",
            )
        try:
            return response.json()
        except ValueError:
            raise ProviderError(f"{SERVICE}: the answer is not JSON") from None

    def close(self) -> None:
        self._http.close()


class OpenAIDescriber:
    """A description and keywords per image from a vision chat model."""

    def __init__(self, client: OpenAIClient, language: Language) -> None:
        self.client = client
        self.model = client.model
        self.language = Language(language)
        self.prompt = describe_prompt(self.language)
        self.name = f"openai-{self.model}-{self.language.value}"

    def _describe(self, uri: str) -> Description:
        body = self.client.request(
            {
                "model": self.model,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": uri}},
                            {"type": "text", "text": self.prompt},
                        ],
                    }
                ],
                "max_tokens": MAX_TOKENS,
                "temperature": TEMPERATURE,
            }
        )
        return parse_description(self._content(body))

    def _content(self, body: dict[str, Any]) -> str:
        """The answer's text, also from servers that answer in content parts."""
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ProviderError(
                f"{SERVICE}: unexpected answer ({self.client.redact(repr(exc))})"
            ) from None
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content or ""

    def describe(self, images: Images) -> list[Description]:
        uris = batch_data_uris(images)
        keys = [("describe", self.model, self.prompt, uri_key(u)) for u in uris]
        return self.client.caller.map_cached(self._describe, uris, keys)

    def close(self) -> None:
        self.client.close()


@register_describer("openai")
def _openai_describer(settings: Settings) -> OpenAIDescriber:
    return OpenAIDescriber(OpenAIClient(settings), settings.language)
