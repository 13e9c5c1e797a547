"""OCR with the real engine (RapidOCR, the models in its wheel) on photos with text written
on them (``tests/textphotos.py``): a sample of what ``bench/ocr.py`` measures on 200."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from mmsearch import MMSearch, Settings
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
