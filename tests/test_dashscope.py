"""The dashscope provider through the real SDK against a local DashScope-protocol server.

Covers what the remote providers share too, end to end: retries and backoff, the rate
limit and concurrency as the server sees them, the prompt, the image size limit. Their
parts are unit-tested on their own in ``tests/unit``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from mmsearch import MMSearch, Mode, Settings
from mmsearch.images import decode_image, read_file
from mmsearch.providers import get_describer, get_embedder
from mmsearch.providers.answers import PROMPT_EN, PROMPT_ZH
from mmsearch.providers.base import FatalProviderError, ProviderError
from mmsearch.providers.encoding import MAX_IMAGE_BYTES, image_data_uri

from .conftest import REVERSE_CSV
from .fake_dashscope import (
    COLORS,
    EMBEDDING_PATH,
    GENERATION_PATH,
    FakeDashScope,
    caption,
    color_fractions,
    decode_data_uri,
    max_excess,
)

KEY = "sk-fake-0123456789"
TIMEOUT = 1.0
#: Seconds of arrival jitter allowed when the server checks the request rate.
SLACK = 0.15


#: Every test here retries with millisecond backoff (fixture in conftest).
pytestmark = pytest.mark.usefixtures("fast_backoff")


@pytest.fixture
def server():
    with FakeDashScope(api_key=KEY, hang=TIMEOUT + 0.5) as srv:
        yield srv


def ds_settings(base: Settings, srv: FakeDashScope, **overrides) -> Settings:
    values = dict(
        uri=base.uri,
        cache_dir=base.cache_dir,
        provider="dashscope",
        dashscope_base_url=srv.url + "/api/v1",
        dashscope_api_key=KEY,
        requests_per_minute=6000,
        request_timeout=TIMEOUT,
        index_type="FLAT",
    )
    values.update(overrides)
    return Settings(**values)


def lion() -> Image.Image:
    path = REVERSE_CSV.parent / "test" / "lion" / "n02129165_13728.JPEG"
    return decode_image(read_file(path), max_pixels=10**9)[0]


def as_sent(origin: str) -> Image.Image:
    """The image as the server received it: decoded as ingest does, sent as a data URI."""
    image, _, _ = decode_image(read_file(Path(origin)), max_pixels=10**9)
    return decode_data_uri(image_data_uri(image))


# -- images -----------------------------------------------------------------------------------


def test_large_image_is_reencoded_under_the_limit(server, settings):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (2400, 2400, 3), np.uint8))
    uri = image_data_uri(noise)
    assert len(uri) <= MAX_IMAGE_BYTES
    small = decode_data_uri(uri)
    assert small.size[0] < 2400 and small.size[0] == small.size[1]
    # The fake refuses what DashScope refuses: over 3 MB is a 400.
    raw = "data:image/png;base64," + "A" * (MAX_IMAGE_BYTES + 10)
    body = {"model": "m", "input": {"contents": [{"image": raw}]}}
    answer = requests.post(
        server.url + EMBEDDING_PATH, json=body, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert answer.status_code == 400 and answer.json()["code"] == "InvalidParameter"
    embedder = get_embedder(ds_settings(settings, server))
    assert embedder.embed_images([noise]).shared.shape == (1, 1024)
    sent = server.requests(EMBEDDING_PATH)[-1]
    assert sent.status == 200 and 0 < sent.image_chars <= MAX_IMAGE_BYTES


# -- errors and retries -----------------------------------------------------------------------


@pytest.mark.datasets
def test_ingest_survives_429s_a_500_and_a_timeout(server, settings):
    server.plan("429", "429", "500", "hang")
    with MMSearch(settings=ds_settings(settings, server)) as mm:
        report = mm.index(REVERSE_CSV, limit=10)
        assert report.indexed == 10 and not report.failed, report.failed
        assert mm.stats()["count"] == 10
        hits = mm.search("照片", mode=Mode.text2text, k=10)
    log = server.requests()
    faults = sorted(r.fault for r in log if r.fault)
    assert faults == ["429", "429", "500", "hang"] and server.faults_left() == 0
    # 10 image embeddings, 10 descriptions, one embedding per distinct description (and
    # the query), and the 4 failed tries: nothing was sent twice but the retries.
    distinct = len({h.description for h in hits}) + 1
    assert len(log) == 20 + distinct + 4
    assert sum(r.kind == "describe" and r.status == 200 for r in log) == 10


def test_retry_after_is_honoured(server, settings):
    server.plan("429:1")
    embedder = get_embedder(ds_settings(settings, server))
    embedder.embed_texts(["狮子"], query=True)
    first, second = server.requests()
    assert first.status == 429 and second.status == 200
    assert second.t - first.t >= 0.95  # the backoff alone would be ~0.01 s


def test_other_4xx_is_not_retried(server, settings):
    server.plan("400")
    embedder = get_embedder(ds_settings(settings, server))
    with pytest.raises(ProviderError) as err:
        embedder.embed_texts(["狮子"], query=True)
    assert not isinstance(err.value, FatalProviderError)
    assert "InvalidParameter" in str(err.value)
    assert len(server.requests()) == 1


def test_retries_give_up_after_max_retries(server, settings):
    server.plan(*["500"] * 10)
    embedder = get_embedder(ds_settings(settings, server, max_retries=2))
    with pytest.raises(ProviderError, match="after 3 attempts"):
        embedder.embed_texts(["狮子"], query=True)
    assert len(server.requests()) == 3


@pytest.mark.datasets
def test_a_rejected_image_costs_one_request_not_a_batch(server, settings):
    server.plan("400", path=EMBEDDING_PATH)
    with MMSearch(settings=ds_settings(settings, server)) as mm:
        report = mm.index(REVERSE_CSV, limit=10)
        assert report.indexed == 10 and not report.failed
        distinct = len({h.description for h in mm.search("照片", mode=Mode.text2text, k=10)})
    # The batch failed; ingest retried its images one by one, and the nine image
    # embeddings that had succeeded came from the cache: 10 + 1 + 10 requests, one per
    # distinct description and one for the query.
    assert len(server.requests()) == 21 + distinct + 1


@pytest.mark.datasets
def test_401_stops_the_run_and_names_the_variable_not_the_key(server, settings):
    wrong = "sk-wrong-key-abcdef123456"
    mm = MMSearch(settings=ds_settings(settings, server, dashscope_api_key=wrong))
    with mm, pytest.raises(FatalProviderError) as err:
        mm.index(REVERSE_CSV, limit=10)
    message = str(err.value)
    assert "DASHSCOPE_API_KEY" in message and "InvalidApiKey" in message
    assert wrong not in message and wrong not in repr(err.value)
    # It stopped at once: no retries of a 401, no one-by-one pass over the images.
    assert all(r.status == 401 for r in server.requests())
    assert len(server.requests()) <= settings.max_concurrency


def test_missing_key_fails_when_the_provider_is_created(server, settings, monkeypatch):
    for var in ("DASHSCOPE_API_KEY", "MMSEARCH_DASHSCOPE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(settings.cache_dir)  # no mmsearch.toml here
    s = ds_settings(settings, server, dashscope_api_key=None)
    with pytest.raises(FatalProviderError, match="DASHSCOPE_API_KEY"):
        get_embedder(s)
    with pytest.raises(FatalProviderError, match="DASHSCOPE_API_KEY"):
        get_describer(s)
    assert server.requests() == []


def test_unreachable_endpoint_is_fatal(settings):
    with FakeDashScope() as srv:
        s = ds_settings(settings, srv, max_retries=1)
    embedder = get_embedder(s)  # the server is gone: its port refuses connections
    with pytest.raises(FatalProviderError, match="cannot connect"):
        embedder.embed_texts(["狮子"], query=True)


def test_text_naming_a_local_file_is_not_uploaded(server, settings, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("private\n")
    embedder = get_embedder(ds_settings(settings, server))
    embedder.embed_texts(["notes.txt"], query=True)
    (only,) = server.requests()
    assert only.path == EMBEDDING_PATH and only.kind == "text" and only.status == 200


# -- rate and concurrency, measured by the server --------------------------------------------


@pytest.mark.datasets
def test_request_rate_stays_under_the_limit(server, settings):
    rpm = 600  # 10 requests a second
    with MMSearch(settings=ds_settings(settings, server, requests_per_minute=rpm)) as mm:
        report = mm.index(REVERSE_CSV, limit=5)
    assert report.indexed == 5
    times = [r.t for r in server.requests()]
    assert len(times) == 15
    # A token bucket (burst 1) lets at most 1 + rate * W requests leave in any window of
    # length W. They are counted here on arrival, which adds the jitter of each request's
    # trip (the first opens a connection; a busy machine delays threads): SLACK seconds.
    # Without the limiter the 4 threads' requests arrive within milliseconds and fail this.
    assert max_excess(times, rate=rpm / 60, burst=1, slack=SLACK) <= 0
    # The embedder and the describer share one bucket: the run as a whole kept the pace.
    assert max(times) - min(times) >= (len(times) - 1) / (rpm / 60) - SLACK


@pytest.mark.datasets
def test_concurrency_is_bounded(settings):
    with FakeDashScope(api_key=KEY, latency=0.05) as srv:
        with MMSearch(settings=ds_settings(settings, srv, max_concurrency=2)) as mm:
            report = mm.index(REVERSE_CSV, limit=10)
        assert report.indexed == 10
        assert srv.max_in_flight == 2  # calls overlapped, never more than two at a time


# -- descriptions -----------------------------------------------------------------------------


@pytest.mark.datasets
@pytest.mark.parametrize("language", ["zh", "en"])
def test_keywords_are_parsed_into_their_own_field(server, settings, language):
    with MMSearch(settings=ds_settings(settings, server, language=language)) as mm:
        assert mm.index(REVERSE_CSV, limit=10).indexed == 10
        items = [mm.get(h.id) for h in mm.search("photo", mode=Mode.text2text, k=10)]
    prompts = {r.prompt for r in server.requests(GENERATION_PATH)}
    assert prompts == {PROMPT_EN if language == "en" else PROMPT_ZH}
    layouts = {r.answer.split("\n")[0][:4] for r in server.requests(GENERATION_PATH)}
    assert len(layouts) >= 2  # the answers came in more than one layout
    assert len(items) == 10
    for item in items:
        expected = caption(as_sent(item.origin), language)
        assert item.description == expected.text
        assert item.keywords == expected.keywords
        assert not any(w in item.description for w in ("关键词", "Keywords", "描述"))
    if language == "en":
        assert not any("\u4e00" <= ch <= "\u9fff" for it in items for ch in it.description)


# -- search end to end ------------------------------------------------------------------------


@pytest.mark.datasets
def test_four_search_modes_with_the_dashscope_embedder(server, settings):
    with MMSearch(settings=ds_settings(settings, server)) as mm:
        assert mm.index(REVERSE_CSV, limit=10).indexed == 10
        items = {h.id: mm.get(h.id) for h in mm.search("照片", mode=Mode.text2text, k=10)}
        shares = {
            i: color_fractions(as_sent(it.origin))
            / np.linalg.norm(color_fractions(as_sent(it.origin)))
            for i, it in items.items()
        }
        # text2image: the colour most prominent in some image finds that image, by its
        # Chinese or English name.
        color = max(range(len(COLORS)), key=lambda c: max(s[c] for s in shares.values()))
        best = max(shares, key=lambda i: shares[i][color])
        for query in (COLORS[color][1], COLORS[color][0]):
            hits = mm.search(query, mode=Mode.text2image, k=3)
            assert hits[0].id == best, (query, [h.origin for h in hits])
        # image2image: an indexed image finds itself first.
        first = next(iter(items.values()))
        hits = mm.search(Path(first.origin), mode=Mode.image2image, k=3)
        assert hits[0].id == first.id and hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert hits[1].score < hits[0].score
        # text2text: a colour name finds descriptions that name it.
        zh_name = COLORS[color][1]
        hits = mm.search(zh_name, mode=Mode.text2text, k=3)
        assert zh_name in hits[0].description
        # image2text: an image finds a description that names its main colour first.
        for item in list(items.values())[:3]:
            main = COLORS[int(np.argmax(shares[item.id]))][1]
            hits = mm.search(Path(item.origin), mode=Mode.image2text, k=3)
            assert hits[0].description.startswith(f"一张以{main}"), (main, hits[0].description)


@pytest.mark.datasets
def test_dashscope_describer_with_the_offline_embedder(server, settings):
    s = ds_settings(settings, server, provider="offline", describer="dashscope")
    with MMSearch(settings=s) as mm:
        report = mm.index(REVERSE_CSV, limit=10)
        assert report.indexed == 10 and not report.failed
        assert mm.stats()["count"] == 10
        hits = mm.search("Afghan hound", mode=Mode.text2image, k=3)
        assert "Afghan_hound" in [h.label for h in hits]
        item = mm.get(hits[0].id)
        assert item.keywords == caption(as_sent(item.origin), "zh").keywords
    assert {r.path for r in server.requests()} == {GENERATION_PATH}  # only descriptions
