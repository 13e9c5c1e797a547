"""What mmsearch knows about DashScope's models: one table, read by the provider and the estimate.

Everything here comes from Alibaba Cloud Model Studio's documentation ("Multimodal
embedding API", "Qwen-VL", the price lists), as read in 2026; where the documentation
gives no number, the comment says which number we chose and why. Nothing here imports
the SDK, so the cost estimate (``mmsearch.estimate``) can read it without the
``dashscope`` extra installed.

- ``EMBEDDING_MODELS``: output widths and dimension choices, items, images and bytes per
  request, regions, and how the model fuses an image with a text. A model not in the table
  is sent one item per request, 1024-d unless ``dashscope_dimension`` says otherwise.
- ``VL_MODELS``: the describer models we document, with their regions.
- ``LIST_PRICES``: documented list prices per region; ``dashscope_prices`` in settings
  overrides them (prices change: they are the user's to keep current).
- ``REGIONS``: the two public endpoints, Beijing (``cn``) and Singapore (``intl``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

if TYPE_CHECKING:
    from mmsearch.config import Settings

MB = 1024 * 1024
#: DashScope's per-image limit for the embedding models we send to (3 MB as a base64 data
#: URI); ``providers.encoding`` re-encodes larger images under it.
IMAGE_BYTES = 3 * MB
#: Our cap on the images of one request. The documentation limits each image and the image
#: count, not the body; 8 images at the 3 MB limit is 24 MB, and a request over that takes
#: seconds to upload and resends all of it on a retry.
REQUEST_BYTES = 24 * MB
#: Width assumed for a model not in the table (the width of multimodal-embedding-v1);
#: checked against the first answer.
UNKNOWN_DIM = 1024


class Fusion(StrEnum):
    """How a model embeds an image and its title as one vector (``dashscope_fusion``)."""

    #: ``enable_fusion=true`` fuses all of a request's contents into one vector, so each
    #: fused image goes in a request of its own (qwen3-vl-embedding).
    parameter = "parameter"
    #: An image and a text in the same content object are one vector; several such objects
    #: fit in one request (the tongyi-embedding-vision 2026-03-06 snapshots).
    content = "content"
    #: Every request's contents become one vector, with at most one image and one text:
    #: one item per request, fused or not (qwen2.5-vl-embedding).
    always = "always"


class Region(StrEnum):
    cn = "cn"  # China (Beijing)
    intl = "intl"  # Singapore, for users outside mainland China


#: The endpoint of each region (``dashscope_region``); ``dashscope_base_url`` overrides it.
REGIONS: dict[Region, str] = {
    Region.cn: "https://dashscope.aliyuncs.com/api/v1",
    Region.intl: "https://dashscope-intl.aliyuncs.com/api/v1",
}
REGION_NAMES = {Region.cn: "China (Beijing)", Region.intl: "Singapore (international)"}


@dataclass(frozen=True)
class EmbeddingModel:
    """One embedding model's limits, as documented."""

    name: str
    dims: tuple[int, ...]  # the widths it can give; one entry: not configurable
    default_dim: int
    regions: frozenset[Region]
    max_items: int = 1  # contents per request
    max_images: int = 1  # images per request
    max_request_bytes: int = IMAGE_BYTES
    fusion: Fusion | None = None
    known: bool = True
    note: str = ""

    @property
    def takes_dimension(self) -> bool:
        """Whether ``dashscope_dimension`` can choose among several widths."""
        return len(self.dims) > 1 or not self.known


def _model(
    name: str, dims: Sequence[int], default: int, regions: str, **limits: Any
) -> EmbeddingModel:
    return EmbeddingModel(
        name=name,
        dims=tuple(sorted(dims, reverse=True)),
        default_dim=default,
        regions=frozenset(Region(r) for r in regions.split()),
        **limits,
    )


_TONGYI_PLUS_DIMS = (1152, 1024, 512, 256, 128, 64)
_TONGYI_FLASH_DIMS = (768, 512, 256, 128, 64)
#: tongyi-embedding-vision: "max 8 images; no element count limit, total tokens within the
#: batch token limit". We send at most 20 contents (the shared limit documented for
#: qwen3-vl-embedding): 20 descriptions of ~60 tokens stay far inside any such budget.
_TONGYI = dict(max_items=20, max_images=8, max_request_bytes=REQUEST_BYTES)

EMBEDDING_MODELS: dict[str, EmbeddingModel] = {
    m.name: m
    for m in (
        _model(
            "multimodal-embedding-v1",
            [1024],
            1024,
            "cn",
            note="the reference tutorial's model; one text or one image per request",
        ),
        _model(
            "tongyi-embedding-vision-plus",
            _TONGYI_PLUS_DIMS,
            1152,
            "cn intl",
            **_TONGYI,
            note="photos; the choice outside mainland China",
        ),
        _model(
            "tongyi-embedding-vision-flash",
            _TONGYI_FLASH_DIMS,
            768,
            "cn intl",
            **_TONGYI,
            note="cheaper, smaller vectors",
        ),
        _model(
            "tongyi-embedding-vision-plus-2026-03-06",
            _TONGYI_PLUS_DIMS,
            1152,
            "cn",
            **_TONGYI,
            fusion=Fusion.content,
            note="snapshot that also fuses an image with its title",
        ),
        _model(
            "tongyi-embedding-vision-flash-2026-03-06",
            _TONGYI_FLASH_DIMS,
            768,
            "cn",
            **_TONGYI,
            fusion=Fusion.content,
            note="snapshot that also fuses an image with its title",
        ),
        _model(
            "qwen3-vl-embedding",
            (2560, 2048, 1536, 1024, 768, 512, 256),
            2560,
            "cn",
            max_items=20,  # "at most 20 contents; images, texts and fused objects share it"
            max_images=20,
            max_request_bytes=REQUEST_BYTES,
            fusion=Fusion.parameter,
            note="catalogs (image + title fused with enable_fusion); widest vectors",
        ),
        _model(
            "qwen2.5-vl-embedding",
            (2048, 1024, 768, 512),
            1024,
            "cn",
            fusion=Fusion.always,  # "fused vectors only"; each modality once per request
            note="fused vectors only: one item per request",
        ),
    )
}


def embedding_model(name: str) -> EmbeddingModel:
    """The table's entry for ``name``; an unknown model gets one item per request."""
    spec = EMBEDDING_MODELS.get(name)
    if spec is not None:
        return spec
    return EmbeddingModel(
        name=name,
        dims=(UNKNOWN_DIM,),
        default_dim=UNKNOWN_DIM,
        regions=frozenset(Region),
        known=False,
        note="not in mmsearch's table: one item per request",
    )


@dataclass(frozen=True)
class VLModel:
    """A Qwen-VL model for descriptions (one image per request, whatever the model)."""

    name: str
    regions: frozenset[Region]
    note: str = ""


VL_MODELS: dict[str, VLModel] = {
    m.name: m
    for m in (
        VLModel("qwen-vl-plus", frozenset(Region), "the tutorial's model; the default"),
        VLModel("qwen-vl-max", frozenset(Region), "stronger, dearer"),
        VLModel("qwen3-vl-flash", frozenset(Region), "current, cheapest"),
        VLModel("qwen3-vl-plus", frozenset(Region), "current; the documented choice"),
    )
}


# -- endpoints and regions ---------------------------------------------------------------------


def region_of(url: str) -> Region | None:
    """The region whose public endpoint ``url`` is, or None (a proxy, a test server)."""
    host = urlparse(url).hostname or ""
    for region, endpoint in REGIONS.items():
        if host == urlparse(endpoint).hostname:
            return region
    return None


def endpoint(settings: Settings) -> str:
    """``dashscope_base_url`` if set, else the endpoint of ``dashscope_region``."""
    if settings.dashscope_base_url:
        return settings.dashscope_base_url
    return REGIONS[Region(settings.dashscope_region)]


#: The embedding model each region's users get when they name none.
REGION_DEFAULT_MODEL = {
    Region.cn: "multimodal-embedding-v1",
    Region.intl: "tongyi-embedding-vision-plus",
}


def embedding_model_name(settings: Settings) -> str:
    """The configured embedding model; with ``dashscope_region = "intl"`` and no model set,
    one served in Singapore (the tutorial's default is served in Beijing only)."""
    if "dashscope_embedding_model" in settings.model_fields_set:
        return settings.dashscope_embedding_model
    return REGION_DEFAULT_MODEL[Region(settings.dashscope_region)]


def region_problem(spec: EmbeddingModel, url: str) -> str | None:
    """Why ``spec`` cannot be used at ``url`` (a known model outside its regions), or None."""
    region = region_of(url)
    if region is None or not spec.known or region in spec.regions:
        return None
    served = ", ".join(REGION_NAMES[r] for r in sorted(spec.regions))
    there = [m.name for m in EMBEDDING_MODELS.values() if region in m.regions]
    return (
        f"{spec.name} is served only in {served}, not at {url}; "
        f"models served there: {', '.join(there)} (dashscope_embedding_model)"
    )


# -- dimensions --------------------------------------------------------------------------------


def resolve_dimension(spec: EmbeddingModel, dimension: int | None) -> int:
    """The width the model will answer with; ValueError naming the choices if it cannot."""
    if dimension is None:
        return spec.default_dim
    if not spec.known or dimension in spec.dims:
        return dimension
    if len(spec.dims) == 1:
        raise ValueError(
            f"{spec.name} gives {spec.dims[0]}-d vectors only; unset dashscope_dimension or "
            "pick a model that takes one: "
            + ", ".join(m.name for m in EMBEDDING_MODELS.values() if m.takes_dimension)
        )
    raise ValueError(
        f"{spec.name} takes dashscope_dimension = {', '.join(map(str, spec.dims))}, not {dimension}"
    )


def embedder_name(spec: EmbeddingModel, dim: int, *, fused: bool) -> str:
    """What the collection records: model, width when not the default, and fusion.

    The store refuses a collection whose recorded name or width differs, so two widths of
    one model, or fused and plain image vectors, never share a collection.
    """
    name = f"dashscope-{spec.name}"
    if dim != spec.default_dim:
        name += f"-{dim}d"
    return name + ("-fused" if fused else "")


# -- packing items into requests ---------------------------------------------------------------


class Packable(Protocol):
    """What ``plan_requests`` needs to know of an item."""

    @property
    def images(self) -> int: ...  # images it adds to a request (0 for a text)

    @property
    def nbytes(self) -> int: ...  # bytes of its images' data URIs

    @property
    def alone(self) -> bool: ...  # must go in a request of its own


@dataclass(frozen=True)
class RequestLimits:
    """What one request may hold."""

    items: int
    images: int
    nbytes: int

    @classmethod
    def of(cls, spec: EmbeddingModel, cap: int | None = None) -> RequestLimits:
        """The model's limits, at most ``cap`` items (``dashscope_max_batch``)."""
        items = max(1, min(spec.max_items, cap or spec.max_items))
        return cls(items=items, images=min(spec.max_images, items), nbytes=spec.max_request_bytes)


def plan_requests(items: Sequence[Packable], limits: RequestLimits) -> list[list[int]]:
    """Indices of ``items`` grouped into requests, in order, each group within ``limits``.

    Greedy: an item joins the current request unless it would break a limit. An item that
    is over the byte budget by itself still goes, alone (the server's per-image limit is
    checked when it is encoded, not here).
    """
    groups: list[list[int]] = []
    current: list[int] = []
    images = nbytes = 0
    for i, item in enumerate(items):
        full = current and (
            len(current) >= limits.items
            or images + item.images > limits.images
            or nbytes + item.nbytes > limits.nbytes
        )
        if item.alone or full:
            if current:
                groups.append(current)
            current, images, nbytes = [], 0, 0
        if item.alone:
            groups.append([i])
            continue
        current.append(i)
        images += item.images
        nbytes += item.nbytes
    if current:
        groups.append(current)
    return groups


def items_per_request(
    spec: EmbeddingModel, *, images: bool, cap: int | None, image_bytes: int = 0
) -> int:
    """Items of one kind in a full request, as ``plan_requests`` packs them; ``image_bytes``
    is an image's size as sent, when known (0: the byte budget is not counted)."""
    limits = RequestLimits.of(spec, cap)
    per = limits.items
    if images:
        per = min(per, limits.images)
        if image_bytes > 0:
            per = min(per, max(1, limits.nbytes // image_bytes))
    return per


def requests_for(
    n: int, spec: EmbeddingModel, *, images: bool, cap: int | None, image_bytes: int = 0
) -> int:
    """Requests ``n`` items of one kind need."""
    if n <= 0:
        return 0
    return math.ceil(n / items_per_request(spec, images=images, cap=cap, image_bytes=image_bytes))


# -- prices ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """A model's price per million tokens: images, texts (input) and output, in ``currency``."""

    image: float
    text: float
    output: float = 0.0
    currency: str = "CNY"

    @classmethod
    def parse(cls, value: Mapping[str, Any], default: Price | None) -> Price:
        """A ``dashscope_prices`` entry over the list price (keys image, text, output,
        currency); a key left out keeps the list price's value."""
        base = default or cls(0.0, 0.0)
        return cls(
            image=float(value.get("image", base.image)),
            text=float(value.get("text", base.text)),
            output=float(value.get("output", base.output)),
            currency=str(value.get("currency", base.currency)),
        )


#: When the list prices below were read from Alibaba Cloud's price pages.
LIST_PRICES_AS_OF = "2026-03"

#: Documented list prices per region, per million tokens (Beijing in CNY, converted from
#: the per-thousand figures the Chinese pages give; Singapore in USD). Free quotas and
#: tiered prices above 32k tokens per request are ignored. They are list prices as read
#: on LIST_PRICES_AS_OF: ``dashscope_prices`` in mmsearch.toml overrides them.
LIST_PRICES: dict[Region, dict[str, Price]] = {
    Region.cn: {
        "multimodal-embedding-v1": Price(0.9, 0.7),
        "tongyi-embedding-vision-plus": Price(0.5, 0.5),
        "tongyi-embedding-vision-flash": Price(0.15, 0.5),
        "tongyi-embedding-vision-plus-2026-03-06": Price(0.5, 0.5),
        "tongyi-embedding-vision-flash-2026-03-06": Price(0.15, 0.5),
        "qwen3-vl-embedding": Price(1.8, 0.7),
        "qwen2.5-vl-embedding": Price(1.8, 0.7),
        "qwen-vl-plus": Price(1.5, 1.5, 4.5),
        "qwen-vl-max": Price(3.0, 3.0, 9.0),
        "qwen3-vl-flash": Price(0.15, 0.15, 1.5),
        "qwen3-vl-plus": Price(1.0, 1.0, 10.0),
    },
    Region.intl: {
        "tongyi-embedding-vision-plus": Price(0.09, 0.09, currency="USD"),
        "tongyi-embedding-vision-flash": Price(0.03, 0.09, currency="USD"),
        "qwen-vl-plus": Price(0.21, 0.21, 0.63, currency="USD"),
        "qwen-vl-max": Price(0.8, 0.8, 3.2, currency="USD"),
        "qwen3-vl-flash": Price(0.05, 0.05, 0.4, currency="USD"),
        "qwen3-vl-plus": Price(0.2, 0.2, 1.6, currency="USD"),
    },
}


def price_of(model: str, settings: Settings) -> tuple[Price | None, str]:
    """The price of ``model`` and where it comes from ("settings", "list price", "unknown")."""
    region = region_of(endpoint(settings)) or Region(settings.dashscope_region)
    listed = LIST_PRICES[region].get(model)
    override = settings.dashscope_prices.get(model)
    if override is not None:
        return Price.parse(override, listed), "settings"
    if listed is not None:
        return listed, f"list price as of {LIST_PRICES_AS_OF}"
    return None, "unknown"
