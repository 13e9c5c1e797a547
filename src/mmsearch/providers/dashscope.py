"""The ``dashscope`` provider: Alibaba Cloud's models through the official ``dashscope`` SDK.

- Embedder: ``MultiModalEmbedding`` puts images and texts into one space
  (``multimodal-embedding-v1``, 1024-d, by default). Items go as many to a request as the
  model takes (``dashscope_models``: 1 for multimodal-embedding-v1, up to 8 images or 20
  texts for tongyi-embedding-vision-plus), at the width ``dashscope_dimension`` asks for,
  and, with ``dashscope_fusion``, an image fused with its title where the model offers it.
  It has no separate image-only space (``feature_dim`` 0), so image->image search uses the
  shared vectors.
- Describer: ``MultiModalConversation`` with a Qwen-VL model (``qwen-vl-plus`` by default)
  and the reference prompt (a description within 50 characters, then five keywords); one
  image per request, since one answer per image is what the parser reads.

Requests for a batch run concurrently (``max_concurrency``), under one token bucket per
endpoint and key (``requests_per_minute``), with retries on 429, 5xx and timeouts; see
``caller`` and, for what a failure becomes, ``errors``. A request of several items that
the service refuses (a 400: one bad image fails the whole request) is split in halves
until the items that fail alone are found, so one bad image costs its batch-mates a few
requests, not their vectors. The SDK's own retry is limited to resending once on a
dropped pooled connection.
The key comes from ``DASHSCOPE_API_KEY`` (or ``dashscope_api_key`` in ``mmsearch.toml``)
and is passed to each call, so the SDK's global key and key files are never consulted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
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
from mmsearch.providers.dashscope_models import (
    EMBEDDING_MODELS,
    EmbeddingModel,
    Fusion,
    RequestLimits,
    embedder_name,
    embedding_model,
    embedding_model_name,
    endpoint,
    plan_requests,
    region_problem,
    resolve_dimension,
)
from mmsearch.providers.encoding import batch_data_uris, uri_key
from mmsearch.providers.errors import CancelledError, TransientError, TransportErrors

log = logging.getLogger(__name__)

SERVICE = "DashScope"
KEY_ENV = "DASHSCOPE_API_KEY"
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
        super().__init__(settings, name="dashscope", base_url=endpoint(settings), key=key)

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


@dataclass(frozen=True)
class Piece:
    """What one vector needs sent: an image, a text, or an image fused with its title.

    ``images``, ``nbytes`` and ``alone`` are what ``plan_requests`` packs by; ``fuse``
    marks a piece sent with ``enable_fusion=true`` (alone, since that fuses a request's
    whole contents into one vector).
    """

    contents: tuple[dict[str, str], ...]
    key: Hashable = field(compare=False)
    images: int = 0
    nbytes: int = 0
    alone: bool = False
    fuse: bool = False


class DashScopeEmbedder:
    """Images and texts into DashScope's multimodal embedding space (L2-normalised).

    ``dimension`` picks the width for models that take one (None: the model's default);
    ``fusion`` embeds an image with its title as one vector where the model can (then
    ``embed_images`` takes ``titles``); ``max_batch`` caps the items per request below the
    model's documented limit. An impossible combination stops at once with a
    ``FatalProviderError`` that names the setting, before anything is sent.
    """

    feature_dim = 0

    def __init__(
        self,
        client: DashScopeClient,
        model: str,
        *,
        dimension: int | None = None,
        fusion: bool = False,
        max_batch: int | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.spec = embedding_model(model)
        self.dim = self._check(self.spec, client.base_url, dimension, fusion)
        #: True when ``embed_images`` fuses each image with the title passed for it.
        self.fuses_titles = fusion
        self.name = embedder_name(self.spec, self.dim, fused=fusion)
        self.limits = RequestLimits.of(self.spec, max_batch)
        self._params: dict[str, Any] = {}
        if dimension is not None and self.spec.takes_dimension:
            self._params["dimension"] = dimension
        self._hint = f"dashscope_embedding_model ({model!r})"

    @staticmethod
    def _check(spec: EmbeddingModel, url: str, dimension: int | None, fusion: bool) -> int:
        """The width the model will answer with, or why these settings cannot work."""
        problem = region_problem(spec, url)
        if problem:
            raise FatalProviderError(f"{SERVICE}: {problem}")
        if fusion and spec.fusion is None:
            fusing = [m.name for m in EMBEDDING_MODELS.values() if m.fusion is not None]
            raise FatalProviderError(
                f"{SERVICE}: {spec.name} cannot fuse an image with its title "
                f"(dashscope_fusion); models that can: {', '.join(fusing)}"
            )
        try:
            return resolve_dimension(spec, dimension)
        except ValueError as exc:
            raise FatalProviderError(f"{SERVICE}: {exc}") from None

    # -- the Embedder protocol

    def embed_images(
        self, images: Images, *, titles: Sequence[str | None] | None = None
    ) -> ImageVectors:
        """The images' vectors; with ``fuses_titles``, each fused with its title (one per
        image, None or "" for none). Titles are ignored when fusion is off."""
        uris = batch_data_uris(images)
        if titles is None or not self.fuses_titles:
            titles = [None] * len(uris)
        elif len(titles) != len(uris):
            raise ValueError(f"{len(titles)} titles for {len(uris)} images")
        pieces = [self._image_piece(u, t) for u, t in zip(uris, titles, strict=True)]
        return ImageVectors(shared=self._stack(self._embed(pieces)), features=None)

    def embed_texts(self, texts: Sequence[str], *, query: bool) -> np.ndarray:
        # The models embed queries and documents alike; ``query`` is unused.
        pieces = [
            Piece(({"text": _sdk_safe_text(t)},), ("text", self.model, self.dim, t)) for t in texts
        ]
        return self._stack(self._embed(pieces))

    # -- pieces and requests

    def _image_piece(self, uri: str, title: str | None) -> Piece:
        key = ("image", self.model, self.dim, uri_key(uri), title or None)
        image = {"image": uri}
        if not title:
            return Piece((image,), key, images=1, nbytes=len(uri))
        text = {"text": _sdk_safe_text(title)}
        if self.spec.fusion is Fusion.content:
            return Piece(({**image, **text},), key, images=1, nbytes=len(uri))
        fuse = self.spec.fusion is Fusion.parameter
        return Piece((image, text), key, images=1, nbytes=len(uri), alone=True, fuse=fuse)

    def _embed(self, pieces: Sequence[Piece]) -> list[np.ndarray]:
        """A vector per piece: from the cache, or sent packed into as few requests as the
        model's limits allow. Raises ``ProviderError`` after every piece that can succeed
        has (and is cached, so that ingest's one-by-one retry re-sends only the others)."""
        cache = self.client.caller.cache
        found: dict[Hashable, np.ndarray] = {}
        todo: dict[Hashable, Piece] = {}
        for piece in pieces:
            hit = cache.get(piece.key)
            if hit is not None:
                found[piece.key] = hit
            elif piece.key not in todo:
                todo[piece.key] = piece
        done, failures = self._send(list(todo.values()))
        if failures:
            if len(todo) == 1:
                raise failures[0]
            raise ProviderError(
                f"{len(failures)} of {len(todo)} items failed; first: {failures[0]}"
            )
        found.update(done)
        return [found[piece.key] for piece in pieces]

    def _send(self, pieces: list[Piece]) -> tuple[dict[Hashable, np.ndarray], list[ProviderError]]:
        """Send ``pieces`` in requests within the limits, concurrently under the rate limit.

        A request the service refuses is split in halves and the halves sent again, until
        what fails is a single piece: one bad image among eight costs six more requests
        (three halvings), and its seven batch-mates get their vectors.
        """
        done: dict[Hashable, np.ndarray] = {}
        failures: list[ProviderError] = []
        groups = [[pieces[i] for i in g] for g in plan_requests(pieces, self.limits)]
        while groups:
            outcomes = self.client.caller.map(self._attempt, groups)
            retry: list[list[Piece]] = []
            for group, outcome in zip(groups, outcomes, strict=True):
                if not isinstance(outcome, ProviderError):
                    done.update(zip((p.key for p in group), outcome, strict=True))
                elif len(group) > 1:
                    half = len(group) // 2
                    retry += [group[:half], group[half:]]
                else:
                    failures.append(outcome)
            if retry:
                log.info("%s: %d requests refused; sending their halves", SERVICE, len(retry) // 2)
            groups = retry
        return done, failures

    def _attempt(self, group: list[Piece]) -> list[np.ndarray] | ProviderError:
        """One request for ``group``: its vectors (cached at once), or the error that
        refused it. Transient errors propagate, for the caller to retry; fatal ones to stop
        the run."""
        try:
            vectors = self._request(group)
        except (TransientError, CancelledError, FatalProviderError):
            raise
        except ProviderError as exc:
            return exc
        for piece, vector in zip(group, vectors, strict=True):
            self.client.caller.cache.put(piece.key, vector)
        return vectors

    def _request(self, group: Sequence[Piece]) -> list[np.ndarray]:
        params = dict(self._params)
        if group[0].fuse:
            params["enable_fusion"] = True
        response = self.client.request(
            dashscope.MultiModalEmbedding,
            config_hint=self._hint,
            model=self.model,
            input=[dict(c) for piece in group for c in piece.contents],
            **params,
        )
        return self._vectors(response, len(group))

    def _vectors(self, response: Any, expected: int) -> list[np.ndarray]:
        """The answer's vectors in request order, checked for count and width."""
        try:
            rows = sorted(response.output["embeddings"], key=lambda e: int(e.get("index", 0)))
            vectors = [np.asarray(row["embedding"], np.float32) for row in rows]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ProviderError(f"{SERVICE}: unexpected embedding answer ({exc!r})") from None
        if len(vectors) != expected:
            raise ProviderError(
                f"{SERVICE}: {expected} items sent, {len(vectors)} vectors answered"
            )
        for vector in vectors:
            if vector.shape != (self.dim,):
                raise FatalProviderError(
                    f"{SERVICE}: {self.model} returned {vector.size}-d vectors, expected "
                    f"{self.dim}; check dashscope_embedding_model and dashscope_dimension"
                )
        return vectors

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
    return DashScopeEmbedder(
        DashScopeClient(settings),
        embedding_model_name(settings),
        dimension=settings.dashscope_dimension,
        fusion=settings.dashscope_fusion,
        max_batch=settings.dashscope_max_batch,
    )


@register_describer("dashscope")
def _dashscope_describer(settings: Settings) -> DashScopeDescriber:
    return DashScopeDescriber(
        DashScopeClient(settings), settings.dashscope_vl_model, settings.language
    )
