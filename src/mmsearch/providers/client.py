"""What every remote service's client shares: its key, endpoint, caller and error mapping.

A subclass per service (``DashScopeClient``, ``OpenAIClient``) names its service, key
variable, error codes and HTTP library's exceptions, and owns its request function; it
sends through ``send`` and turns a failed answer into an error with ``status_error``, so
both services fail, retry and stop in the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from mmsearch.providers.base import ProviderError
from mmsearch.providers.caller import RemoteCaller
from mmsearch.providers.errors import TransportErrors, http_error, redact, transport_error
from mmsearch.providers.limiter import secret_fingerprint, shared_limiter

if TYPE_CHECKING:
    from mmsearch.config import Settings

T = TypeVar("T")


class RemoteClient:
    """One service's endpoint and key, under its shared rate limit, with one error mapping.

    ``name`` and ``base_url`` (with the key's fingerprint) pick the rate limiter shared by
    every client of that endpoint and key in the process.
    """

    #: The service as messages name it.
    service: ClassVar[str]
    #: The environment variable a rejected or missing key is looked for in.
    key_env: ClassVar[str]
    #: The setting to fix when the library calls the URL invalid.
    url_setting: ClassVar[str]
    #: The HTTP library's exceptions, sorted for ``transport_error``.
    transport_errors: ClassVar[TransportErrors]
    #: Error codes that mean the key cannot be used / that every request would fail.
    auth_codes: ClassVar[frozenset[str]] = frozenset()
    fatal_codes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Settings, *, name: str, base_url: str, key: str | None) -> None:
        self._key = key
        self.base_url = base_url.rstrip("/")
        self.timeout = settings.request_timeout
        limiter = shared_limiter(
            (name, self.base_url, secret_fingerprint(key)), settings.requests_per_minute
        )
        self.caller = RemoteCaller(
            service=self.service,
            limiter=limiter,
            max_retries=settings.max_retries,
            max_concurrency=settings.max_concurrency,
        )

    def send(self, request: Callable[[], T], *, url: str) -> T:
        """``request()``, with the HTTP library's exceptions mapped to provider errors.

        Raises ``TransientError`` (retried by the caller), ``FatalProviderError`` or
        ``ProviderError``; an exception the mapping does not know propagates as itself.
        """
        try:
            return request()
        except Exception as exc:
            error = transport_error(
                exc,
                self.transport_errors,
                service=self.service,
                url=url,
                url_setting=self.url_setting,
                base_url=self.base_url,
                timeout=self.timeout,
                secret=self._key,
            )
            if error is None:
                raise
            raise error from None

    def redact(self, text: str) -> str:
        """``text`` without the key, for messages built from what a server sent."""
        return redact(text, self._key)

    def status_error(
        self,
        status: int,
        *,
        code: str | None,
        message: str | None,
        headers: Mapping[str, Any] | None,
        config_hint: str,
        fatal_codes: frozenset[str] | None = None,
    ) -> ProviderError:
        """The error for an answer with HTTP status ``status`` (see ``http_error``)."""
        return http_error(
            service=self.service,
            status=status,
            code=code,
            message=message,
            headers=headers,
            key_env=self.key_env,
            secret=self._key,
            auth_codes=self.auth_codes,
            fatal_codes=self.fatal_codes if fatal_codes is None else fatal_codes,
            config_hint=config_hint,
        )
