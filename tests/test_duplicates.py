"""Duplicates with the real offline provider on a Milvus Lite file: real photos, generated
copies of them (the five kinds ``bench/duplicates.py`` measures, and a byte copy), and
other photos of the same classes that must stay apart; through the library, the CLI
(``mmsearch duplicates``, ``search --collapse``) and the HTTP API (``/duplicates``,
``collapse=true``)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from rich.console import Console
from typer.testing import CliRunner

from mmsearch import MMSearch, Settings, cli
from mmsearch import duplicates as dup
from mmsearch.api import create_app
from mmsearch.cli import app as cli_app
from mmsearch.images import decode_image

from .conftest import DATASETS, REVERSE

pytestmark = pytest.mark.datasets

#: Originals (one per class) and, for two of them, another photo of the same class.
ORIGINALS = ["lion", "Afghan_hound", "goldfish", "castle"]
SAME_CLASS = {"lion": "n02129165_lion.JPEG", "goldfish": "n01443537_goldfish.JPEG"}
HOUR_NS = 3600 * 10**9


def copies_of(image: Image.Image) -> dict[str, bytes]:
    """Resized to 50 %, JPEG quality 40, cropped by 5 % a side, pixels rotated with the EXIF
    tag that shows them upright, PNG."""
    w, h = image.size
    dx, dy = round(w * 0.05), round(h * 0.05)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = {}
    for name, copy, how in [
        ("half.jpg", image.resize((w // 2, h // 2), Image.Resampling.LANCZOS), {"quality": 90}),
        ("q40.jpg", image, {"quality": 40}),
        ("crop.jpg", image.crop((dx, dy, w - dx, h - dy)), {"quality": 90}),
        ("rot.jpg", image.transpose(Image.Transpose.ROTATE_90), {"exif": exif.tobytes()}),
        ("copy.png", image, {}),
    ]:
        buf = io.BytesIO()
        copy.save(buf, format="PNG" if name.endswith(".png") else "JPEG", **how)
        out[name] = buf.getvalue()
    return out


def write_library(
    root: Path,
    originals: list[str] = ORIGINALS,
    same_class: dict[str, str] = SAME_CLASS,
) -> Path:
    """The photos of ``originals`` (the oldest files), their copies, a byte copy of the
    first one (``<label>-backup.jpg``) and another photo of each ``same_class`` class."""
    root.mkdir(parents=True)
    for label in originals:
        src = next((REVERSE / "test" / label).iterdir())
        data = src.read_bytes()
        (root / f"{label}.jpg").write_bytes(data)
        old = os.stat(root / f"{label}.jpg").st_mtime_ns - HOUR_NS
        os.utime(root / f"{label}.jpg", ns=(old, old))
        image = decode_image(data, max_pixels=10**8)[0]
        for name, content in copies_of(image).items():
            (root / f"{label}-{name}").write_bytes(content)
    shutil.copyfile(root / f"{originals[0]}.jpg", root / f"{originals[0]}-backup.jpg")
    for label, name in same_class.items():
        shutil.copyfile(DATASETS / "imagenet_sample" / "images" / name, root / f"other-{label}.jpg")
    return root


#: Files ``write_library`` writes by default.
FILES = len(ORIGINALS) * 6 + 1 + len(SAME_CLASS)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, cache_dir) -> tuple[Settings, Path]:
    """The photos and their copies, indexed once for the module (tests only read them)."""
    root = tmp_path_factory.mktemp("duplicates")
    photos = write_library(root / "photos")
    settings = Settings(uri=str(root / "dup.db"), cache_dir=cache_dir, batch_size=16)
    with MMSearch(settings=settings) as mm:
        report = mm.index(photos)
        assert report.indexed == FILES and not report.failed, report
    return settings, photos


@pytest.fixture
def library(indexed):
    with MMSearch(settings=indexed[0]) as mm:
        yield mm


def family(item) -> str:
    return family_of(Path(item.origin).name)


def family_of(filename: str) -> str:
    """The photo a file shows: its original's label, or ``other-<label>``."""
    name = Path(filename).stem
    return name if name.startswith("other-") else name.split("-")[0]


def test_copies_are_grouped_with_their_original_and_look_alikes_are_not(library):
    report = dup.find_duplicates(library.store)
    assert not report.failed
    groups = {family(g.representative): g for g in report.groups}
    assert sorted(groups) == sorted(ORIGINALS)
    for label, group in groups.items():
        assert {family(it) for it in group.items} == {label}
        assert Path(group.representative.origin).name == f"{label}.jpg"
        assert len(group.items) == (7 if label == "lion" else 6)
        assert group.similarity >= dup.DEFAULT_THRESHOLD - 0.15  # transitive pairs too
    assert groups["lion"].kind == "mixed"
    assert report.duplicates == len(ORIGINALS) * 5 + 1
    public = report.as_dict(full_paths=False)
    assert public["groups"][0]["size"] == 7 and "origin" not in public["groups"][0]["items"][0]


def test_search_results_show_each_photo_once(library):
    query = next((REVERSE / "test" / "lion").iterdir())  # the lion photo itself
    hits = library.search(query, mode="image2image", k=27)
    collapsed = dup.collapse_hits(library.store, hits)
    heads = [family(c.hit) for c in collapsed]
    assert len(heads) == len(set(heads))  # no photo twice
    assert all(family(h) == family(c.hit) for c in collapsed for h in c.copies)
    assert heads[0] == "lion" and collapsed[0].count == 7
    assert len(collapsed) == len(ORIGINALS) + len(SAME_CLASS)


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def runner(indexed, cache_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MMSEARCH_URI", indexed[0].uri)
    monkeypatch.setenv("MMSEARCH_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_cli_duplicates_as_json(runner, indexed):
    res = runner.invoke(cli_app, ["duplicates", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["items"] == FILES and report["groups_count"] == len(ORIGINALS)
    assert report["threshold"] == dup.DEFAULT_THRESHOLD and report["failed"] == []
    lion = report["groups"][0]
    assert lion["size"] == 7 and lion["kind"] == "mixed"
    first = lion["items"][0]
    assert first["kind"] == "representative" and first["origin"] == str(indexed[1] / "lion.jpg")
    kinds = {Path(it["origin"]).name: it["kind"] for it in lion["items"]}
    assert kinds["lion-backup.jpg"] == "exact" and kinds["lion-crop.jpg"] == "near"
    assert all(it["similarity"] >= dup.DEFAULT_THRESHOLD - 0.15 for it in lion["items"])

    res = runner.invoke(cli_app, ["duplicates", "--json", "--threshold", "0.999"])
    strict = json.loads(res.stdout)
    assert strict["threshold"] == 0.999  # only byte copies and lossless ones (PNG) are left
    assert sorted(g["size"] for g in strict["groups"]) == [2, 2, 2, 3]
    names = {Path(it["origin"]).name for g in strict["groups"] for it in g["items"]}
    assert all(n.endswith(("copy.png", "backup.jpg")) or "-" not in n for n in names), names


def test_cli_duplicates_as_tables(runner, indexed, monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=300))  # full paths on one line
    res = runner.invoke(cli_app, ["duplicates"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "1. mixed · 7 copies" in out and "2. near · 6 copies" in out
    assert f"{len(ORIGINALS)} sets of duplicates ({len(ORIGINALS) * 5 + 1} copies" in out
    lines = out.splitlines()
    rep = next(n for n, line in enumerate(lines) if "representative" in line)
    assert "lion.jpg" in lines[rep] and "1.000" in lines[rep]
    assert any("exact" in line and "lion-backup.jpg" in line for line in lines)
    assert any("near" in line and "lion-q40.jpg" in line for line in lines)


@pytest.mark.parametrize(
    ("threshold", "code", "message"),
    [("1.5", 1, "threshold must be in (0, 1], got 1.5"), ("0", 1, "threshold must be in"),
     ("lots", 2, "Invalid value for '--threshold'")],
)  # fmt: skip
def test_cli_bad_threshold_is_a_one_line_error(runner, threshold, code, message):
    res = runner.invoke(cli_app, ["duplicates", "--threshold", threshold])
    assert res.exit_code == code and message in res.output, res.output
    assert "Traceback" not in res.output
    if code == 1:
        assert res.output.strip().count("\n") == 0


def test_cli_duplicates_before_indexing(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("MMSEARCH_URI", str(tmp_path / "empty.db"))
    res = runner.invoke(cli_app, ["duplicates"])
    assert res.exit_code == 1 and "does not exist" in res.output and "mmsearch index" in res.output
    assert "Traceback" not in res.output


def test_cli_search_collapse(runner, indexed):
    query = str(indexed[1] / "lion.jpg")
    args = ["search", "--image", query, "--mode", "image2image", "-k", "4", "--json"]
    plain = json.loads(runner.invoke(cli_app, args).stdout)["hits"]
    assert [family_of(h["origin"]) for h in plain] == ["lion"] * 4  # copies fill the page
    assert all("copies" not in h for h in plain)

    res = runner.invoke(cli_app, [*args, "--collapse"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)["hits"]
    families = [family_of(h["origin"]) for h in hits]
    assert len(hits) == 4 and len(set(families)) == 4, families  # four distinct photos
    assert families[0] == "lion" and hits[0]["copies"] == 6
    assert all(
        h["copies"] == 5 for h in hits[1:] if not family_of(h["origin"]).startswith("other-")
    )

    table = runner.invoke(cli_app, [*args[:-1], "--collapse"]).stdout
    assert "copies" in table and "+6" in table


# -- the HTTP API ------------------------------------------------------------------------------

READ_TOKEN = "read-s3cret"


@pytest.fixture
def client(indexed):
    settings = indexed[0].model_copy(update={"read_token": SecretStr(READ_TOKEN)})
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        c.headers["Authorization"] = f"Bearer {READ_TOKEN}"
        yield c


def test_api_duplicates_needs_read_access_like_search(client):
    for path in ("/api/v1/duplicates", "/api/v1/search?q=lion"):
        refused = client.get(path, headers={"Authorization": ""})
        assert refused.status_code == 401, path
        wrong = client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, path
    assert client.get("/api/v1/duplicates").status_code == 200


def test_api_duplicates_names_files_without_folders(client, indexed):
    res = client.get("/api/v1/duplicates")
    assert res.status_code == 200
    body = res.json()
    assert str(indexed[1]) not in res.text and "origin" not in res.text
    assert body["scanned"] == FILES and body["groups_count"] == len(ORIGINALS)
    assert body["duplicates"] == len(ORIGINALS) * 5 + 1 and body["failed"] == []
    lion = body["groups"][0]
    assert lion["kind"] == "mixed" and lion["size"] == 7
    first = lion["items"][0]
    assert lion["representative"] == first["id"] and first["kind"] == "representative"
    assert first["filename"] == "lion.jpg" and first["similarity"] == 1.0
    assert first["image_url"] == f"/api/v1/items/{first['id']}/image"
    assert {"thumbnail_url", "width", "height"} <= set(first)
    assert all(family_of(it["filename"]) == "lion" for it in lion["items"])
    thumb = client.get(lion["items"][3]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_api_duplicates_report_is_made_once_per_state(client):
    first = client.get("/api/v1/duplicates").json()
    again = client.get("/api/v1/duplicates").json()
    assert again["computed_at"] == first["computed_at"]  # served from the cache
    strict = client.get("/api/v1/duplicates", params={"threshold": 0.999}).json()
    assert strict["threshold"] == 0.999 and strict["computed_at"] != first["computed_at"]
    assert sorted(g["size"] for g in strict["groups"]) == [2, 2, 2, 3]


@pytest.mark.parametrize("threshold", ["0", "-1", "1.5", "nan", "inf", "lots"])
def test_api_bad_threshold_is_a_json_error(client, threshold):
    res = client.get("/api/v1/duplicates", params={"threshold": threshold})
    assert res.status_code == 422
    assert res.headers["content-type"] == "application/json" and res.json()["detail"]


def test_api_search_collapse(client, indexed):
    image = (indexed[1] / "lion.jpg").read_bytes()
    files = {"file": ("q.jpg", image, "image/jpeg")}
    plain = client.post("/api/v1/search/image", files=files, data={"k": "4"}).json()["hits"]
    assert [family_of(h["filename"]) for h in plain] == ["lion"] * 4
    assert all(h["copies"] == 0 for h in plain)

    res = client.post(
        "/api/v1/search/image", params={"collapse": "true"}, files=files, data={"k": "4"}
    )
    assert res.status_code == 200, res.text
    hits = res.json()["hits"]
    families = [family_of(h["filename"]) for h in hits]
    assert len(hits) == 4 and len(set(families)) == 4, families
    assert families[0] == "lion" and hits[0]["copies"] == 6

    text = client.get("/api/v1/search", params={"q": "金鱼", "k": 3, "collapse": True}).json()
    assert family_of(text["hits"][0]["filename"]) == "goldfish", text["hits"]
    assert text["hits"][0]["copies"] == 5
    browse = client.get("/api/v1/browse", params={"k": 50, "collapse": True}).json()["hits"]
    assert len(browse) == len(ORIGINALS) + len(SAME_CLASS)
    assert sum(h["copies"] + 1 for h in browse) == FILES
