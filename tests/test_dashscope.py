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
#: Request timeout: long enough that a loaded 2-core CI machine answers in time, short
#: enough that the "hang" fault (TIMEOUT + 0.5 s) costs a test seconds, not minutes.
TIMEOUT = 3.0
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


# -- batched requests, dimensions and fusion (the current models) ---------------------------

#: Eight distinct images and eight texts: what the done-when test sends.
COLOURS = [en for en, _, _ in COLORS[:8]]


def colour_photos(n: int = 8, size: tuple[int, int] = (64, 48)) -> list[Image.Image]:
    """Distinct small images: one of the fake's named colours, with noise of its own."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        rgb = np.array(COLORS[i % len(COLORS)][2], np.int16)
        noise = rng.integers(-20, 21, (size[1], size[0], 3))
        out.append(Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8)))
    return out


def embedding_requests(srv: FakeDashScope) -> list:
    return srv.requests(EMBEDDING_PATH)


@pytest.mark.parametrize(
    ("model", "max_batch", "expected"),
    [
        ("multimodal-embedding-v1", None, 16),  # the tutorial's model: one item a request
        ("tongyi-embedding-vision-plus", None, 2),  # 8 images in one, 8 texts in another
        ("tongyi-embedding-vision-flash", None, 2),
        ("qwen3-vl-embedding", None, 2),  # up to 20 contents a request
        ("qwen2.5-vl-embedding", None, 16),  # fuses each request: one item each
        ("tongyi-embedding-vision-plus", 3, 6),  # dashscope_max_batch: 3+3+2 twice
        ("some-future-embedding-model", None, 16),  # unknown: one item a request
    ],
)
def test_8_images_and_8_texts_go_out_in_the_requests_the_limits_imply(
    server, settings, model, max_batch, expected
):
    s = ds_settings(
        settings, server, dashscope_embedding_model=model, dashscope_max_batch=max_batch
    )
    embedder = get_embedder(s)
    images = embedder.embed_images(colour_photos()).shared
    texts = embedder.embed_texts([f"{c} photo {c}" for c in COLOURS], query=False)
    sent = embedding_requests(server)
    assert len(sent) == expected, [(r.items, r.status) for r in sent]
    assert all(r.status == 200 for r in sent)
    assert sum(r.items for r in sent) == 16
    assert images.shape == texts.shape == (8, embedder.dim)
    # Batching changes nothing in the answer: each vector is the one sent alone gets.
    alone = get_embedder(ds_settings(settings, server, dashscope_embedding_model=model))
    alone.client.caller.cache = type(alone.client.caller.cache)()
    one = alone.embed_texts([f"{COLOURS[3]} photo {COLOURS[3]}"], query=False)
    np.testing.assert_allclose(one[0], texts[3], atol=1e-6)
    red = int(
        np.argmax([images[i] @ embedder.embed_texts(["red"], query=True)[0] for i in range(8)])
    )
    assert red == 0  # the red photo is nearest to "red": vectors came back in request order


def test_batched_requests_never_exceed_the_rate_limit(server, settings):
    rpm = 600
    s = ds_settings(
        settings,
        server,
        requests_per_minute=rpm,
        dashscope_embedding_model="tongyi-embedding-vision-plus",
        dashscope_max_batch=2,
    )
    embedder = get_embedder(s)
    embedder.embed_images(colour_photos())
    embedder.embed_texts(COLOURS, query=False)
    times = [r.t for r in embedding_requests(server)]
    assert len(times) == 8 and server.max_in_flight >= 1
    assert max_excess(times, rate=rpm / 60, burst=1, slack=SLACK) <= 0
    assert max(times) - min(times) >= (len(times) - 1) / (rpm / 60) - SLACK


def test_a_refused_image_fails_alone_and_its_batch_mates_are_not_resent(server, settings):
    s = ds_settings(settings, server, dashscope_embedding_model="tongyi-embedding-vision-plus")
    embedder = get_embedder(s)
    photos = colour_photos()
    photos[5] = Image.new("RGB", (8, 8), "red")  # DashScope wants more than 10 px a side
    with pytest.raises(ProviderError, match=r"1 of 8 items failed.*larger than 10 pixels"):
        embedder.embed_images(photos)
    sent = embedding_requests(server)
    # 8 refused, then halves (sent concurrently): 4 ok + 4 refused, 2 + 2, 1 + 1.
    assert sorted((r.items, r.status) for r in sent) == [
        (1, 200),
        (1, 400),
        (2, 200),
        (2, 400),
        (4, 200),
        (4, 400),
        (8, 400),
    ]
    # Ingest's one-by-one retry asks for the seven again: they come from the cache.
    before = len(sent)
    good = [p for i, p in enumerate(photos) if i != 5]
    assert embedder.embed_images(good).shared.shape == (7, embedder.dim)
    assert len(embedding_requests(server)) == before


def test_a_flagged_text_fails_alone(server, settings):
    from .fake_dashscope import FLAGGED

    s = ds_settings(settings, server, dashscope_embedding_model="qwen3-vl-embedding")
    embedder = get_embedder(s)
    texts = [f"{c} things" for c in COLOURS]
    texts[2] = f"bad {FLAGGED} words"
    with pytest.raises(ProviderError, match="DataInspectionFailed"):
        embedder.embed_texts(texts, query=False)
    refused = [r for r in embedding_requests(server) if r.status == 400]
    assert refused and all(r.status == 400 for r in refused)
    before = len(embedding_requests(server))
    good = [t for t in texts if FLAGGED not in t]
    assert embedder.embed_texts(good, query=False).shape == (7, embedder.dim)
    assert len(embedding_requests(server)) == before  # all seven were cached


def test_a_429_on_a_batch_retries_the_batch_not_its_halves(server, settings):
    server.plan("429", path=EMBEDDING_PATH)
    s = ds_settings(settings, server, dashscope_embedding_model="tongyi-embedding-vision-plus")
    get_embedder(s).embed_images(colour_photos())
    sent = embedding_requests(server)
    assert [r.status for r in sent] == [429, 200] and sent[1].items == 8


def test_dashscope_dimension_reaches_the_wire(server, settings):
    s = ds_settings(
        settings,
        server,
        dashscope_embedding_model="tongyi-embedding-vision-plus",
        dashscope_dimension=256,
    )
    embedder = get_embedder(s)
    assert embedder.dim == 256 and embedder.name == "dashscope-tongyi-embedding-vision-plus-256d"
    vectors = embedder.embed_images(colour_photos(2)).shared
    assert vectors.shape == (2, 256)
    (sent,) = embedding_requests(server)
    assert sent.params == {"dimension": 256} and sent.status == 200
    # The default width is not sent, and keeps the name collections were built with.
    plain = get_embedder(
        ds_settings(settings, server, dashscope_embedding_model="tongyi-embedding-vision-plus")
    )
    assert (plain.dim, plain.name) == (1152, "dashscope-tongyi-embedding-vision-plus")
    plain.embed_texts(["red"], query=True)
    assert embedding_requests(server)[-1].params == {}


def test_a_dimension_the_model_does_not_take_stops_before_sending(server, settings):
    bad = ds_settings(settings, server, dashscope_dimension=512)  # multimodal-embedding-v1
    with pytest.raises(FatalProviderError, match="1024-d vectors only.*tongyi-embedding"):
        get_embedder(bad)
    odd = ds_settings(
        settings,
        server,
        dashscope_embedding_model="qwen3-vl-embedding",
        dashscope_dimension=1152,
    )
    with pytest.raises(FatalProviderError, match="2560, 2048, 1536, 1024, 768, 512, 256"):
        get_embedder(odd)
    assert server.requests() == []


def test_an_unknown_model_sends_the_dimension_and_checks_the_answer(server, settings):
    s = ds_settings(
        settings, server, dashscope_embedding_model="some-future-model", dashscope_dimension=640
    )
    embedder = get_embedder(s)
    assert embedder.embed_texts(["a", "b"], query=False).shape == (2, 640)
    assert [(r.items, r.params) for r in embedding_requests(server)] == [
        (1, {"dimension": 640}),
        (1, {"dimension": 640}),
    ]
    wrong = get_embedder(ds_settings(settings, server, dashscope_embedding_model="other-model"))
    wrong.dim = 512  # what the table would assume for a model it does not know
    with pytest.raises(FatalProviderError, match="1024-d vectors, expected 512"):
        wrong.embed_texts(["c"], query=False)


def test_fusion_with_enable_fusion_one_image_and_title_a_request(server, settings):
    s = ds_settings(
        settings,
        server,
        dashscope_embedding_model="qwen3-vl-embedding",
        dashscope_fusion=True,
        dashscope_dimension=1024,
    )
    embedder = get_embedder(s)
    assert embedder.fuses_titles and embedder.name == "dashscope-qwen3-vl-embedding-1024d-fused"
    photos = colour_photos(3)
    fused = embedder.embed_images(photos, titles=["red shoe", None, "yellow bag"]).shared
    sent = embedding_requests(server)
    # Sent concurrently, so in any order: two fused requests of their own, one plain.
    assert sorted((r.items, r.kind, sorted(r.params.items())) for r in sent) == [
        (1, "image", [("dimension", 1024)]),
        (2, "fusion", [("dimension", 1024), ("enable_fusion", True)]),
        (2, "fusion", [("dimension", 1024), ("enable_fusion", True)]),
    ]
    plain = embedder.embed_images(photos).shared  # no titles: the images alone
    assert np.allclose(plain[1], fused[1], atol=1e-6)
    assert not np.allclose(plain[0], fused[0], atol=1e-3)
    title = embedder.embed_texts(["red shoe"], query=True)[0]
    assert fused[0] @ title > plain[0] @ title  # the title pulled the vector towards it


def test_fusion_in_one_content_object_batches_several_products(server, settings):
    s = ds_settings(
        settings,
        server,
        dashscope_embedding_model="tongyi-embedding-vision-plus-2026-03-06",
        dashscope_fusion=True,
    )
    embedder = get_embedder(s)
    titles = [f"{c} product" for c in COLOURS]
    assert embedder.embed_images(colour_photos(), titles=titles).shared.shape == (8, 1152)
    (sent,) = embedding_requests(server)
    assert (sent.items, sent.images, sent.kind, sent.params) == (8, 8, "fusion", {})


def test_fusion_needs_a_model_that_offers_it(server, settings):
    s = ds_settings(
        settings,
        server,
        dashscope_embedding_model="tongyi-embedding-vision-plus",
        dashscope_fusion=True,
    )
    with pytest.raises(FatalProviderError, match="cannot fuse.*qwen3-vl-embedding"):
        get_embedder(s)


def test_the_fake_refuses_what_dashscope_refuses(server):
    """The protocol server's documented limits, checked on the wire (not through mmsearch)."""
    uri = image_data_uri(colour_photos(1)[0])
    auth = {"Authorization": f"Bearer {KEY}"}

    def post(model: str, contents: list, **parameters):
        body = {"model": model, "input": {"contents": contents}, "parameters": parameters}
        return requests.post(server.url + EMBEDDING_PATH, json=body, headers=auth)

    nine = [{"image": uri}] * 9
    assert post("tongyi-embedding-vision-plus", nine).json()["code"] == "InvalidParameter"
    assert post("tongyi-embedding-vision-plus", nine[:8]).status_code == 200
    assert post("multimodal-embedding-v1", [{"text": "a"}, {"text": "b"}]).status_code == 400
    assert post("qwen3-vl-embedding", [{"text": "a"}] * 21).status_code == 400
    assert post("qwen3-vl-embedding", [{"text": "a"}], dimension=100).status_code == 400
    answer = post("qwen3-vl-embedding", [{"text": "a"}, {"image": uri}], enable_fusion=True)
    (only,) = answer.json()["output"]["embeddings"]
    assert only["type"] == "fusion" and len(only["embedding"]) == 2560
    assert (
        post("tongyi-embedding-vision-plus", [{"text": "a"}], enable_fusion=True).status_code == 400
    )
    both = [{"image": uri, "text": "a"}]
    assert post("tongyi-embedding-vision-plus", both).status_code == 400
    assert post("tongyi-embedding-vision-plus-2026-03-06", both).status_code == 200


def test_region_preset_picks_the_singapore_endpoint_and_model(settings):
    s = Settings(
        uri=settings.uri, provider="dashscope", dashscope_api_key=KEY, dashscope_region="intl"
    )
    embedder = get_embedder(s)
    assert embedder.client.base_url == "https://dashscope-intl.aliyuncs.com/api/v1"
    assert embedder.model == "tongyi-embedding-vision-plus"
    beijing_only = Settings(
        uri=settings.uri,
        provider="dashscope",
        dashscope_api_key=KEY,
        dashscope_region="intl",
        dashscope_embedding_model="multimodal-embedding-v1",
    )
    with pytest.raises(FatalProviderError, match="only in China \\(Beijing\\).*tongyi"):
        get_embedder(beijing_only)


@pytest.mark.parametrize("model", ["qwen3-vl-plus", "qwen3-vl-flash", "qwen-vl-max"])
@pytest.mark.parametrize("language", ["zh", "en"])
def test_current_vl_models_answers_still_parse(server, settings, model, language):
    from .fake_dashscope import answer_for

    s = ds_settings(settings, server, dashscope_vl_model=model, language=language)
    photos = colour_photos(6, size=(72, 54))
    descriptions = get_describer(s).describe(photos)
    answers = [r.answer for r in server.requests(GENERATION_PATH)]
    assert len({a.split("\n")[0][:3] for a in answers}) >= 2  # several layouts came back
    for photo, desc in zip(photos, descriptions, strict=True):
        expected = answer_for(decode_data_uri(image_data_uri(photo)), language, model)
        assert desc.text == expected.text and desc.keywords == expected.keywords


# -- through MMSearch.index -------------------------------------------------------------------


def _catalog(folder: Path) -> Path:
    """Eight photos, one of them too small for DashScope (8x8: a valid PNG it refuses)."""
    folder.mkdir()
    for i, photo in enumerate(colour_photos(7)):
        photo.save(folder / f"p{i}.png")
    Image.new("RGB", (8, 8), "red").save(folder / "tiny.png")
    return folder


def test_a_bad_image_in_a_batch_is_reported_alone_and_the_other_7_are_indexed(
    server, settings, tmp_path
):
    folder = _catalog(tmp_path / "photos")
    s = ds_settings(
        settings,
        server,
        batch_size=8,
        dashscope_embedding_model="tongyi-embedding-vision-plus",
    )
    with MMSearch(settings=s) as mm:
        report = mm.index(folder)
        assert report.indexed == 7, report.failed
        assert [Path(p).name for p, _ in report.failed] == ["tiny.png"]
        assert "larger than 10 pixels" in report.failed[0][1]
        assert mm.stats()["count"] == 7
        hits = mm.search("red", mode=Mode.text2image, k=1)
        assert Path(hits[0].origin).name == "p0.png"
    images = [r for r in embedding_requests(server) if r.images]
    # Each good image was embedded once (in a batch that succeeded); none was sent again
    # by ingest's one-by-one retry, which found them in the cache.
    assert sum(r.items for r in images if r.status == 200) == 7
    assert max(r.items for r in images) == 8


def test_a_different_dimension_is_refused_by_the_collection(server, settings, tmp_path):
    from mmsearch.backends import ProviderMismatchError

    folder = _catalog(tmp_path / "photos")
    (folder / "tiny.png").unlink()
    model = dict(dashscope_embedding_model="tongyi-embedding-vision-plus")
    with MMSearch(settings=ds_settings(settings, server, **model)) as mm:
        assert mm.index(folder).indexed == 7
    narrow = ds_settings(settings, server, dashscope_dimension=256, **model)
    with (
        MMSearch(settings=narrow) as mm,
        pytest.raises(ProviderMismatchError, match=r"1152-d.*-256d' \(256-d\)"),
    ):
        mm.search("red", mode=Mode.text2image)


def test_a_catalog_csv_fuses_each_photo_with_its_title(server, settings, tmp_path):
    folder = tmp_path / "catalog"
    folder.mkdir()
    rows = ["id,path,label,title"]
    for i, photo in enumerate(colour_photos(4)):
        photo.save(folder / f"p{i}.png")
        rows.append(f"{i},p{i}.png,shoes,{COLORS[i][0]} running shoe")
    (folder / "catalog.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    s = ds_settings(
        settings,
        server,
        dashscope_embedding_model="tongyi-embedding-vision-plus-2026-03-06",
        dashscope_fusion=True,
    )
    with MMSearch(settings=s) as mm:
        report = mm.index(folder / "catalog.csv")
        assert report.indexed == 4 and not report.failed, report
    fused = [r for r in embedding_requests(server) if r.kind == "fusion"]
    assert sum(r.items for r in fused) == 4  # every photo went with its title
