"""The openai describer against a local OpenAI-compatible chat completions server."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmsearch import MMSearch, Mode, Settings
from mmsearch.images import decode_image, read_file
from mmsearch.providers import get_describer
from mmsearch.providers.answers import PROMPT_EN, PROMPT_ZH
from mmsearch.providers.base import FatalProviderError, ProviderError
from mmsearch.providers.encoding import image_data_uri

from .conftest import LION, REVERSE_CSV
from .fake_dashscope import caption, decode_data_uri, max_excess
from .fake_openai import CHAT_PATH, FakeOpenAI

KEY = "sk-openai-fake-abcdef0123456789"
TIMEOUT = 1.0
MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


#: Every test here retries with millisecond backoff (fixture in conftest).
pytestmark = pytest.mark.usefixtures("fast_backoff")


@pytest.fixture
def server():
    with FakeOpenAI(api_key=KEY, hang=TIMEOUT + 0.5) as srv:
        yield srv


def oa_settings(base: Settings, srv: FakeOpenAI, **overrides) -> Settings:
    values = dict(
        uri=base.uri,
        cache_dir=base.cache_dir,
        embedder="offline",
        describer="openai",
        openai_base_url=srv.url + "/v1",
        openai_api_key=KEY,
        openai_model=MODEL,
        requests_per_minute=6000,
        request_timeout=TIMEOUT,
    )
    values.update(overrides)
    return Settings(**values)


def image(path: Path = LION):
    return decode_image(read_file(path), max_pixels=10**9)[0]


def expected(path: Path, language: str):
    return caption(decode_data_uri(image_data_uri(image(path))), language)


@pytest.mark.datasets
def test_ingest_survives_faults_with_the_offline_embedder(server, settings):
    server.plan("429", "429", "500", "hang", "drop")
    with MMSearch(settings=oa_settings(settings, server)) as mm:
        report = mm.index(REVERSE_CSV, limit=10)
        assert report.indexed == 10 and not report.failed, report.failed
        assert mm.stats()["count"] == 10
        hits = mm.search("Afghan hound", mode=Mode.text2image, k=3)
        assert "Afghan_hound" in [h.label for h in hits]
        item = mm.get(hits[0].id)
        assert item.keywords == expected(Path(item.origin), "zh").keywords
    log = server.requests()
    assert sorted(r.fault for r in log if r.fault) == ["429", "429", "500", "drop", "hang"]
    assert len(log) == 10 + 5  # one description per image, plus the five failed tries
    assert all(r.path == CHAT_PATH for r in log)
    assert all(r.model == MODEL for r in log if r.status == 200)


@pytest.mark.datasets
def test_401_stops_the_run_and_names_the_variable_not_the_key(server, settings):
    wrong = "sk-wrong-openai-key-9876543210"
    mm = MMSearch(settings=oa_settings(settings, server, openai_api_key=wrong))
    with mm, pytest.raises(FatalProviderError) as err:
        mm.index(REVERSE_CSV, limit=10)
    message = str(err.value)
    assert "OPENAI_API_KEY" in message and "invalid_api_key" in message
    # The server's message quoted the key; the error does not.
    assert wrong in server.requests()[0].auth
    assert wrong not in message and wrong not in repr(err.value)
    assert all(r.status == 401 for r in server.requests())
    assert len(server.requests()) <= settings.max_concurrency


def test_faults_are_retried_and_4xx_is_not(server, settings):
    describer = get_describer(oa_settings(settings, server))
    server.plan("503", "429:1")
    (desc,) = describer.describe([image()])
    first, second, third = server.requests()
    assert [first.status, second.status, third.status] == [503, 429, 200]
    assert third.t - second.t >= 0.95  # Retry-After: 1 was honoured
    assert desc.keywords == expected(LION, "zh").keywords

    server.plan("400")
    with pytest.raises(ProviderError) as err:
        describer.describe([image().rotate(90, expand=True)])
    assert not isinstance(err.value, FatalProviderError)
    assert len(server.requests()) == 4  # the 400 was not retried


def test_unknown_model_is_fatal(server, settings):
    server.plan("404")
    describer = get_describer(oa_settings(settings, server))
    with pytest.raises(FatalProviderError, match="openai_model"):
        describer.describe([image()])


def test_english_prompt_and_keywords(server, settings):
    describer = get_describer(oa_settings(settings, server, language="en"))
    (desc,) = describer.describe([image()])
    (request,) = server.requests()
    assert request.prompt == PROMPT_EN
    want = expected(LION, "en")
    assert desc.text == want.text and desc.keywords == want.keywords
    assert not any("\u4e00" <= ch <= "\u9fff" for ch in desc.text)
    zh = get_describer(oa_settings(settings, server, language="zh"))
    zh.describe([image()])
    assert server.requests()[-1].prompt == PROMPT_ZH


def test_local_server_without_a_key(settings, monkeypatch):
    for var in ("OPENAI_API_KEY", "MMSEARCH_OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with FakeOpenAI(api_key=None) as srv:
        describer = get_describer(oa_settings(settings, srv, openai_api_key=None))
        (desc,) = describer.describe([image()])
        assert desc.keywords and srv.requests()[0].auth == ""


def test_request_rate_stays_under_the_limit(server, settings):
    rpm = 600
    describer = get_describer(oa_settings(settings, server, requests_per_minute=rpm))
    base = image()
    images = [base.rotate(angle, expand=True) for angle in (0, 90, 180, 270)]
    images += [im.transpose(0) for im in images]  # eight distinct images
    describer.describe(images)
    times = [r.t for r in server.requests()]
    assert len(times) == 8
    # At most 1 + rate * W in any window W, with 0.15 s for the jitter of arrival (see
    # test_dashscope); unlimited, the 4 threads' requests would arrive within milliseconds.
    assert max_excess(times, rate=rpm / 60, burst=1, slack=0.15) <= 0
