"""A photo library as a user keeps one (issue 12), through the CLI and the HTTP API, on real
Milvus Lite with the real offline models: phone formats, when and where, filters on every
mode and on no query, queries that name a time or a place, a folder kept in sync.

The photos are real (scikit-image's samples) with EXIF written by the test: a July 2023
evening in Paris with an iPhone, an April 2019 morning in Tokyo with a Canon, a file with
no EXIF dated by its mtime, and the HEIC fixture (West Lake, Hangzhou, May 2024).
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mmsearch import Settings
from mmsearch.api import create_app
from mmsearch.cli import app as cli_app
from mmsearch.demo import sample_photos

from .photos import HEIC, taken_photo

PARIS = (48.8584, 2.2945)
TOKYO = (35.6586, 139.7454)


@pytest.fixture(scope="module")
def library(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("library")
    photos = root / "photos"
    samples = {item.path.stem: item.path for item in sample_photos()}
    taken_photo(
        samples["chelsea"],
        photos / "trip" / "paris.jpg",
        taken=datetime(2023, 7, 14, 18, 30),
        position=PARIS,
    )
    taken_photo(
        samples["coffee"],
        photos / "trip" / "tokyo.jpg",
        taken=datetime(2019, 4, 2, 9, 0),
        offset="+09:00",
        position=TOKYO,
        make="Canon",
        model="Canon EOS R5",
    )
    scan = photos / "scans" / "scan.png"
    scan.parent.mkdir(parents=True)
    shutil.copy(samples["astronaut"], scan)
    stamp = datetime(2020, 1, 1, 12).timestamp()
    os.utime(scan, (stamp, stamp))
    (photos / "phone").mkdir()
    (photos / "phone" / "west-lake.heic").write_bytes(HEIC)
    uri = str(root / "library.db")
    return photos, {"MMSEARCH_URI": uri, "MMSEARCH_CACHE_DIR": str(cache_dir)}, uri


def _cli(env: dict[str, str], *args: str) -> dict:
    out = CliRunner().invoke(cli_app, [*args, "--json"], env=env)
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def _names(result: dict) -> list[str]:
    return [h["origin"].rsplit("/", 1)[-1] for h in result["hits"]]


def test_formats_and_facts_are_indexed(library):
    photos, env, _ = library
    report = _cli(env, "index", str(photos))
    assert report["indexed"] == 4 and not report["failed"], report
    every = _cli(env, "search", "--sort", "date", "-k", "10", "--after", "1990")
    assert _names(every) == ["west-lake.heic", "paris.jpg", "scan.png", "tokyo.jpg"]
    facts = {h["origin"].rsplit("/", 1)[-1]: h["facts"] for h in every["hits"]}
    assert (
        facts["paris.jpg"]["place_city"] == "Paris" and facts["paris.jpg"]["utc_offset"] == "+02:00"
    )
    assert (
        facts["tokyo.jpg"]["camera_make"] == "Canon"
        and facts["tokyo.jpg"]["camera_model"] == "EOS R5"
    )
    assert facts["scan.png"]["taken_at_source"] == "mtime"
    assert facts["west-lake.heic"]["place_city"] == "Hangzhou"
    assert facts["west-lake.heic"]["file_format"] == "HEIF"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--place", "Paris"], ["paris.jpg"]),
        (["--place", "巴黎"], ["paris.jpg"]),
        (["--place", "Japan"], ["tokyo.jpg"]),
        (["--after", "2023-07-01", "--before", "2023-08-01"], ["paris.jpg"]),
        (["--near", "48.85,2.35,10km"], ["paris.jpg"]),
        (["--near", "30.25,120.15,20km"], ["west-lake.heic"]),
        (["--camera", "canon"], ["tokyo.jpg"]),
        (["--camera", "iPhone"], ["paris.jpg", "west-lake.heic"]),
        (["--orientation", "portrait"], ["west-lake.heic"]),
    ],
)
def test_filters_on_a_text_search(library, options, expected):
    _, env, _ = library
    result = _cli(env, "search", "photo", "-k", "10", *options)
    assert sorted(_names(result)) == expected
    assert result["filters"]["understood"], result["filters"]


def test_filters_on_an_image_search_and_on_no_query(library):
    photos, env, _ = library
    query = photos / "trip" / "paris.jpg"
    only_tokyo = _cli(env, "search", "--image", str(query), "--place", "東京")
    assert _names(only_tokyo) == ["tokyo.jpg"]
    browse = _cli(env, "search", "--before", "2021-01-01")
    assert browse["mode"] is None and _names(browse) == ["scan.png", "tokyo.jpg"]


@pytest.mark.parametrize(
    ("query", "names", "kinds"),
    [
        ("cat in Paris", ["paris.jpg"], ["place"]),
        ("巴黎的猫", ["paris.jpg"], ["place"]),
        ("photos from 2019", ["tokyo.jpg"], ["date"]),
        ("东京 2019年", ["tokyo.jpg"], ["place", "date"]),
        ("杭州 2024年5月", ["west-lake.heic"], ["place", "date"]),
    ],
)
def test_queries_that_name_a_time_or_place(library, query, names, kinds):
    _, env, _ = library
    result = _cli(env, "search", query, "-k", "10")
    assert _names(result) == names, result["filters"]
    assert sorted(u["kind"] for u in result["filters"]["understood"]) == sorted(kinds)
    literal = _cli(env, "search", query, "-k", "10", "--literal")
    assert literal["filters"]["understood"] == [] and len(literal["hits"]) == 4


def test_the_api_takes_the_same_filters(library):
    _, _, uri = library
    settings = Settings(uri=uri)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        res = client.get("/api/v1/search", params={"q": "cat", "place": "Paris"})
        assert res.status_code == 200 and [h["filename"] for h in res.json()["hits"]] == [
            "paris.jpg"
        ]
        hit = res.json()["hits"][0]
        assert hit["taken_at"] == "2023-07-14T18:30:00" and hit["place"]["city"] == "Paris"
        assert hit["camera"] == "Apple iPhone 15 Pro" and hit["latitude"] == pytest.approx(PARIS[0])
        parsed = client.get("/api/v1/search", params={"q": "东京 2019年"}).json()
        assert [u["kind"] for u in parsed["filters"]["understood"]] == ["place", "date"]
        browse = client.get("/api/v1/browse", params={"after": "2019", "before": "2020"})
        assert [h["filename"] for h in browse.json()["hits"]] == ["tokyo.jpg"]
        for params in ({"after": "July"}, {"near": "1,2"}, {"place": "Xqzvplk"}):
            bad = client.get("/api/v1/browse", params=params)
            assert bad.status_code == 400 and "detail" in bad.json()


def test_a_folder_indexed_again_follows_its_files(library, tmp_path):
    photos, env, _ = library
    (photos / "trip" / "tokyo.jpg").rename(photos / "scans" / "tokyo-again.jpg")
    (photos / "scans" / "scan.png").unlink()
    try:
        report = _cli(env, "index", str(photos))
        assert report["moved"] == 1 and report["removed"] == [
            str((photos / "scans" / "scan.png").resolve())
        ]
        assert report["indexed"] == 1 and report["unchanged"] == 2
        everything = _cli(env, "search", "--after", "1990", "-k", "10")
        assert sorted(_names(everything)) == ["paris.jpg", "tokyo-again.jpg", "west-lake.heic"]
    finally:
        (photos / "scans" / "tokyo-again.jpg").rename(photos / "trip" / "tokyo.jpg")
