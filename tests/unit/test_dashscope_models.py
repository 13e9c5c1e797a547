"""The DashScope model table: packing items into requests, dimensions, names, regions, prices."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mmsearch import Settings
from mmsearch.providers.dashscope_models import (
    EMBEDDING_MODELS,
    LIST_PRICES,
    MB,
    REGIONS,
    Fusion,
    Region,
    RequestLimits,
    embedder_name,
    embedding_model,
    embedding_model_name,
    endpoint,
    items_per_request,
    plan_requests,
    price_of,
    region_of,
    region_problem,
    requests_for,
    resolve_dimension,
)


@dataclass(frozen=True)
class Item:
    images: int = 0
    nbytes: int = 0
    alone: bool = False


def image(nbytes: int = 100_000) -> Item:
    return Item(images=1, nbytes=nbytes)


TEXT = Item()


def test_the_table_holds_the_documented_models():
    assert set(EMBEDDING_MODELS) >= {
        "multimodal-embedding-v1",
        "tongyi-embedding-vision-plus",
        "tongyi-embedding-vision-flash",
        "qwen3-vl-embedding",
        "qwen2.5-vl-embedding",
    }
    v1 = EMBEDDING_MODELS["multimodal-embedding-v1"]
    assert (v1.dims, v1.max_items, v1.regions) == ((1024,), 1, {Region.cn})
    plus = EMBEDDING_MODELS["tongyi-embedding-vision-plus"]
    assert (plus.default_dim, min(plus.dims), max(plus.dims)) == (1152, 64, 1152)
    assert plus.max_images == 8 and plus.regions == {Region.cn, Region.intl}
    flash = EMBEDDING_MODELS["tongyi-embedding-vision-flash"]
    assert (flash.default_dim, min(flash.dims)) == (768, 64)
    qwen3 = EMBEDDING_MODELS["qwen3-vl-embedding"]
    assert (min(qwen3.dims), max(qwen3.dims), qwen3.fusion) == (256, 2560, Fusion.parameter)
    assert EMBEDDING_MODELS["qwen2.5-vl-embedding"].fusion is Fusion.always
    for spec in EMBEDDING_MODELS.values():
        assert spec.default_dim in spec.dims and spec.max_images <= spec.max_items


def test_an_unknown_model_gets_one_item_per_request():
    spec = embedding_model("some-future-model")
    assert not spec.known and spec.max_items == 1 and spec.default_dim == 1024
    assert RequestLimits.of(spec, cap=8).items == 1
    assert plan_requests([TEXT] * 3, RequestLimits.of(spec)) == [[0], [1], [2]]


def test_plan_packs_by_count_images_and_bytes():
    plus = EMBEDDING_MODELS["tongyi-embedding-vision-plus"]
    limits = RequestLimits.of(plus)
    assert plan_requests([image()] * 9, limits) == [list(range(8)), [8]]
    assert plan_requests([TEXT] * 25, limits) == [list(range(20)), list(range(20, 25))]
    big = image(10 * MB)  # two fit in the 24 MB budget, a third does not
    assert plan_requests([big] * 5, limits) == [[0, 1], [2, 3], [4]]
    mixed = [TEXT, image(), TEXT]
    assert plan_requests(mixed, limits) == [[0, 1, 2]]
    capped = RequestLimits.of(plus, cap=3)
    assert plan_requests([image()] * 8, capped) == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_plan_sends_an_alone_item_by_itself_and_keeps_the_order():
    limits = RequestLimits.of(EMBEDDING_MODELS["qwen3-vl-embedding"])
    items = [image(), Item(images=1, nbytes=10, alone=True), image(), image()]
    assert plan_requests(items, limits) == [[0], [1], [2, 3]]
    assert plan_requests([], limits) == []


def test_requests_for_matches_the_plan():
    for name, spec in EMBEDDING_MODELS.items():
        for n in (1, 7, 8, 9, 33):
            planned = len(plan_requests([image()] * n, RequestLimits.of(spec)))
            assert requests_for(n, spec, images=True, cap=None) == planned, (name, n)
            texts = len(plan_requests([TEXT] * n, RequestLimits.of(spec)))
            assert requests_for(n, spec, images=False, cap=None) == texts, (name, n)
    plus = EMBEDDING_MODELS["tongyi-embedding-vision-plus"]
    assert items_per_request(plus, images=True, cap=None, image_bytes=10 * MB) == 2
    assert requests_for(0, plus, images=True, cap=None) == 0


def test_dimensions_and_the_names_collections_record():
    plus = EMBEDDING_MODELS["tongyi-embedding-vision-plus"]
    assert resolve_dimension(plus, None) == 1152
    assert resolve_dimension(plus, 256) == 256
    with pytest.raises(ValueError, match="1152, 1024, 512, 256, 128, 64, not 300"):
        resolve_dimension(plus, 300)
    v1 = EMBEDDING_MODELS["multimodal-embedding-v1"]
    assert resolve_dimension(v1, 1024) == 1024 and not v1.takes_dimension
    with pytest.raises(ValueError, match="1024-d vectors only"):
        resolve_dimension(v1, 512)
    assert resolve_dimension(embedding_model("new-model"), 640) == 640
    assert embedder_name(plus, 1152, fused=False) == "dashscope-tongyi-embedding-vision-plus"
    assert embedder_name(plus, 256, fused=False) == "dashscope-tongyi-embedding-vision-plus-256d"
    qwen3 = EMBEDDING_MODELS["qwen3-vl-embedding"]
    assert embedder_name(qwen3, 2560, fused=True) == "dashscope-qwen3-vl-embedding-fused"
    # The tutorial's model keeps the name collections built before this table have.
    assert embedder_name(v1, 1024, fused=False) == "dashscope-multimodal-embedding-v1"


def test_regions_endpoints_and_the_default_model():
    assert endpoint(Settings()) == REGIONS[Region.cn]
    intl = Settings(dashscope_region="intl")
    assert endpoint(intl) == "https://dashscope-intl.aliyuncs.com/api/v1"
    assert embedding_model_name(intl) == "tongyi-embedding-vision-plus"
    assert embedding_model_name(Settings()) == "multimodal-embedding-v1"
    chosen = Settings(
        dashscope_region="intl", dashscope_embedding_model="tongyi-embedding-vision-flash"
    )
    assert embedding_model_name(chosen) == "tongyi-embedding-vision-flash"
    assert (
        endpoint(Settings(dashscope_base_url="http://proxy:8080/api/v1"))
        == "http://proxy:8080/api/v1"
    )
    assert region_of(REGIONS[Region.intl]) is Region.intl
    assert region_of("http://127.0.0.1:1234/api/v1") is None
    v1 = EMBEDDING_MODELS["multimodal-embedding-v1"]
    assert "only in China (Beijing)" in region_problem(v1, REGIONS[Region.intl])
    assert region_problem(v1, REGIONS[Region.cn]) is None
    assert region_problem(v1, "http://127.0.0.1:1/api/v1") is None  # a test server or proxy


def test_prices_come_from_the_list_unless_settings_override_them():
    price, source = price_of("qwen-vl-plus", Settings())
    assert price == LIST_PRICES[Region.cn]["qwen-vl-plus"] and source.startswith("list price")
    intl, _ = price_of("tongyi-embedding-vision-plus", Settings(dashscope_region="intl"))
    assert intl.currency == "USD"
    mine = Settings(dashscope_prices={"qwen-vl-plus": {"output": 2.0}})
    price, source = price_of("qwen-vl-plus", mine)
    assert (price.image, price.output, source) == (1.5, 2.0, "settings")
    assert price_of("some-future-model", Settings()) == (None, "unknown")
    for region, table in LIST_PRICES.items():
        for model in table:
            spec = EMBEDDING_MODELS.get(model)
            assert spec is None or region in spec.regions, (region, model)
