"""HTTP API through FastAPI's test client: every endpoint, every error, no path escapes."""

from __future__ import annotations

import io
import shutil

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mmsearch import MMSearch, Settings
from mmsearch.api import create_app

from .conftest import LION, REVERSE

pytestmark = pytest.mark.datasets

LABELS = ["lion", "Afghan_hound", "pizza", "goldfish", "ambulance", "castle"]
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory, cache_dir) -> Settings:
    root = tmp_path_factory.mktemp("api")
    photos = root / "photos"
    for label in LABELS:
        (photos / label).mkdir(parents=True)
        src = next((REVERSE / "test" / label).iterdir())
        shutil.copy(src, photos / label / src.name)
    settings = Settings(
        uri=str(root / "api.db"),
        cache_dir=cache_dir,
        api_token=TOKEN,
        upload_dir=root / "uploads",
        max_upload_bytes=2_000_000,
    )
    with MMSearch(settings=settings) as mm:
        assert mm.index(photos).indexed == len(LABELS)
    return settings


@pytest.fixture(scope="module")
def client(api_settings):
    with TestClient(create_app(api_settings), base_url="http://127.0.0.1") as c:
        yield c


def _png(size=(32, 32), color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_health_and_stats(client):
    assert client.get("/api/v1/health").json() == {"status": "ok"}
    stats = client.get("/api/v1/stats").json()
    assert stats["count"] == len(LABELS) and stats["indexing_enabled"] is True
    assert stats["index_type"] == "HNSW" and stats["embedder"].startswith("offline")


def test_text_search(client):
    res = client.get("/api/v1/search", params={"q": "狮子", "k": 3})
    assert res.status_code == 200
    body = res.json()
    assert body["mode"] == "text2image" and len(body["hits"]) == 3
    top = body["hits"][0]
    assert top["label"] == "lion"
    assert top["image_url"] == f"/api/v1/items/{top['id']}/image"
    assert "origin" not in top  # server paths are not disclosed


def test_text2text_min_score_and_label_filter(client):
    body = client.get("/api/v1/search", params={"q": "披萨", "mode": "text2text", "k": 6}).json()
    assert body["hits"][0]["label"] == "pizza"
    similarity = [h["why"]["vector_score"] for h in body["hits"]]  # fused: scores are RRF's
    cut = (max(similarity) + min(similarity)) / 2
    params = {"q": "披萨", "mode": "text2text", "k": 6, "min_score": cut}
    cut_body = client.get("/api/v1/search", params=params).json()
    kept, more = cut_body["hits"], cut_body["more"]
    assert 0 < len(kept) < 6 and len(kept) + len(more) == 6  # the rest: "show more"
    assert all(h["why"]["vector_score"] >= cut for h in kept)
    assert all(h["why"]["vector_score"] < cut for h in more)
    only = client.get("/api/v1/search", params={"q": "dog", "label": 'lion" or label != "x'})
    assert only.status_code == 200 and only.json()["hits"] == []
    lion = client.get("/api/v1/search", params={"q": "dog", "label": "lion"}).json()["hits"]
    assert [h["label"] for h in lion] == ["lion"]


def test_image_search_and_more_like_this(client):
    res = client.post(
        "/api/v1/search/image",
        files={"file": ("lion.jpg", LION.read_bytes(), "image/jpeg")},
        data={"mode": "image2image", "k": "3"},
    )
    assert res.status_code == 200, res.text
    hits = res.json()["hits"]
    assert hits[0]["label"] == "lion" and hits[0]["score"] > 0.99
    res = client.post(
        "/api/v1/search/image",
        files={"file": ("lion.jpg", LION.read_bytes(), "image/jpeg")},
        data={"mode": "image2text", "k": "2"},
    )
    assert res.json()["hits"][0]["label"] == "lion"
    similar = client.get(f"/api/v1/items/{hits[0]['id']}/similar", params={"k": 2}).json()
    assert similar["hits"][0]["id"] == hits[0]["id"] and len(similar["hits"]) == 2


def test_item_image_and_thumbnail(client):
    hit = client.get("/api/v1/search", params={"q": "lion", "k": 1}).json()["hits"][0]
    item = client.get(f"/api/v1/items/{hit['id']}").json()
    assert item["label"] == "lion" and item["width"] > 0
    original = client.get(item["image_url"])
    assert original.status_code == 200 and original.content == LION.read_bytes()
    thumb = client.get(item["thumbnail_url"], params={"size": 128})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 128
    again = client.get(item["thumbnail_url"], params={"size": 128})
    assert again.content == thumb.content
    assert client.get(item["thumbnail_url"], params={"size": 7}).status_code == 400


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/items/../../../../etc/passwd/image",
        "/api/v1/items/..%2F..%2F..%2Fetc%2Fpasswd/image",
        "/api/v1/items/%2Fetc%2Fpasswd/image",
        "/api/v1/items/%252e%252e%252fetc%252fpasswd/image",
        "/api/v1/items/..%5c..%5cwindows/image",
        "/api/v1/items/0123456789abcdef01234567/image",
        "/api/v1/items/0123456789abcdef01234567/thumbnail",
        "/api/v1/items/0123456789abcdef01234567",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    ],
)
def test_no_path_outside_the_index_can_be_read(client, path):
    res = client.get(path)
    assert res.status_code in (400, 404, 422), (path, res.status_code)
    assert b"root:" not in res.content


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"q": ""}, 400, "empty"),
        ({"q": "   "}, 400, "empty"),
        ({"q": "x", "k": 0}, 422, None),
        ({"q": "x", "k": 100000}, 422, None),
        ({"q": "x", "mode": "image2image"}, 400, "takes an image"),
        ({"q": "x", "mode": "sideways"}, 422, None),
        ({"q": "x" * 1001}, 422, None),
        ({}, 422, None),
    ],
)
def test_text_search_errors(client, params, status, message):
    res = client.get("/api/v1/search", params=params)
    assert res.status_code == status, res.text
    assert "detail" in res.json()
    if message:
        assert message in res.json()["detail"]


def test_image_search_errors(client):
    url = "/api/v1/search/image"
    not_image = client.post(url, files={"file": ("x.jpg", b"hello", "image/jpeg")})
    assert not_image.status_code == 415 and "not a usable image" in not_image.json()["detail"]
    empty = client.post(url, files={"file": ("x.jpg", b"", "image/jpeg")})
    assert empty.status_code == 400
    big = client.post(url, files={"file": ("x.png", b"\0" * 2_000_001, "image/png")})
    assert big.status_code == 413
    wrong_mode = client.post(url, files={"file": ("x.png", _png())}, data={"mode": "text2text"})
    assert wrong_mode.status_code == 400
    assert client.post(url).status_code == 422


def test_indexing_needs_the_token(client, api_settings):
    files = {"files": ("red.png", _png(), "image/png")}
    assert client.post("/api/v1/index/upload", files=files).status_code == 401
    wrong = client.post(
        "/api/v1/index/upload", files=files, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    ok = client.post(
        "/api/v1/index/upload", files=files, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["indexed"] == 1
    assert client.get("/api/v1/stats").json()["count"] == len(LABELS) + 1
    bad = client.post(
        "/api/v1/index/upload",
        files={"files": ("x.jpg", b"junk", "image/jpeg")},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert bad.status_code == 415
    folder = client.post(
        "/api/v1/index/folder",
        json={"path": str(api_settings.upload_dir)},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert folder.status_code == 200 and folder.json()["unchanged"] == 1
    missing = client.post(
        "/api/v1/index/folder",
        json={"path": "/no/such/dir"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert missing.status_code == 400


def test_indexing_disabled_without_token(api_settings, tmp_path):
    settings = api_settings.model_copy(update={"api_token": None, "uri": str(tmp_path / "x.db")})
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        res = c.post("/api/v1/index/upload", files={"files": ("r.png", _png(), "image/png")})
        assert res.status_code == 403 and "MMSEARCH_API_TOKEN" in res.json()["detail"]
        assert c.get("/api/v1/search", params={"q": "x"}).json()["hits"] == []


def test_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "mmsearch" in page.text
    assert client.get("/static/app.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/api/v1/search" in schema["paths"] and "/api/v1/search/image" in schema["paths"]
