"""What indexing will cost before it starts: requests per model, time at the rate limit, price.

A cloud run of 10,000 photos takes hours and costs money, so ``mmsearch index --dry-run``
says how much of each before anything is sent. ``estimate_index`` counts the requests the
providers will make, packed as they pack them (per ingest batch of ``batch_size`` files,
within each model's items per request, ``providers.dashscope_models``), the time those
requests take at ``requests_per_minute`` (one token bucket per endpoint, and ingest's
stages run one after another, so the time is the sum over stages), and the price from the
per-model price table (documented list prices unless ``dashscope_prices`` overrides them).

Token counts are assumptions, stated in the result: a photo counts about 1,280 tokens
(Qwen-VL's default cap on an image; small images count fewer), a description about 60 and
the prompt about 100. Local providers (offline, clip) make no requests and are not timed.
It reads no file and imports no SDK, so it runs anywhere and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mmsearch.config import Settings
from mmsearch.providers.dashscope_models import (
    Fusion,
    embedding_model,
    embedding_model_name,
    items_per_request,
    price_of,
)

#: Tokens an image counts (Qwen-VL caps an image at 1,280 28x28-pixel tokens by default).
IMAGE_TOKENS = 1280
#: Tokens of a description (under 50 Chinese characters plus five keywords) and its answer.
DESCRIPTION_TOKENS = 60
#: Tokens of the describe prompt.
PROMPT_TOKENS = 100
#: Providers whose requests this module counts; the others run locally.
REMOTE = ("dashscope", "openai")


@dataclass(frozen=True)
class Load:
    """The requests one model gets for one kind of work."""

    model: str
    work: str  # "images", "descriptions" (their text embeddings), "describe"
    provider: str
    items: int
    per_request: int  # items in a full request
    requests: int
    image_tokens: int = 0
    text_tokens: int = 0
    output_tokens: int = 0
    price: float | None = None
    currency: str | None = None
    price_source: str = "unknown"


@dataclass(frozen=True)
class Estimate:
    """What indexing ``files`` files will take; ``as_dict()`` for JSON, ``text()`` to print."""

    files: int
    loads: list[Load]
    requests_per_minute: float
    seconds: float
    assumptions: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(load.requests for load in self.loads)

    def requests_by_model(self) -> dict[str, int]:
        """Requests per model (a model doing two kinds of work counted once)."""
        out: dict[str, int] = {}
        for load in self.loads:
            out[load.model] = out.get(load.model, 0) + load.requests
        return out

    def price(self) -> dict[str, float]:
        """Total price per currency, of the loads that have a price."""
        out: dict[str, float] = {}
        for load in self.loads:
            if load.price is not None and load.currency:
                out[load.currency] = out.get(load.currency, 0.0) + load.price
        return {cur: round(total, 4) for cur, total in out.items()}

    def unpriced(self) -> list[str]:
        """Models with requests but no known price."""
        return sorted({ld.model for ld in self.loads if ld.requests and ld.price is None})

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "requests": self.requests,
            "requests_by_model": self.requests_by_model(),
            "requests_per_minute": self.requests_per_minute,
            "seconds": round(self.seconds, 1),
            "price": self.price(),
            "unpriced_models": self.unpriced(),
            "loads": [asdict(load) for load in self.loads],
            "assumptions": self.assumptions,
        }

    def text(self) -> str:
        """One paragraph: files, requests per model, time at the rate limit, price."""
        if not self.loads:
            return (
                f"{self.files:,} files to index with local models only: no requests, no "
                "price; time depends on this machine (the offline provider does about 16-18 "
                "images/s on 2 cores)."
            )
        parts = "; ".join(_phrase(load) for load in self.loads)
        money = ", ".join(f"{total:,.2f} {cur}" for cur, total in self.price().items())
        sources = sorted({ld.price_source for ld in self.loads if ld.price is not None})
        price = f"about {money} ({', '.join(sources)})" if money else "price unknown"
        if self.unpriced():
            price += f"; no price for {', '.join(self.unpriced())} (set dashscope_prices)"
        return (
            f"{self.files:,} files to index: {self.requests:,} requests ({parts}), "
            f"about {format_duration(self.seconds)} at {self.requests_per_minute:g} "
            f"requests/min, {price}. Assumes ~{self.assumptions.get('image_tokens')} tokens "
            "an image; list prices go stale: keep dashscope_prices current."
        )

    __str__ = text


def _phrase(load: Load) -> str:
    what = {"images": "image embeddings", "descriptions": "description embeddings"}.get(
        load.work, "descriptions"
    )
    per = "one a request" if load.per_request == 1 else f"up to {load.per_request} a request"
    return f"{load.model}: {load.requests:,} for {load.items:,} {what}, {per}"


def format_duration(seconds: float) -> str:
    """``3 h 05 min``, ``9 min 54 s``, ``12 s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _batched(n: int, batch_size: int, per_batch: Callable[[int], int]) -> int:
    """Requests for ``n`` items sent ``batch_size`` at a time (ingest packs per batch)."""
    full, rest = divmod(n, batch_size)
    return full * per_batch(batch_size) + (per_batch(rest) if rest else 0)


def _embedding_loads(
    files: int, settings: Settings, *, titles: bool, image_bytes: int
) -> list[Load]:
    """The DashScope embedder's requests: the images, then the descriptions' texts."""
    spec = embedding_model(embedding_model_name(settings))
    cap = settings.dashscope_max_batch
    fused = settings.dashscope_fusion and titles
    alone = fused and spec.fusion in (Fusion.parameter, Fusion.always)
    per_image = (
        1 if alone else items_per_request(spec, images=True, cap=cap, image_bytes=image_bytes)
    )
    per_text = items_per_request(spec, images=False, cap=cap)
    bs = settings.batch_size
    images = Load(
        spec.name,
        "images",
        "dashscope",
        files,
        per_image,
        _batched(files, bs, lambda n: math.ceil(n / per_image)),
        image_tokens=IMAGE_TOKENS * files,
        text_tokens=DESCRIPTION_TOKENS * files if fused else 0,
    )
    texts = Load(
        spec.name,
        "descriptions",
        "dashscope",
        files,
        per_text,
        _batched(files, bs, lambda n: math.ceil(n / per_text)),
        text_tokens=DESCRIPTION_TOKENS * files,
    )
    return [_priced(images, settings), _priced(texts, settings)]


def _describe_load(settings: Settings, files: int) -> Load:
    """The describer's requests: one per image, whatever the model."""
    if settings.describer_name == "dashscope":
        model, provider = settings.dashscope_vl_model, "dashscope"
    else:
        model, provider = settings.openai_model, "openai"
    load = Load(
        model,
        "describe",
        provider,
        files,
        1,
        files,
        image_tokens=IMAGE_TOKENS * files,
        text_tokens=PROMPT_TOKENS * files,
        output_tokens=DESCRIPTION_TOKENS * files,
    )
    return _priced(load, settings) if provider == "dashscope" else load


def _priced(load: Load, settings: Settings) -> Load:
    """``load`` with its price from the table (None where the model has none)."""
    price, source = price_of(load.model, settings)
    if price is None:
        return load
    total = (
        load.image_tokens * price.image
        + load.text_tokens * price.text
        + load.output_tokens * price.output
    ) / 1e6
    return replace(load, price=round(total, 4), currency=price.currency, price_source=source)


def estimate_index(
    files: int,
    settings: Settings,
    *,
    titles: bool = False,
    image_bytes: int = 0,
    seconds_per_request: float = 0.0,
) -> Estimate:
    """What indexing ``files`` new or changed files with ``settings`` will take.

    ``titles``: the files come with titles (a catalog) and ``dashscope_fusion`` is on, so
    images are fused with them. ``image_bytes``: the average size of an image as sent (its
    base64 JPEG, at most 3 MB), when known, for the per-request byte budget (0: not
    limiting). ``seconds_per_request``: the service's latency, when known; a stage then
    takes at least its requests times that over ``max_concurrency``.
    """
    loads: list[Load] = []
    if files > 0 and settings.embedder_name == "dashscope":
        loads += _embedding_loads(files, settings, titles=titles, image_bytes=image_bytes)
    if files > 0 and settings.describer_name in REMOTE:
        loads.insert(1 if loads else 0, _describe_load(settings, files))
    rate = settings.requests_per_minute / 60.0
    seconds = sum(
        max(load.requests / rate, load.requests * seconds_per_request / settings.max_concurrency)
        for load in loads
    )
    assumptions = {
        "image_tokens": IMAGE_TOKENS,
        "description_tokens": DESCRIPTION_TOKENS,
        "prompt_tokens": PROMPT_TOKENS,
        "batch_size": settings.batch_size,
        "image_bytes": image_bytes or None,
        "seconds_per_request": seconds_per_request or None,
        "one description per image": True,
    }
    return Estimate(files, loads, settings.requests_per_minute, seconds, assumptions)
