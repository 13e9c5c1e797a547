"""The attacks of issue 10 on the HTTP server and on ingest, each tried as an attacker would.

Each test failed on the code before the fix: the swapped symlink served /etc/shadow, the
polyglot came back as text/html, reads and Host names were open, uploads were spooled whole
before the token check, and a link out of an indexed folder was followed and served.
Everything runs on a real Milvus Lite file with the real offline models and real photos
(scikit-image's samples, so no data set is needed).
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from typer.testing import CliRunner

from mmsearch import MMSearch, Settings
from mmsearch.api import create_app
from mmsearch.cli import app as cli_app
from mmsearch.demo import sample_photos

TOKEN = "write-token-for-tests"
READ = "read-token-for-tests"
SECRET = "root:$6$not-a-real-hash:19000:0:99999:7:::\n"


@pytest.fixture(scope="module")
def library(tmp_path_factory, cache_dir):
    """Four real photos indexed in a Lite file, and a secret file beside the folder."""
    root = tmp_path_factory.mktemp("security")
    photos = root / "photos"
    photos.mkdir()
    for item in sample_photos()[:4]:
        shutil.copy(item.path, photos / item.path.name)
    (root / "secret.txt").write_text(SECRET)
    settings = Settings(
        uri=str(root / "sec.db"),
        cache_dir=cache_dir,
        api_token=TOKEN,
        upload_dir=root / "uploads",
        max_upload_bytes=2_000_000,
        max_upload_files=4,
    )
    with MMSearch(settings=settings) as mm:
        assert mm.index(photos).indexed == 4
    return settings, photos, root / "secret.txt"


def _client(settings: Settings, host: str = "127.0.0.1", **kw) -> TestClient:
    return TestClient(create_app(settings, **kw), base_url=f"http://{host}")


def _item(client: TestClient, name: str) -> dict:
    hits = client.get("/api/v1/search", params={"q": "photo", "k": 20}).json()["hits"]
    return next(h for h in hits if h["filename"] == name)


def _png(size=(64, 64), color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_a_file_swapped_for_a_link_is_not_served(library, tmp_path):
    settings, photos, secret = library
    victim = photos / "coffee.png"
    with _client(settings) as client:
        item = _item(client, "coffee.png")
        assert client.get(item["image_url"]).status_code == 200
        saved = tmp_path / "coffee.png"
        shutil.move(victim, saved)
        try:
            victim.symlink_to(secret)
            for url in (item["image_url"], item["thumbnail_url"] + "?size=512"):
                res = client.get(url)
                assert res.status_code == 410, (url, res.status_code)
                assert b"root:" not in res.content
            victim.unlink()
            os.mkfifo(victim)  # a FIFO must not hang the server
            assert client.get(item["image_url"]).status_code == 410
            victim.unlink()
            Image.new("RGB", (8, 8), "blue").save(victim, "PNG")  # other content, same name
            assert client.get(item["image_url"]).status_code == 410
        finally:
            victim.unlink(missing_ok=True)
            shutil.move(saved, victim)
        assert client.get(item["image_url"]).status_code == 200


def test_links_out_of_an_indexed_folder_are_refused(library, tmp_path, cache_dir):
    settings, _, _ = library
    folder = tmp_path / "shared"
    outside = tmp_path / "private"
    folder.mkdir()
    outside.mkdir()
    photo = sample_photos()[0].path
    shutil.copy(photo, outside / "private.png")
    shutil.copy(photo, folder / "inside.png")
    (folder / "leak.png").symlink_to(outside / "private.png")
    (folder / "alias.png").symlink_to(folder / "inside.png")  # inside: one row, not two
    own = settings.model_copy(update={"uri": str(tmp_path / "links.db")})
    with MMSearch(settings=own) as mm:
        report = mm.index(folder)
        assert report.indexed == 1 and report.duplicates == 1
        assert [Path(p).name for p, _ in report.failed] == ["leak.png"]
        assert "outside the indexed folder" in report.failed[0][1]
        assert mm.store.count() == 1
    allowed = own.model_copy(update={"follow_symlinks": True})
    with MMSearch(settings=allowed) as mm:
        assert mm.index(folder).indexed == 1 and mm.store.count() == 2


def test_a_polyglot_upload_is_served_as_an_image(library):
    settings, _, _ = library
    buf = io.BytesIO()
    Image.new("P", (16, 16)).save(buf, "GIF", comment=b"<html><script>alert(1)</script></html>")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with _client(settings) as client:
        files = {"files": ("x.html", buf.getvalue(), "text/html")}
        first = client.post("/api/v1/index/upload", files=files, headers=auth)
        assert first.status_code == 200, first.text
        again = client.post("/api/v1/index/upload", files=files, headers=auth)
        assert again.json()["unchanged"] == 1  # the same image twice is one row
        stored = list(settings.upload_dir.rglob("*.gif"))
        assert len(stored) == 1 and not list(settings.upload_dir.rglob("*.html"))
        hits = client.get("/api/v1/search", params={"q": "x", "k": 50, "label": "upload"})
        (hit,) = [h for h in hits.json()["hits"] if h["filename"].endswith(".gif")]
        res = client.get(hit["image_url"])
        assert res.headers["content-type"] == "image/gif"
        assert res.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in res.headers["content-security-policy"]


def test_reads_need_a_token_beyond_loopback(library):
    settings, _, _ = library
    exposed = settings.model_copy(update={"read_token": SecretStr(READ)})
    with _client(exposed, host="192.0.2.10", listen_host="0.0.0.0") as client:
        assert client.get("/api/v1/health").status_code == 200
        assert client.get("/api/v1/search", params={"q": "cat"}).status_code == 401
        assert client.get("/api/v1/stats").status_code == 401
        page = client.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        bearer = {"Authorization": f"Bearer {READ}"}
        hit = client.get("/api/v1/search", params={"q": "cat", "k": 1}, headers=bearer)
        assert hit.status_code == 200
        image_url = hit.json()["hits"][0]["image_url"]
        assert client.get(image_url).status_code == 401

        bad = client.post("/login", data={"token": "guess"}, follow_redirects=False)
        assert bad.headers["location"] == "/login?failed=1" and "set-cookie" not in bad.headers
        good = client.post("/login", data={"token": READ}, follow_redirects=False)
        cookie = good.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and READ not in cookie
        assert client.get(image_url).status_code == 200  # the cookie now rides along
        assert client.get("/").status_code == 200
        # The read token does not allow indexing; only the API token does.
        files = {"files": ("r.png", _png(), "image/png")}
        assert client.post("/api/v1/index/upload", files=files, headers=bearer).status_code == 401


def test_no_token_beyond_loopback_means_no_reads_unless_public(library):
    settings, _, _ = library
    closed = settings.model_copy(update={"api_token": None})
    with _client(closed, host="192.0.2.10", listen_host="0.0.0.0") as client:
        assert client.get("/api/v1/search", params={"q": "cat"}).status_code == 401
    with _client(closed, host="192.0.2.10", listen_host="0.0.0.0", public=True) as client:
        assert client.get("/api/v1/search", params={"q": "cat"}).status_code == 200
    env = {"MMSEARCH_URI": closed.uri, "MMSEARCH_API_TOKEN": "", "MMSEARCH_READ_TOKEN": ""}
    env = {k: v for k, v in env.items() if v}
    out = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"], env=env)
    assert out.exit_code == 1 and "--public" in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) <= 3


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example", 400),
        ("evil.example:8000", 400),
        ("127.0.0.1:8000", 200),
        ("localhost", 200),
        ("[::1]:8000", 200),
        ("192.0.2.7", 200),
        ("photos.example", 200),
    ],
)
def test_only_known_host_names_are_answered(library, host, status):
    settings, _, _ = library
    own = settings.model_copy(update={"allowed_hosts": ["photos.example"]})
    with _client(own) as client:
        res = client.get("/api/v1/stats", headers={"Host": host})
        assert res.status_code == status, res.text
        assert res.headers["content-type"] == "application/json"


def test_security_headers_and_docs_without_a_cdn(library):
    settings, _, _ = library
    with _client(settings) as client:
        for url in ("/", "/docs", "/api/v1/stats", "/login"):
            res = client.get(url)
            assert res.status_code == 200, url
            assert "frame-ancestors 'none'" in res.headers["content-security-policy"]
            assert res.headers["x-content-type-options"] == "nosniff"
            assert res.headers["x-frame-options"] == "DENY"
        docs = client.get("/docs").text
        links = re.findall(r'(?:src|href)="([^"]*)"', docs)
        assert links and all(link.startswith("/") for link in links), links  # all local
        assert "<script>" not in docs  # no inline script, as the CSP demands
        assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
        assert "unsafe-inline" not in client.get("/").headers["content-security-policy"]


def test_a_declared_oversized_body_is_refused_unread(library):
    settings, _, _ = library
    headers = {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": "50000000"}
    with _client(settings) as client:
        res = client.post("/api/v1/search/image", content=b"\0" * 100, headers=headers)
        assert res.status_code == 413


def test_query_images_have_a_pixel_budget(library):
    settings, _, _ = library
    big = io.BytesIO()
    Image.new("L", (5000, 4000)).save(big, "PNG")  # 20 MP in a few KB
    with _client(settings) as client:
        res = client.post("/api/v1/search/image", files={"file": ("big.png", big.getvalue())})
        assert res.status_code == 415 and "at most" in res.json()["detail"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"q": "cat", "label": "a\r\nb"}, 400),
        ({"q": "cat", "label": "a\x00b"}, 400),
        ({"q": "cat", "label": 'x" or label != "'}, 200),
    ],
)
def test_hostile_labels_are_refused_or_literal(library, params, status):
    settings, _, _ = library
    with _client(settings) as client:
        res = client.get("/api/v1/search", params=params)
        assert res.status_code == status, res.text
        assert res.headers["content-type"] == "application/json"
        if status == 200:
            assert res.json()["hits"] == []


@pytest.mark.parametrize(
    "name", ["a" * 300 + ".png", "nul\x00byte.png", "../../../etc/passwd.png", "x.html"]
)
def test_hostile_upload_names_are_ignored(library, name):
    settings, _, _ = library
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with _client(settings) as client:
        files = {"files": (name, _png(color="green"), "image/png")}
        res = client.post("/api/v1/index/upload", files=files, headers=auth)
        assert res.status_code == 200, res.text
        assert res.json()["indexed"] + res.json()["unchanged"] == 1


def test_a_csv_that_is_not_utf8_is_a_clear_error(library, tmp_path):
    settings, photos, _ = library
    csv_file = tmp_path / "latin1.csv"
    csv_file.write_bytes("id,path,label\n1,café.png,caf\xe9\n".encode("latin-1"))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with _client(settings) as client:
        res = client.post("/api/v1/index/folder", json={"path": str(csv_file)}, headers=auth)
        assert res.status_code == 400 and "UTF-8" in res.json()["detail"]
    out = CliRunner().invoke(cli_app, ["--uri", settings.uri, "index", str(csv_file)])
    assert out.exit_code == 1 and "UTF-8" in out.output and "Traceback" not in out.output


def test_cli_errors_are_one_line(library, tmp_path):
    settings, photos, _ = library
    runner = CliRunner()
    bad_filter = runner.invoke(
        cli_app, ["--uri", settings.uri, "search", "cat", "--filter", 'label == "x']
    )
    assert bad_filter.exit_code == 1 and "invalid filter" in bad_filter.output
    assert "Traceback" not in bad_filter.output
    negative = runner.invoke(
        cli_app, ["--uri", settings.uri, "index", str(photos), "--limit", "-1"]
    )
    assert negative.exit_code == 2 and "Traceback" not in negative.output
    for uri in ("/proc/mmsearch-test/x.db", "embedded:/proc/mmsearch-test"):  # read-only
        out = runner.invoke(cli_app, ["--uri", uri, "stats"])
        assert out.exit_code == 1 and "cannot open Milvus" in out.output, out.output
        assert "Traceback" not in out.output
