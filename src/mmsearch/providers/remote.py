"""What the remote providers (DashScope, OpenAI-compatible) share.

- ``RateLimiter``: a thread-safe token bucket, so that a run stays under the endpoint's
  requests-per-minute quota instead of sleeping a fixed second between calls (the reference
  design), which is both too slow for a generous quota and too fast for a tight one.
- ``RemoteCaller``: every request goes through it: it waits for the rate limiter, retries
  429, 5xx, timeouts and dropped connections with exponential backoff and jitter
  (``tenacity``), honours ``Retry-After``, never retries other 4xx, and runs the calls for
  a batch concurrently, at most ``settings.max_concurrency`` at a time.
- ``http_error``: one mapping from HTTP status to ``ProviderError`` (this image failed; the
  run goes on) or ``FatalProviderError`` (every call would fail: a rejected key, a wrong
  model or URL; the run stops). A message names the key's variable, never the key.
- The describers' prompt (Chinese or English, as the reference asks: a description within 50
  characters, then five keywords) and ``parse_description``, which reads the many ways a
  model actually formats its answer.
- ``image_data_uri``: images travel as base64 data URIs; one that would exceed DashScope's
  3 MB limit is re-encoded smaller before it is sent.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import io
import logging
import math
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from mmsearch.config import Language
from mmsearch.providers.base import Description, FatalProviderError, ProviderError

if TYPE_CHECKING:
    from mmsearch.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: DashScope refuses an image whose base64 form is over 3 MB; the OpenAI-compatible servers
#: have limits of their own, mostly larger. One limit for both keeps one code path.
MAX_IMAGE_BYTES = 3 * 1024 * 1024
#: First JPEG quality tried: high enough that the model sees what the file shows.
JPEG_QUALITY = 90
#: Backoff between retries: ``BACKOFF_INITIAL * 2**n`` seconds plus up to
#: ``BACKOFF_INITIAL`` of random jitter, capped at ``BACKOFF_MAX``. Module constants so
#: that tests can make them small; read at call time.
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
#: A server's ``Retry-After`` is honoured up to this many seconds.
RETRY_AFTER_MAX = 60.0
#: Tokens the bucket holds when full. One means requests are evenly spaced at the configured
#: rate; DashScope enforces its per-minute quotas over short windows, so bursts get 429s.
DEFAULT_BURST = 1.0
#: Results kept per provider instance, so that ingest's one-by-one retry of a failed batch
#: re-sends only the images that failed, not the ones that succeeded a moment ago.
CACHE_SIZE = 1024


# -- errors -----------------------------------------------------------------------------------


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
    """``text`` with every occurrence of ``secret`` replaced: servers echo keys back."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


def parse_retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``."""
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    if "retry-after-ms" in lower:
        try:
            return max(0.0, float(lower["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
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


# -- rate limiting ----------------------------------------------------------------------------


class RateLimiter:
    """A token bucket shared by threads: ``per_minute`` tokens a minute, ``burst`` at most.

    ``reserve`` takes a token at once, going into debt if the bucket is empty, and says how
    long to wait before using it; threads are thereby served in arrival order with no
    polling, and the requests that leave never exceed ``burst + rate * window`` in any window.
    """

    def __init__(
        self,
        per_minute: float,
        burst: float = DEFAULT_BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, float(burst))
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; return the seconds to wait before the request may leave."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def pause(self, seconds: float) -> None:
        """Send nothing more for ``seconds`` (a server's ``Retry-After``): the quota is the
        endpoint's, so one request told to wait means all of them should."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens = min(self._tokens, 1.0 - seconds * self.rate)

    def acquire(self, abort: threading.Event | None = None) -> None:
        """Block until a request may leave; raise ``CancelledError`` if ``abort`` is set."""
        delay = self.reserve()
        if delay <= 0:
            return
        if abort is None:
            time.sleep(delay)
        elif abort.wait(delay):
            raise CancelledError("cancelled")


_LIMITERS: dict[Hashable, RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(key: Hashable, per_minute: float, burst: float = DEFAULT_BURST) -> RateLimiter:
    """One limiter per endpoint and key in this process.

    The embedder and the describer of one provider (and every ``MMSearch`` in the process)
    draw from the same quota, so they share one bucket.
    """
    full_key = (key, float(per_minute), float(burst))
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(full_key)
        if limiter is None:
            limiter = _LIMITERS[full_key] = RateLimiter(per_minute, burst)
        return limiter


def secret_fingerprint(secret: str | None) -> str:
    """A short hash that tells keys apart without holding the key in a dict key or a log."""
    return hashlib.sha256((secret or "").encode("utf-8")).hexdigest()[:12]


# -- calling --------------------------------------------------------------------------------


class LRUCache:
    """A small thread-safe LRU map."""

    def __init__(self, maxsize: int = CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)


class RemoteCaller:
    """Rate limit, retries and bounded concurrency for one provider's requests.

    ``service`` names the provider in messages.
    """

    def __init__(self, settings: Settings, *, service: str, limiter: RateLimiter) -> None:
        self.service = service
        self.limiter = limiter
        self.max_retries = settings.max_retries
        self.max_concurrency = settings.max_concurrency
        self.cache = LRUCache()

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, or the server's ``Retry-After`` if that is longer."""
        exponent = min(state.attempt_number - 1, 30)
        backoff = BACKOFF_INITIAL * 2**exponent + random.uniform(0, BACKOFF_INITIAL)
        backoff = min(backoff, BACKOFF_MAX)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return max(backoff, min(retry_after, RETRY_AFTER_MAX))
        return backoff

    def call(self, fn: Callable[[], T], *, abort: threading.Event | None = None) -> T:
        """``fn()`` under the rate limit, retried on ``TransientError``.

        After the last retry a connection that could not be opened becomes a
        ``FatalProviderError`` (the endpoint is down or the URL is wrong: every other image
        would wait through the same retries), anything else a ``ProviderError``.
        """

        def attempt() -> T:
            if abort is not None and abort.is_set():
                raise CancelledError("cancelled")
            self.limiter.acquire(abort)
            return fn()

        def sleep(seconds: float) -> None:
            if abort is None:
                time.sleep(seconds)
            elif abort.wait(seconds):
                raise CancelledError("cancelled")

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = getattr(exc, "retry_after", None)
            if retry_after:
                self.limiter.pause(min(retry_after, RETRY_AFTER_MAX))
            log.info(
                "%s; retry %d of %d in %.2f s",
                exc,
                state.attempt_number,
                self.max_retries,
                state.next_action.sleep if state.next_action else 0.0,
            )

        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except TransientError as exc:
            attempts = self.max_retries + 1
            if exc.unreachable:
                raise FatalProviderError(
                    f"{self.service}: cannot connect after {attempts} attempts ({exc})"
                ) from None
            raise ProviderError(f"{exc} (gave up after {attempts} attempts)") from None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn`` over ``items`` (one request each), concurrently, results in order.

        All calls run to the end even if one fails, so that their results can be cached and
        ingest's one-by-one retry costs only the failed images; then the first failure is
        raised. A fatal error cancels the calls not yet sent and is raised at once.
        """
        if not items:
            return []
        abort = threading.Event()
        if len(items) == 1 or self.max_concurrency == 1:
            out = []
            failures: list[ProviderError] = []
            for item in items:
                try:
                    out.append(self.call(lambda item=item: fn(item), abort=abort))
                except FatalProviderError:
                    raise
                except ProviderError as exc:
                    failures.append(exc)
            if failures:
                raise self._batch_error(failures, len(items))
            return out
        workers = min(len(items), self.max_concurrency)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=self.service)
        try:
            futures = [
                pool.submit(self.call, lambda item=item: fn(item), abort=abort) for item in items
            ]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    exc = fut.exception()
                    if isinstance(exc, FatalProviderError):
                        abort.set()
                        raise exc
            errors = [e for f in futures if (e := f.exception()) is not None]
            for error in errors:
                if not isinstance(error, ProviderError):
                    raise error  # a bug, not a provider failure: let it surface as itself
            if errors:
                raise self._batch_error(errors, len(items))
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def map_cached(
        self, fn: Callable[[T], R], items: Sequence[T], keys: Sequence[Hashable]
    ) -> list[R]:
        """``map`` that answers repeated items (same key) from the cache.

        Each result is cached as soon as its request succeeds, so when another request of
        the batch fails and ingest retries the images one by one, only the failed ones are
        sent again.
        """
        results: dict[Hashable, R] = {}
        todo: dict[Hashable, T] = {}
        for item, key in zip(items, keys, strict=True):
            hit = self.cache.get(key)
            if hit is not None:
                results[key] = hit
            elif key not in todo:
                todo[key] = item

        def run(pair: tuple[Hashable, T]) -> R:
            key, item = pair
            value = fn(item)
            self.cache.put(key, value)
            return value

        fresh = self.map(run, list(todo.items()))
        results.update(zip(todo, fresh, strict=True))
        return [results[key] for key in keys]

    @staticmethod
    def _batch_error(failures: Sequence[BaseException], total: int) -> ProviderError:
        if total == 1:
            first = failures[0]
            return first if isinstance(first, ProviderError) else ProviderError(str(first))
        return ProviderError(f"{len(failures)} of {total} requests failed; first: {failures[0]}")


# -- images -----------------------------------------------------------------------------------


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def image_data_uri(image: Image.Image, max_bytes: int = MAX_IMAGE_BYTES) -> str:
    """The image as a ``data:image/jpeg;base64,...`` URI of at most ``max_bytes`` characters.

    JPEG at quality 90 first; if that is too large, the image is downscaled (by the square
    root of the size ratio, with a margin) and re-encoded at a lower quality until it fits.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    quality = JPEG_QUALITY
    uri = _data_uri(_encode_jpeg(image, quality))
    while len(uri) > max_bytes:
        w, h = image.size
        if min(w, h) <= 16:
            raise ProviderError(f"cannot encode the image under {max_bytes} bytes")
        scale = math.sqrt(max_bytes / len(uri)) * 0.9
        size = (max(16, int(w * scale)), max(16, int(h * scale)))
        log.debug("image data URI is %d bytes; downscaling %dx%d -> %dx%d", len(uri), w, h, *size)
        image = image.resize(size, Image.Resampling.LANCZOS)
        quality = max(60, quality - 5)
        uri = _data_uri(_encode_jpeg(image, quality))
    return uri


def uri_key(uri: str) -> str:
    """A cache key for an encoded image: its digest, not the megabytes of the URI."""
    return hashlib.blake2b(uri.encode("ascii"), digest_size=16).hexdigest()


# -- the prompt and its answer ------------------------------------------------------------------

#: The reference prompt: a description within 50 characters, then five keywords.
PROMPT_ZH = (
    "请仔细观察这张图片。先用一句话描述图片内容，不超过50个字；再给出5个关键词。\n"
    "请严格按以下格式回答，不要输出其他内容：\n"
    "描述：<图片描述>\n"
    "关键词：<关键词1>、<关键词2>、<关键词3>、<关键词4>、<关键词5>"
)
#: The English equivalent (about as long as 50 Chinese characters).
PROMPT_EN = (
    "Look carefully at this image. First describe it in one sentence of at most 30 words; "
    "then give 5 keywords.\n"
    "Answer in exactly this format and write nothing else:\n"
    "Description: <description>\n"
    "Keywords: <keyword 1>, <keyword 2>, <keyword 3>, <keyword 4>, <keyword 5>"
)
MAX_KEYWORDS = 5
#: A "keyword" longer than this is a sentence the model added, not a keyword.
MAX_KEYWORD_CHARS = 40


def describe_prompt(language: Language | str) -> str:
    return PROMPT_EN if Language(language) is Language.en else PROMPT_ZH


_NUMBERING = (
    r"(?:\d{1,2}\s*[.、)）:：](?!\d)|[（(]\d{1,2}[)）]"
    r"|[一二三四五六七八九十]\s*[、.)）]|[-*•·>+])"
)
_LEADING_MARK = re.compile(rf"^\s*(?:{_NUMBERING}\s*)+")
_KEYWORD_LABEL = re.compile(
    r"(?:^|(?<=[\s。.!?！？;；，,]))"
    rf"(?:{_NUMBERING}\s*)?"
    r"(?:关键词|关键字|关键信息|标签|key\s*words?|tags?)"
    r"\s*(?:[(（][^)）\n]{0,20}[)）])?\s*(?:[:：]|$)",
    re.IGNORECASE | re.MULTILINE,
)
_DESCRIPTION_WORDS = r"(?:图片描述|图像描述|内容描述|描述|简介|说明|description|caption|summary)"
_DESCRIPTION_LABEL = re.compile(
    rf"^\s*{_DESCRIPTION_WORDS}\s*(?:[(（][^)）\n]{{0,20}}[)）])?\s*(?:[:：]\s*|$)",
    re.IGNORECASE,
)
#: A description label at the start of a line, after the numbering: where a description
#: that follows the keywords begins.
_DESCRIPTION_LINE = re.compile(
    rf"^\s*(?:{_NUMBERING}\s*)?{_DESCRIPTION_WORDS}\s*(?:[(（][^)）\n]{{0,20}}[)）])?\s*(?:[:：]|$)",
    re.IGNORECASE | re.MULTILINE,
)
_TRAILING_MARK = re.compile(rf"\s*(?:{_NUMBERING})\s*$")
_SEPARATORS = re.compile(r"[\n,，、;；|]+")
_CJK_GAP = re.compile(r"(?<=[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef])\s+(?=[\u4e00-\u9fff])")
_QUOTES = "\"'“”‘’「」『』《》【】[]()（）<>`#"


def _clean_markdown(answer: str) -> str:
    text = answer.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"\*\*|__|`", "", text)
    return re.sub(r"(?m)^\s*#{1,6}\s*", "", text)


def _clean_description(part: str) -> str:
    lines = []
    for raw in part.split("\n"):
        line = _LEADING_MARK.sub("", raw).strip()
        line = _DESCRIPTION_LABEL.sub("", line).strip()
        if line:
            lines.append(line)
    text = " ".join(lines)
    text = _TRAILING_MARK.sub("", text).strip()
    text = _CJK_GAP.sub("", text)
    return text.strip(_QUOTES + " ").strip()


def _split_keywords(part: str) -> list[str]:
    blocks = [b for b in re.split(r"\n\s*\n", part.strip()) if b.strip()]
    if not blocks:
        return []
    pieces = [p for p in _SEPARATORS.split(blocks[0]) if p.strip()]
    if len(pieces) == 1 and len(pieces[0].split()) > 1 and len(pieces[0].split()) <= 8:
        pieces = pieces[0].split()  # "关键词：狮子 草原 动物": spaces as separators
    keywords: list[str] = []
    seen: set[str] = set()
    for piece in pieces:
        word = _LEADING_MARK.sub("", piece).strip()
        word = word.strip(_QUOTES + " \t。.!！?？:：").strip()
        if not word or len(word) > MAX_KEYWORD_CHARS or _KEYWORD_LABEL.fullmatch(word):
            continue
        if word.casefold() not in seen:
            seen.add(word.casefold())
            keywords.append(word)
        if len(keywords) == MAX_KEYWORDS:
            break
    return keywords


def _looks_like_keyword_line(line: str) -> bool:
    return len(line) <= 120 and len(_SEPARATORS.findall(line)) >= 2


def parse_description(answer: str) -> Description:
    """The model's answer as a description and at most five keywords.

    Models format the same instruction many ways: "描述：…\\n关键词：a、b、c", "Keywords:
    a, b, c", numbered or bulleted lists, markdown bold, everything on one line. The keyword
    part starts at a keyword label; without one, a last line of separated words or a trailing
    list is taken as the keywords. Raises ``ProviderError`` for an empty answer.
    """
    text = _clean_markdown(answer or "").strip()
    if not text:
        raise ProviderError("the model returned an empty answer")
    match = _KEYWORD_LABEL.search(text)
    if match:
        description_part, keyword_part = text[: match.start()], text[match.end() :]
        later = _DESCRIPTION_LINE.search(keyword_part)
        if later:  # "关键词：…\n描述：…": the description came second
            description_part += "\n" + keyword_part[later.start() :]
            keyword_part = keyword_part[: later.start()]
    else:
        lines = [ln for ln in text.split("\n") if ln.strip()]
        list_tail = 0
        for line in reversed(lines):
            if _LEADING_MARK.match(line) and len(line.strip()) <= MAX_KEYWORD_CHARS + 6:
                list_tail += 1
            else:
                break
        if len(lines) >= 2 and _looks_like_keyword_line(lines[-1]):
            description_part, keyword_part = "\n".join(lines[:-1]), lines[-1]
        elif 2 <= list_tail < len(lines):
            description_part = "\n".join(lines[:-list_tail])
            keyword_part = "\n".join(lines[-list_tail:])
        else:
            description_part, keyword_part = text, ""
    keywords = _split_keywords(keyword_part)
    description = _clean_description(description_part)
    if not description:
        description = "、".join(keywords) if keywords else _clean_description(text)
    return Description(text=description, keywords=keywords)
