"""The HTTP API's validation, errors and access rules, on fakes: no models, no Milvus."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from mmsearch import MMSearch
from mmsearch.api import create_app

from ..fakes import colour_image

TOKEN = "unit-token"


def _png(colour: str = "red", size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    colour_image(colour, size).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def client(settings, photos, tmp_path):
    settings = settings.model_copy(
        update={"api_token": SecretStr(TOKEN), "upload_dir": tmp_path / "uploads"}
    )
    with MMSearch(settings=settings) as mm:
        mm.index(photos)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        yield c


def test_search_by_text_and_image(client):
    body = client.get("/api/v1/search", params={"q": "red", "k": 2}).json()
    assert body["hits"][0]["filename"] == "red.png" and "origin" not in body["hits"][0]
    res = client.post("/api/v1/search/image", files={"file": ("q.png", _png("green"))})
    assert res.json()["hits"][0]["filename"] == "green.png"
    hit = res.json()["hits"][0]
    assert client.get(hit["image_url"]).headers["content-type"] == "image/png"
    thumb = client.get(hit["thumbnail_url"], params={"size": 128})
    assert thumb.headers["content-type"] == "image/jpeg"
    similar = client.get(f"/api/v1/items/{hit['id']}/similar", params={"k": 1}).json()
    assert similar["hits"][0]["id"] == hit["id"]


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"q": ""}, 400, "empty"),
        ({"q": "red", "mode": "image2text"}, 400, "takes an image"),
        ({"q": "red", "k": 0}, 422, None),
        ({"q": "red", "mode": "nope"}, 422, None),
        ({"q": "red", "label": "a\nb"}, 400, "control characters"),
        ({"q": "red", "min_score": "x"}, 422, None),
    ],
)
def test_text_search_errors_are_json(client, params, status, message):
    res = client.get("/api/v1/search", params=params)
    assert res.status_code == status and res.headers["content-type"] == "application/json"
    if message:
        assert message in res.json()["detail"]


def test_image_search_errors(client):
    url = "/api/v1/search/image"
    assert client.post(url, files={"file": ("x.png", b"nope")}).status_code == 415
    assert client.post(url, files={"file": ("x.png", b"")}).status_code == 400
    wrong = client.post(url, files={"file": ("x.png", _png())}, data={"mode": "text2text"})
    assert wrong.status_code == 400


def test_items_that_do_not_exist_are_404(client):
    for url in ("/api/v1/items/" + "0" * 24, "/api/v1/items/zz/image", "/api/v1/items/..%2Fx"):
        assert client.get(url).status_code == 404


def test_uploads_index_once_and_keep_no_client_name(client, settings, tmp_path):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    files = {"files": ("../../evil.html", _png("white"), "text/html")}
    first = client.post("/api/v1/index/upload", files=files, headers=auth).json()
    second = client.post("/api/v1/index/upload", files=files, headers=auth).json()
    assert (first["indexed"], second["unchanged"]) == (1, 1)
    stored = [p.name for p in (tmp_path / "uploads").rglob("*") if p.is_file()]
    assert len(stored) == 1 and stored[0].endswith(".png")
    assert client.get("/api/v1/stats").json()["count"] == 6


def test_indexing_needs_the_api_token(client):
    files = {"files": ("a.png", _png(), "image/png")}
    assert client.post("/api/v1/index/upload", files=files).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert client.post("/api/v1/index/upload", files=files, headers=bad).status_code == 401


def test_reads_with_a_read_token(settings, photos):
    locked = settings.model_copy(update={"read_token": SecretStr("r")})
    with MMSearch(settings=locked) as mm:
        mm.index(photos)
    with TestClient(create_app(locked), base_url="http://127.0.0.1") as c:
        assert c.get("/api/v1/search", params={"q": "red"}).status_code == 401
        ok = c.get("/api/v1/search", params={"q": "red"}, headers={"Authorization": "Bearer r"})
        assert ok.status_code == 200
        assert c.get("/api/v1/health").status_code == 200


def test_unexpected_errors_are_json_500s(settings, monkeypatch):
    from mmsearch import engine

    def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setattr(engine.MMSearch, "stats", boom)
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        res = c.get("/api/v1/stats")
    assert res.status_code == 500 and res.json() == {
        "detail": "internal error; see the server's log"
    }


def test_decoded_query_images_keep_within_the_pixel_budget(client):
    buf = io.BytesIO()
    Image.new("L", (4100, 4100)).save(buf, "PNG")
    res = client.post("/api/v1/search/image", files={"file": ("big.png", buf.getvalue())})
    assert res.status_code == 415 and "at most 16,000,000" in res.json()["detail"]
