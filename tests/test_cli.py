"""The `mmsearch` command as a user runs it: JSON output, tables, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from mmsearch.cli import app

from .conftest import LION, REVERSE

pytestmark = pytest.mark.datasets


@pytest.fixture
def runner(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("MMSEARCH_URI", str(tmp_path / "cli.db"))
    monkeypatch.setenv("MMSEARCH_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    for label in ("lion", "Afghan_hound", "pizza"):
        (folder / label).mkdir(parents=True)
        src = next((REVERSE / "test" / label).iterdir())
        shutil.copy(src, folder / label / src.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return folder


def test_index_search_stats_as_json(runner, photos):
    res = runner.invoke(app, ["index", str(photos), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["indexed"] == 3 and report["total"] == 4
    assert report["failed"][0]["path"].endswith("broken.jpg")

    res = runner.invoke(app, ["search", "狮子", "--json", "-k", "2"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)["hits"]
    assert len(hits) == 2 and hits[0]["label"] == "lion"

    res = runner.invoke(app, ["search", "--image", str(LION), "--mode", "image2text", "--json"])
    assert json.loads(res.stdout)["hits"][0]["label"] == "lion"

    res = runner.invoke(app, ["stats", "--json"])
    stats = json.loads(res.stdout)
    assert stats["count"] == 3 and stats["embedder"].startswith("offline")


def test_tables_by_default(runner, photos):
    runner.invoke(app, ["index", str(photos)])
    res = runner.invoke(app, ["search", "pizza", "--mode", "text2text", "-k", "1"])
    assert res.exit_code == 0
    assert "text2text: pizza" in res.stdout and "披萨" in res.stdout


def test_search_before_indexing_is_a_clear_error(runner):
    res = runner.invoke(app, ["search", "狮子"])
    assert res.exit_code == 1
    assert "does not exist" in res.output and "mmsearch index" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search"], "either a text query or --image"),
        (["search", "x", "--image", "q.jpg"], "not both"),
        (["search", "--after", "July"], "not a date"),
        (["search", "--near", "48.8,2.3"], "LAT,LON,RADIUS"),
        (["search", "x", "--orientation", "round"], "orientation must be"),
        (["search", "x", "--mode", "image2image"], "takes an image"),
        (["search", "--image", "q.jpg", "--mode", "text2text"], "takes a text query"),
        (["search", "x", "-k", "0"], "k must be between 1 and 1000"),
        (["index", "/no/such/folder"], "no such file"),
    ],
)
def test_bad_invocations(runner, args, message):
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and message in res.output


def test_other_provider_on_existing_collection_is_refused(runner, photos):
    runner.invoke(app, ["index", str(photos)])
    res = runner.invoke(app, ["--embedder", "nope", "search", "x"])
    assert res.exit_code == 1 and "unknown embedder 'nope'" in res.output


def test_demo_runs_the_four_searches(runner):
    res = runner.invoke(app, ["demo", "-k", "2"])
    assert res.exit_code == 0, res.output
    for mode in ("text2image: 棕色的狗", "text2text: 棕色的狗", "image2image:", "image2text:"):
        assert mode in res.stdout
    assert "15 indexed" in res.stdout
    assert "chelsea" in res.stdout
    # Searches the sample can answer come first; the reference query is explained.
    assert "text2image: 一只猫" in res.stdout and "hold no dog" in res.stdout


def test_eval_uses_the_configured_store_and_names_its_collections(runner, photos, tmp_path):
    res = runner.invoke(app, ["eval", str(photos), "--json"])
    assert res.exit_code == 0, res.output
    ingest = json.loads(res.stdout)["ingest"]
    assert ingest[str(photos)]["collection"] == "mmsearch"
    assert (tmp_path / "cli.db").exists()  # MMSEARCH_URI, not a throwaway file
    stats = runner.invoke(app, ["stats", "--json"])
    assert json.loads(stats.stdout)["count"] == 3


def test_dry_run_says_what_a_cloud_run_costs_and_changes_nothing(runner, tmp_path, monkeypatch):
    from .conftest import DATASETS

    monkeypatch.setenv("MMSEARCH_PROVIDER", "dashscope")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-not-used")
    folder = DATASETS / "imagenet_sample" / "images"
    res = runner.invoke(app, ["index", str(folder), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("1,000 files to index") and "requests" in res.stdout
    assert "CNY" in res.stdout and "120 requests/min" in res.stdout
    res = runner.invoke(app, ["index", str(folder), "--dry-run", "--json"])
    plan = json.loads(res.stdout)
    assert plan["files"] == 1000 and plan["requests"] >= 2000 and plan["seconds"] > 0
    assert not (tmp_path / "cli.db").exists()  # no store was created


def test_dry_run_counts_only_files_not_indexed_yet(runner, photos):
    runner.invoke(app, ["index", str(photos)])
    (photos / "new").mkdir()
    shutil.copy(LION, photos / "new" / "lion2.jpg")
    res = runner.invoke(app, ["index", str(photos), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["files"] == 2  # the new photo, and the broken one again
