"""The ``openai`` describer: any OpenAI-compatible chat completions endpoint with image input.

That covers a local vLLM or Ollama serving Qwen2.5-VL, DashScope's compatible mode and
OpenAI itself: ``POST {openai_base_url}/chat/completions`` with the image as a base64 data
URI and the reference prompt, the key (``OPENAI_API_KEY``) as a bearer token. A local
server often needs no key; then no ``Authorization`` header is sent. It only describes;
pair it with any embedder (``embedder = "offline"``, ``"dashscope"``, ``"clip"``).

Rate limit, retries and concurrency are those of ``remote``, as for DashScope.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx  # imported here so that a missing package gets the registry's install hint
from PIL import Image

from mmsearch.config import Language, Settings
from mmsearch.providers.base import (
    Description,
    FatalProviderError,
    ProviderError,
    register_describer,
)
from mmsearch.providers.remote import (
    RemoteCaller,
    TransientError,
    describe_prompt,
    http_error,
    image_data_uri,
    parse_description,
    redact,
    secret_fingerprint,
    shared_limiter,
    uri_key,
)

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


class OpenAIDescriber:
    """A description and keywords per image from a vision chat model."""

    def __init__(self, settings: Settings) -> None:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        self._key = key.strip() or None
        self.base_url = settings.openai_base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = settings.openai_model
        self.language = Language(settings.language)
        self.prompt = describe_prompt(self.language)
        self.name = f"openai-{self.model}-{self.language.value}"
        self.timeout = settings.request_timeout
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        try:
            self._http = httpx.Client(
                headers=headers,
                timeout=httpx.Timeout(settings.request_timeout),
                limits=httpx.Limits(max_connections=settings.max_concurrency),
            )
            self._http.build_request("POST", self.url)  # rejects a malformed URL now
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise FatalProviderError(
                f"{SERVICE}: {self.url!r} is not a valid URL ({exc}); check openai_base_url"
            ) from None
        limiter = shared_limiter(
            ("openai", self.base_url, secret_fingerprint(self._key)), settings.requests_per_minute
        )
        self.caller = RemoteCaller(settings, service=SERVICE, limiter=limiter)

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(self.url, json=payload)
        except httpx.TimeoutException as exc:
            raise TransientError(
                f"{SERVICE}: no answer within {self.timeout:g} s",
                unreachable=isinstance(exc, httpx.ConnectTimeout),
            ) from None
        except httpx.UnsupportedProtocol as exc:
            raise FatalProviderError(
                f"{SERVICE}: {self.url!r} is not a valid URL ({exc}); check openai_base_url"
            ) from None
        except httpx.TransportError as exc:
            raise TransientError(
                f"{SERVICE}: {type(exc).__name__} talking to {self.base_url}",
                unreachable=isinstance(exc, httpx.ConnectError),
            ) from None
        if response.status_code != 200:
            code, message = _error_fields(response)
            raise http_error(
                service=SERVICE,
                status=response.status_code,
                code=code,
                message=message,
                headers=response.headers,
                key_env=KEY_ENV,
                secret=self._key,
                auth_codes=AUTH_CODES,
                fatal_codes=FATAL_CODES,
                config_hint=f"openai_base_url ({self.base_url}) and openai_model ({self.model!r})",
            )
        try:
            return response.json()
        except ValueError:
            raise ProviderError(f"{SERVICE}: the answer is not JSON") from None

    def _describe(self, uri: str) -> Description:
        body = self._post(
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
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ProviderError(
                f"{SERVICE}: unexpected answer ({redact(repr(exc), self._key)})"
            ) from None
        if isinstance(content, list):  # some servers answer in content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return parse_description(content or "")

    def describe(self, images: Sequence[Image.Image]) -> list[Description]:
        uris = [image_data_uri(image) for image in images]
        keys = [("describe", self.model, self.prompt, uri_key(u)) for u in uris]
        return self.caller.map_cached(self._describe, uris, keys)

    def close(self) -> None:
        self._http.close()


@register_describer("openai")
def _openai_describer(settings: Settings) -> OpenAIDescriber:
    return OpenAIDescriber(settings)
