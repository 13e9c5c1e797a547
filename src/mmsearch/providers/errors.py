"""How a remote provider's failures become ``ProviderError``s: one mapping for every service.

Two kinds of failure reach a client: an HTTP answer with an error status (``http_error``)
and an exception from the HTTP library before any answer came (``transport_error``). Both
end as one of three errors, which decide what ingest does next:

- ``TransientError``: worth retrying (429, 5xx, a timeout, a dropped connection);
  ``RemoteCaller`` retries it and, after the last try, turns it into one of the other two.
- ``ProviderError``: this image failed (another 4xx, an SDK's complaint); the run goes on.
- ``FatalProviderError``: every call would fail (a rejected key, a wrong model or URL); the
  run stops. A message names the key's variable, never the key.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mmsearch.providers.base import FatalProviderError, ProviderError


class TransientError(ProviderError):
    """A failure worth retrying: 429, 5xx, a timeout or a dropped connection.

    ``retry_after`` is the server's ``Retry-After`` in seconds, if it sent one;
    ``unreachable`` marks a connection that could not be opened at all (refused, no DNS),
    which after all retries means the endpoint is down or misconfigured, not that one image
    is bad.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, unreachable: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.unreachable = unreachable


class CancelledError(ProviderError):
    """Another call of the same batch hit a fatal error; this one was not sent."""


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced: servers echo keys back.

    Secrets under four characters are left alone: replacing them would garble messages
    while hiding nothing worth hiding.
    """
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


def _seconds(value: str, scale: float = 1.0) -> float | None:
    try:
        return max(0.0, float(value) * scale)
    except ValueError:
        return None


def parse_retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``.

    ``retry-after-ms`` (sent by OpenAI) wins because it is the more precise of the two.
    """
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    if "retry-after-ms" in lower:
        millis = _seconds(lower["retry-after-ms"], 1 / 1000.0)
        if millis is not None:
            return millis
    value = lower.get("retry-after")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def http_error(
    *,
    service: str,
    status: int,
    code: str | None,
    message: str | None,
    headers: Mapping[str, Any] | None,
    key_env: str,
    secret: str | None,
    auth_codes: frozenset[str] = frozenset(),
    fatal_codes: frozenset[str] = frozenset(),
    config_hint: str = "",
) -> ProviderError:
    """The error for a failed HTTP answer; callers raise it.

    401, 403 and ``auth_codes`` stop the run and say which variable holds the key (a key
    that is wrong now is wrong for every image); 404 and ``fatal_codes`` stop it too (a
    wrong model or URL); 429 and 5xx are retried; any other 4xx fails this image only and
    is not retried. The server's message is kept, with the key cut out of it.
    """
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    detail = redact(detail, secret)
    if status in (401, 403) or (code is not None and code in auth_codes):
        may_use = f" and that the key may use {config_hint}" if config_hint else ""
        return FatalProviderError(
            f"{service} rejected the API key ({detail}); check {key_env}"
            + (may_use if status == 403 else "")
        )
    if status == 404 or (code is not None and code in fatal_codes):
        hint = f"; check {config_hint}" if config_hint else ""
        return FatalProviderError(f"{service} cannot serve this request ({detail}){hint}")
    if status == 429 or status >= 500:
        return TransientError(f"{service}: {detail}", retry_after=parse_retry_after(headers))
    return ProviderError(f"{service}: {detail}")


@dataclass(frozen=True)
class TransportErrors:
    """What one HTTP library raises, sorted into the kinds ``transport_error`` tells apart.

    Each client names its own library's classes (requests under the DashScope SDK, httpx
    for OpenAI-compatible servers), so that both share one mapping and this module imports
    neither. Checked in this order: ``invalid_url`` (fatal: the configured URL is wrong),
    ``timeout`` and ``failure`` (transient; ``unreachable`` tells a connection that never
    opened from one that broke). ``sdk`` names a library whose every other exception is
    its complaint about this request (a ``ProviderError``); without it they propagate as
    themselves, since they can only be bugs.
    """

    invalid_url: tuple[type[Exception], ...]
    timeout: tuple[type[Exception], ...]
    failure: tuple[type[Exception], ...]
    unreachable: Callable[[Exception], bool]
    sdk: str | None = None


def invalid_url_error(service: str, url: str, exc: Exception, url_setting: str) -> ProviderError:
    """A URL the library refuses to request: every call would fail, so the run stops."""
    return FatalProviderError(f"{service}: {url!r} is not a valid URL ({exc}); check {url_setting}")


def transport_error(
    exc: Exception,
    kinds: TransportErrors,
    *,
    service: str,
    url: str,
    url_setting: str,
    base_url: str,
    timeout: float,
    secret: str | None,
) -> ProviderError | None:
    """The error for an exception raised while sending a request; ``None`` to let it be.

    ``url`` is what was requested (shown when the library calls it invalid, with the
    setting to fix); ``base_url`` names the endpoint in the messages of transient failures.
    """
    if isinstance(exc, kinds.invalid_url):
        return invalid_url_error(service, url, exc, url_setting)
    if isinstance(exc, kinds.timeout):
        return TransientError(
            f"{service}: no answer within {timeout:g} s", unreachable=kinds.unreachable(exc)
        )
    if isinstance(exc, kinds.failure):
        return TransientError(
            f"{service}: {type(exc).__name__} talking to {base_url}",
            unreachable=kinds.unreachable(exc),
        )
    if kinds.sdk is not None:
        return ProviderError(
            f"{service} {kinds.sdk}: {type(exc).__name__}: {redact(str(exc), secret)}"
        )
    return None
