"""OCR with the real engine (RapidOCR, the models in its wheel) on photos with text written
on them (``tests/textphotos.py``): a sample of what ``bench/ocr.py`` measures on 200."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from mmsearch import MMSearch, Settings
from mmsearch.api import create_app
from mmsearch.cli import app
from mmsearch.ocr import OcrEngine, normalize

from . import textphotos

pytestmark = pytest.mark.datasets

N = 20


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    return OcrEngine.shared()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[textphotos.TextPhoto]:
    fonts = textphotos.available_fonts()
    if not any(zh for _, zh, _ in fonts.values()):
        pytest.skip("no Chinese font installed (Debian: fonts-wqy-zenhei)")
    return textphotos.make_corpus(tmp_path_factory.mktemp("textphotos"), N, seed=7)


def open_rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def test_shared_engine_is_loaded_once(engine: OcrEngine):
    assert OcrEngine.shared() is engine


def test_reads_the_phrases_written_on_photos(engine: OcrEngine, corpus):
    results = engine.read([open_rgb(r.path) for r in corpus])
    found = [
        normalize(p) in normalize(res.text)
        for rec, res in zip(corpus, results, strict=True)
        for p in rec.phrases
    ]
    words = [
        w in normalize(res.text)
        for rec, res in zip(corpus, results, strict=True)
        for w in rec.words
    ]
    assert sum(found) / len(found) >= 0.8, [
        (r.phrases, res.text) for r, res in zip(corpus, results, strict=True)
    ]
    assert not words or sum(words) / len(words) >= 0.8
    assert all(0.0 < res.confidence <= 1.0 for res in results if res.text)


def test_text_free_copies_do_not_read_their_twins_phrases(engine: OcrEngine, corpus):
    results = engine.read([open_rgb(r.plain_path) for r in corpus])
    twins = [
        p
        for rec, res in zip(corpus, results, strict=True)
        for p in rec.phrases
        if normalize(p) in normalize(res.text)
    ]
    assert twins == []


def test_gate_passes_photos_with_text(engine: OcrEngine, corpus):
    passed = engine.has_text([open_rgb(r.path) for r in corpus])
    assert sum(passed) >= 0.9 * len(corpus)
    paper = Image.new("RGB", (640, 480), (250, 250, 250))
    assert engine.has_text([paper]) == [False]
    assert engine.read([paper])[0].detected is False
    # The detector sees faint "text" in a flat dark blue (the gate lets it through, a
    # false alarm that costs a read); reading finds nothing there.
    sky = Image.new("RGB", (640, 480), (90, 140, 200))
    assert engine.read([sky])[0].text == ""


def test_a_sign_reads_in_order_chinese_without_spaces_english_with(engine: OcrEngine):
    font_path = textphotos.available_fonts().get("wqy-zenhei", ("",))[0]
    if not font_path:
        pytest.skip("fonts-wqy-zenhei is not installed")
    font = ImageFont.truetype(font_path, 40)
    sign = Image.new("RGB", (640, 320), (250, 250, 245))
    draw = ImageDraw.Draw(sign)
    draw.text((40, 40), "营业时间", font=font, fill=(20, 20, 20))
    draw.text((330, 40), "火锅", font=font, fill=(20, 20, 20))  # a gap between words
    draw.text((40, 140), "Open 24 hours", font=font, fill=(180, 20, 20))
    draw.text((40, 230), "Invoice", font=font, fill=(20, 20, 120))
    result = engine.read([sign])[0]
    assert result.text == "营业时间火锅\nOpen 24 hours\nInvoice"
    assert len(result.boxes) == len(result.lines) >= 3


# -- through the product: index, the OCR pass, fused search ----------------------------------

CORPUS_N = 12


@pytest.fixture(scope="module", params=["lite", "embedded"])
def where(request, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh collection on Milvus Lite and on the embedded Milvus 2.3 server."""
    if request.param == "lite":
        return {"uri": str(tmp_path_factory.mktemp("lite") / "ocr.db"), "collection": "ocr"}
    base = request.getfixturevalue("embedded_server")
    return {"uri": f"embedded:{base}", "collection": f"ocr_{uuid.uuid4().hex[:12]}"}


@pytest.fixture(scope="module")
def text_library(where, cache_dir: Path, corpus_dir: Path):
    """The corpus's photos with their text-free twins, indexed with the OCR pass on."""
    with MMSearch(settings=Settings(**where, cache_dir=cache_dir, ocr=True)) as mm:
        report = mm.index(corpus_dir)
        assert report.indexed == 2 * CORPUS_N and not report.failed, report
        assert report.ocr is not None and report.ocr.read == 2 * CORPUS_N
        yield mm


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fonts = textphotos.available_fonts()
    if not any(zh for _, zh, _ in fonts.values()):
        pytest.skip("no Chinese font installed (Debian: fonts-wqy-zenhei)")
    root = tmp_path_factory.mktemp("textlibrary")
    textphotos.make_corpus(root, CORPUS_N, seed=11)
    return root


def _rank_of(hits, path: Path) -> int:
    names = [Path(h.origin).resolve() for h in hits]
    return names.index(path.resolve()) if path.resolve() in names else len(hits)


def test_photos_are_found_by_the_text_written_on_them(text_library, corpus_dir: Path):
    truth = textphotos.load_truth(corpus_dir)
    phrases = [(rec, p) for rec in truth for p in rec.phrases]
    words = [(rec, w) for rec in truth for w in rec.words]
    first: dict[str, list[bool]] = {"phrase": [], "word": []}
    for kind, queries in (("phrase", phrases), ("word", words)):
        for rec, query in queries:
            results = text_library.find(query, k=10, parse=False)
            hits = results.hits
            assert results.ranking == "fused"
            mine, twin = _rank_of(hits, rec.path), _rank_of(hits, rec.plain_path)
            first[kind].append(mine == 0)
            assert mine <= twin, (query, [h.origin for h in hits])  # never below its twin
            if mine < len(hits):
                assert hits[mine].why["matched_by"] in ("lexical", "both")
                spans = [m for m in hits[mine].why["matches"] if m["field"] == "ocr_text"]
                assert all(hits[mine].ocr_text[m["start"] : m["end"]] == m["text"] for m in spans)
    assert sum(first["phrase"]) / len(phrases) >= 0.9, first
    assert not words or sum(first["word"]) / len(words) >= 0.8, first


def test_pure_vector_and_pure_lexical_rankings(text_library, corpus_dir: Path):
    rec = next(r for r in textphotos.load_truth(corpus_dir) if r.phrases)
    lexical = text_library.find(rec.phrases[0], k=5, ranking="lexical", parse=False)
    assert lexical.hits and all(h.why["matched_by"] == "lexical" for h in lexical.hits)
    assert [h.score for h in lexical.hits] == sorted((h.score for h in lexical.hits), reverse=True)
    vector = text_library.find(rec.phrases[0], k=5, ranking="vector", parse=False)
    assert len(vector.hits) == 5 and all(h.why["matched_by"] == "vector" for h in vector.hits)


def test_the_ocr_pass_resumes_and_a_moved_photo_keeps_its_text(
    tmp_path: Path, cache_dir: Path, corpus_dir: Path
):
    photos = tmp_path / "photos"
    shutil.copytree(corpus_dir / "text", photos)
    settings = Settings(uri=str(tmp_path / "e.db"), cache_dir=cache_dir, ocr=False)
    with MMSearch(settings=settings) as mm:
        assert mm.index(photos).ocr is None
        first = mm.enrich_ocr(limit=5)
        assert (first.pending, first.read) == (5, 5)  # stopped after 5: the rest waits
        rest = mm.enrich_ocr()
        assert (rest.pending, rest.read) == (CORPUS_N - 5, CORPUS_N - 5)
        assert mm.enrich_ocr().pending == 0  # nothing is read twice
        read = {Path(i.origin).name: i.ocr_text for i in mm.store.iter_items()}
        assert sum(1 for t in read.values() if t) >= 0.9 * CORPUS_N
        name = next(n for n, t in read.items() if t)
        (photos / name).rename(photos / f"moved-{name}")
        report = mm.index(photos, ocr=True)
        assert report.moved == 1 and report.ocr is not None and report.ocr.pending == 0
        moved = {Path(i.origin).name: i.ocr_text for i in mm.store.iter_items()}
        assert moved[f"moved-{name}"] == read[name]


# -- the CLI and the HTTP API on a library read by OCR ----------------------------------------


@pytest.fixture(scope="module")
def lite_library(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, corpus_dir: Path):
    """The corpus's text photos in a Lite file, indexed by the CLI with --ocr."""
    root = tmp_path_factory.mktemp("cli-ocr")
    env = {"MMSEARCH_URI": str(root / "t.db"), "MMSEARCH_CACHE_DIR": str(cache_dir)}
    res = CliRunner().invoke(app, ["index", str(corpus_dir / "text"), "--ocr", "--json"], env=env)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ocr"]["read"] == CORPUS_N and report["ocr"]["with_text"] >= CORPUS_N - 1
    return env


def _phrase(env: dict[str, str]) -> tuple[str, str]:
    """A phrase without spaces that OCR read on exactly one photo, and that photo's name."""
    settings = Settings(uri=env["MMSEARCH_URI"], cache_dir=Path(env["MMSEARCH_CACHE_DIR"]))
    with MMSearch(settings=settings) as mm:
        texts = {Path(i.origin).name: normalize(i.ocr_text) for i in mm.store.iter_items()}
    for line in sorted({ln for t in texts.values() for ln in t.split() if len(ln) >= 4}):
        holders = [name for name, text in texts.items() if line in text]
        if len(holders) == 1:
            return line, holders[0]
    raise AssertionError(f"no phrase read on one photo only: {texts}")


def test_cli_ranking_cutoff_and_why(lite_library):
    phrase, name = _phrase(lite_library)
    cli = CliRunner()
    res = cli.invoke(app, ["search", phrase, "--json", "--cutoff", "auto"], env=lite_library)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ranking"] == "fused" and out["hits"] and len(out["hits"]) + len(out["more"]) == 10
    top = out["hits"][0]
    assert Path(top["origin"]).name == name
    assert any(m["field"] == "ocr_text" for m in top["why"]["matches"]), top["why"]
    res = cli.invoke(app, ["search", phrase, "--ranking", "lexical", "-k", "3"], env=lite_library)
    assert res.exit_code == 0 and "words found" in res.stdout and "text:" in res.stdout
    res = cli.invoke(app, ["search", phrase, "--ranking", "bm25"], env=lite_library)
    assert res.exit_code == 1 and res.output.startswith("error: ranking must be one of")
    assert "Traceback" not in res.output and "QUERY" not in res.output
    res = cli.invoke(app, ["enrich", "ocr", "--json"], env=lite_library)
    assert res.exit_code == 0 and json.loads(res.stdout)["pending"] == 0  # all read already


def test_api_ranking_cutoff_and_why(lite_library):
    phrase, name = _phrase(lite_library)
    settings = Settings(uri=lite_library["MMSEARCH_URI"], cache_dir=cache_dir_of(lite_library))
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        res = client.get("/api/v1/search", params={"q": phrase, "k": 10, "cutoff": "auto"})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["ranking"] == "fused" and len(body["hits"]) + len(body["more"]) == 10
        top = body["hits"][0]
        assert top["filename"] == name and normalize(phrase) in normalize(top["ocr_text"])
        spans = [m for m in top["why"]["matches"] if m["field"] == "ocr_text"]
        assert spans and all(top["ocr_text"][m["start"] : m["end"]] == m["text"] for m in spans)
        assert "origin" not in top  # no folder disclosed
        res = client.get("/api/v1/search", params={"q": phrase, "ranking": "vector"})
        assert res.json()["hits"][0]["why"]["matched_by"] == "vector"
        for bad in ({"ranking": "bm25"}, {"cutoff": "sometimes"}):
            res = client.get("/api/v1/search", params={"q": phrase, **bad})
            assert res.status_code == 422 and "detail" in res.json()


def cache_dir_of(env: dict[str, str]) -> Path:
    return Path(env["MMSEARCH_CACHE_DIR"])


def test_the_demo_finds_a_word_printed_on_a_sample_photo(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"MMSEARCH_OCR": "1", "MMSEARCH_CACHE_DIR": str(cache_dir)}
    res = CliRunner().invoke(app, ["demo", "-k", "1"], env=env)
    assert res.exit_code == 0, res.output
    section = res.stdout.split("text2image: segmentation", 1)[1].split("text2", 1)[0]
    assert "page.png" in section  # scikit-image's scanned page says "Region-based segmentation"
    assert "text read in 15 photos" in res.stdout


def test_an_uploaded_photo_is_searchable_by_its_text(tmp_path, cache_dir, corpus_dir: Path):
    """Indexing over HTTP reads the text too (with the lock held only around store calls)."""
    token = "t" * 32
    settings = Settings(
        uri=str(tmp_path / "up.db"),
        cache_dir=cache_dir,
        ocr=True,
        api_token=token,
        upload_dir=tmp_path / "uploads",
    )
    recs = [r for r in textphotos.load_truth(corpus_dir) if r.lang == "zh" and r.words][:3]
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        files = [
            ("files", (f"s{i}.jpg", r.path.read_bytes(), "image/jpeg")) for i, r in enumerate(recs)
        ]
        headers = {"Authorization": f"Bearer {token}"}
        res = client.post("/api/v1/index/upload", files=files, headers=headers)
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["indexed"] == len(recs) and body["ocr"]["read"] == len(recs), body
        found = client.get("/api/v1/browse", headers=headers).json()["hits"]
        word, name = next(
            (w, h["filename"])
            for h in found
            for w in sum((r.words for r in recs), [])
            if w in h["ocr_text"]
        )
        hits = client.get("/api/v1/search", params={"q": word}, headers=headers).json()["hits"]
        assert word in hits[0]["ocr_text"] and hits[0]["why"]["matched_by"] != "vector", name
