"""The ``dashscope`` provider: Alibaba Cloud's models through the official ``dashscope`` SDK.

- Embedder: ``MultiModalEmbedding`` (``multimodal-embedding-v1`` by default) puts images
  and texts into one 1024-d space; one item per request, as the service takes them. It has
  no separate image-only space (``feature_dim`` 0), so image->image search uses the shared
  vectors.
- Describer: ``MultiModalConversation`` with a Qwen-VL model (``qwen-vl-plus`` by default)
  and the reference prompt (a description within 50 characters, then five keywords).

Requests for a batch run concurrently (``max_concurrency``), under one token bucket per
endpoint and key (``requests_per_minute``), with retries on 429, 5xx and timeouts; see
``caller`` and, for what a failure becomes, ``errors``. The SDK's own retry is limited to
resending once on a dropped pooled connection.
The key comes from ``DASHSCOPE_API_KEY`` (or ``dashscope_api_key`` in ``mmsearch.toml``)
and is passed to each call, so the SDK's global key and key files are never consulted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import dashscope  # imported here so that a missing package gets the registry's install hint
import numpy as np
import requests
import urllib3.exceptions  # a dependency of requests

from mmsearch.config import Language, Settings
from mmsearch.providers.answers import describe_prompt, parse_description
from mmsearch.providers.base import (
    Description,
    FatalProviderError,
    Images,
    ImageVectors,
    ProviderError,
    l2_normalize,
    register_describer,
    register_embedder,
)
from mmsearch.providers.client import RemoteClient
from mmsearch.providers.encoding import batch_data_uris, uri_key
from mmsearch.providers.errors import TransportErrors

log = logging.getLogger(__name__)

SERVICE = "DashScope"
KEY_ENV = "DASHSCOPE_API_KEY"
#: Output width of the embedding models this provider knows; others are assumed 1024-d and
#: checked against the first answer.
EMBEDDING_DIMS = {
    "multimodal-embedding-v1": 1024,
    "tongyi-embedding-vision-plus": 1152,
    "tongyi-embedding-vision-flash": 768,
}
DEFAULT_DIM = 1024
#: DashScope error codes that mean the key (or the account behind it) cannot be used.
AUTH_CODES = frozenset(
    {"InvalidApiKey", "AccessDenied", "AccessDenied.Unpurchased", "Model.AccessDenied"}
)
#: Error codes that every further request would get too.
FATAL_CODES = frozenset({"Arrearage", "ModelNotFound", "Model.NotFound", "Model.Unavailable"})
#: Longest answer asked of the VL model, in tokens: a sentence and five keywords need ~100.
MAX_TOKENS = 300


class _QuietRequestFailed(logging.Filter):
    """Drop the SDK's "Request failed" tracebacks: every failure is retried or reported by
    this provider with a one-line reason, and a timeout must not print a stack trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Request failed"


logging.getLogger("dashscope").addFilter(_QuietRequestFailed())


def _unreachable(exc: Exception) -> bool:
    """True when the connection could not be opened at all (refused, no such host)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


#: What requests (under the SDK) raises; any other exception is the SDK's own complaint
#: about this request (bad input, a failed upload).
REQUESTS_ERRORS = TransportErrors(
    invalid_url=(
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
    ),
    timeout=(requests.exceptions.Timeout,),
    failure=(requests.RequestException,),
    unreachable=_unreachable,
    sdk="SDK",
)


def _field(response: Any, name: str) -> Any:
    """A field of an SDK response, ``None`` if this SDK version does not have it.

    Responses are dicts with attribute access that raises ``KeyError``, not
    ``AttributeError``, for a missing field, so ``getattr`` with a default does not work.
    """
    if isinstance(response, Mapping):
        return response.get(name)
    return getattr(response, name, None)


def _sdk_safe_text(text: str) -> str:
    """``text`` changed just enough that the SDK cannot mistake it for a local file.

    The SDK uploads any content string that names an existing file (or starts with
    ``file://`` / ``oss://``) to Alibaba Cloud storage; a search for "notes.txt" run in a
    folder holding notes.txt must not upload the file. Padding with a space does not
    change what the embedding model reads.
    """
    while (
        text.startswith(("file://", "oss://"))
        or os.path.isfile(os.path.expanduser(text))
        or os.path.isfile(text)
    ):
        text = " " + text + " "
    return text


class DashScopeClient(RemoteClient):
    """The one place that calls the SDK and turns its answers into values or provider errors."""

    service = SERVICE
    key_env = KEY_ENV
    url_setting = "dashscope_base_url"
    transport_errors = REQUESTS_ERRORS
    auth_codes = AUTH_CODES
    fatal_codes = FATAL_CODES

    def __init__(self, settings: Settings) -> None:
        key = settings.dashscope_api_key.get_secret_value() if settings.dashscope_api_key else ""
        key = key.strip()
        if not key:
            raise FatalProviderError(
                f"the dashscope provider needs an API key: set {KEY_ENV} "
                "(or dashscope_api_key in mmsearch.toml); get one at "
                "https://dashscope.console.aliyun.com/apiKey"
            )
        super().__init__(settings, name="dashscope", base_url=settings.dashscope_base_url, key=key)

    def request(self, api: Any, *, config_hint: str, **kwargs: Any) -> Any:
        """One SDK call (``api.call(**kwargs)``) with the key, endpoint and timeout.

        Returns the response; raises ``TransientError`` (retried by the caller),
        ``FatalProviderError`` or ``ProviderError``.
        """
        response = self.send(
            lambda: api.call(
                api_key=self._key,
                base_address=self.base_url,
                request_timeout=self.timeout,
                **kwargs,
            ),
            url=self.base_url,
        )
        status = int(_field(response, "status_code") or 0)
        if status != 200:
            raise self._answer_error(response, status, config_hint)
        return response

    def _answer_error(self, response: Any, status: int, config_hint: str) -> ProviderError:
        """The error for a failed answer, from the fields the SDK gives it."""
        code = _field(response, "code") or None
        message = _field(response, "message") or None
        fatal = FATAL_CODES
        if message and "model not exist" in str(message).lower():
            fatal = fatal | {str(code)}  # an unknown model, under a generic code
        return self.status_error(
            status,
            code=str(code) if code else None,
            message=str(message) if message else None,
            headers=_field(response, "headers"),  # SDK >= 1.24
            config_hint=config_hint,
            fatal_codes=fatal,
        )


class DashScopeEmbedder:
    """Images and texts into DashScope's multimodal embedding space (L2-normalised)."""

    feature_dim = 0

    def __init__(self, client: DashScopeClient, model: str) -> None:
        self.client = client
        self.model = model
        self.name = f"dashscope-{model}"
        self.dim = EMBEDDING_DIMS.get(model, DEFAULT_DIM)
        self._hint = f"dashscope_embedding_model ({model!r})"

    def _embed(self, content: dict[str, str]) -> np.ndarray:
        response = self.client.request(
            dashscope.MultiModalEmbedding, config_hint=self._hint, model=self.model, input=[content]
        )
        try:
            vector = np.asarray(response.output["embeddings"][0]["embedding"], np.float32)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ProviderError(f"{SERVICE}: unexpected embedding answer ({exc!r})") from None
        if vector.shape != (self.dim,):
            raise FatalProviderError(
                f"{SERVICE}: {self.model} returned {vector.size}-d vectors, expected {self.dim}; "
                "check dashscope_embedding_model"
            )
        return vector

    def embed_images(self, images: Images) -> ImageVectors:
        uris = batch_data_uris(images)
        keys = [("image", self.model, uri_key(u)) for u in uris]
        vectors = self.client.caller.map_cached(lambda u: self._embed({"image": u}), uris, keys)
        return ImageVectors(shared=self._stack(vectors), features=None)

    def embed_texts(self, texts: Sequence[str], *, query: bool) -> np.ndarray:
        # multimodal-embedding-v1 embeds queries and documents alike; ``query`` is unused.
        keys = [("text", self.model, t) for t in texts]
        vectors = self.client.caller.map_cached(
            lambda t: self._embed({"text": _sdk_safe_text(t)}), list(texts), keys
        )
        return self._stack(vectors)

    def _stack(self, vectors: list[np.ndarray]) -> np.ndarray:
        if not vectors:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(np.stack(vectors))


def answer_text(output: Any) -> str:
    """The text of a ``MultiModalConversation`` answer (``message`` or ``text`` format)."""
    try:
        choices = output.get("choices") if output else None
        if choices:
            content = choices[0]["message"]["content"]
            if isinstance(content, str):
                return content
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(output.get("text") or "") if output else ""
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ProviderError(f"{SERVICE}: unexpected answer ({exc!r})") from None


class DashScopeDescriber:
    """A Qwen-VL description and keywords per image, in the configured language."""

    def __init__(self, client: DashScopeClient, model: str, language: Language) -> None:
        self.client = client
        self.model = model
        self.language = language
        self.prompt = describe_prompt(language)
        self.name = f"dashscope-{model}-{language.value}"
        self._hint = f"dashscope_vl_model ({model!r})"

    def _describe(self, uri: str) -> Description:
        response = self.client.request(
            dashscope.MultiModalConversation,
            config_hint=self._hint,
            model=self.model,
            messages=[{"role": "user", "content": [{"image": uri}, {"text": self.prompt}]}],
            max_tokens=MAX_TOKENS,
        )
        return parse_description(answer_text(response.output))

    def describe(self, images: Images) -> list[Description]:
        uris = batch_data_uris(images)
        keys = [("describe", self.model, self.prompt, uri_key(u)) for u in uris]
        return self.client.caller.map_cached(self._describe, uris, keys)


@register_embedder("dashscope")
def _dashscope_embedder(settings: Settings) -> DashScopeEmbedder:
    return DashScopeEmbedder(DashScopeClient(settings), settings.dashscope_embedding_model)


@register_describer("dashscope")
def _dashscope_describer(settings: Settings) -> DashScopeDescriber:
    return DashScopeDescriber(
        DashScopeClient(settings), settings.dashscope_vl_model, settings.language
    )
