"""The cost estimate before a cloud run: requests per model, time at the rate limit, price."""

from __future__ import annotations

import json

import pytest

from mmsearch import Settings
from mmsearch.estimate import Estimate, estimate_index, format_duration


def cloud(**overrides) -> Settings:
    return Settings(uri="x.db", provider="dashscope", **overrides)


def test_the_tutorials_settings_one_item_a_request():
    est = estimate_index(1000, cloud())
    assert est.requests_by_model() == {"multimodal-embedding-v1": 2000, "qwen-vl-plus": 1000}
    assert est.requests == 3000
    assert est.seconds == pytest.approx(3000 / 2)  # 120 requests a minute
    assert set(est.price()) == {"CNY"} and est.price()["CNY"] > 0
    assert not est.unpriced()


def test_batched_model_needs_fewer_requests_packed_per_ingest_batch():
    est = estimate_index(1000, cloud(dashscope_embedding_model="tongyi-embedding-vision-plus"))
    # 31 batches of 32 and one of 8: 4 + 1 image requests (8 a request), 2 + 1 text ones (20).
    by_work = {(ld.model, ld.work): ld.requests for ld in est.loads}
    assert by_work == {
        ("tongyi-embedding-vision-plus", "images"): 31 * 4 + 1,
        ("qwen-vl-plus", "describe"): 1000,
        ("tongyi-embedding-vision-plus", "descriptions"): 31 * 2 + 1,
    }
    assert est.seconds == pytest.approx(est.requests / 2)
    capped = estimate_index(
        1000, cloud(dashscope_embedding_model="tongyi-embedding-vision-plus", dashscope_max_batch=4)
    )
    assert capped.requests_by_model()["tongyi-embedding-vision-plus"] == 2 * 250


def test_fusion_with_titles_sends_each_image_alone():
    s = cloud(dashscope_embedding_model="qwen3-vl-embedding", dashscope_fusion=True)
    fused = estimate_index(100, s, titles=True)
    assert [ld.requests for ld in fused.loads if ld.work == "images"] == [100]
    plain = estimate_index(100, s, titles=False)
    assert [ld.requests for ld in plain.loads if ld.work == "images"] == [3 * 2 + 1]  # 20 a request


def test_latency_bounds_the_time_when_it_is_slower_than_the_rate():
    s = cloud(requests_per_minute=6000, max_concurrency=2)
    est = estimate_index(100, s, seconds_per_request=1.0)
    assert est.seconds == pytest.approx(300 * 1.0 / 2)


def test_prices_from_settings_and_unknown_models():
    s = cloud(dashscope_prices={"qwen-vl-plus": {"image": 0, "text": 0, "output": 0}})
    est = estimate_index(10, s)
    describe = next(ld for ld in est.loads if ld.work == "describe")
    assert describe.price == 0 and describe.price_source == "settings"
    odd = estimate_index(10, cloud(dashscope_embedding_model="new-model"))
    assert odd.unpriced() == ["new-model"] and "no price for new-model" in odd.text()
    mixed = estimate_index(10, Settings(uri="x.db", embedder="offline", describer="openai"))
    assert mixed.requests_by_model() == {"Qwen/Qwen2.5-VL-7B-Instruct": 10}
    assert mixed.unpriced() == ["Qwen/Qwen2.5-VL-7B-Instruct"]


def test_local_providers_make_no_requests():
    est = estimate_index(1000, Settings(uri="x.db"))
    assert est.requests == 0 and est.loads == [] and est.price() == {}
    assert "local models only" in est.text()
    assert estimate_index(0, cloud()).requests == 0


def test_dict_and_text_forms():
    est = estimate_index(10_000, cloud())
    data = json.loads(json.dumps(est.as_dict()))
    assert data["files"] == 10_000 and data["requests"] == 30_000
    assert data["requests_by_model"]["qwen-vl-plus"] == 10_000
    assert data["seconds"] == 15_000.0 and "CNY" in data["price"]
    assert data["assumptions"]["image_tokens"] == 1280
    text = est.text()
    assert text == str(est) and "\n" not in text
    assert text.startswith("10,000 files to index: 30,000 requests")
    assert "4 h 10 min at 120 requests/min" in text and "CNY" in text
    assert "dashscope_prices" in text
    assert isinstance(est, Estimate)


@pytest.mark.parametrize(
    ("seconds", "text"), [(12.4, "12 s"), (594, "9 min 54 s"), (11_100, "3 h 05 min"), (-1, "0 s")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
