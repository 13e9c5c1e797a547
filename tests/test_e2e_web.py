"""End to end: the real server on loopback, Debian's Chromium driven by Playwright.

Screenshots of each step go to $MMSEARCH_SCREENSHOT_DIR (the README's come from here) or to
the test's temp folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from mmsearch import MMSearch, Settings

from . import textphotos
from .conftest import LION, TRIP, serving
from .test_duplicates import family_of, write_library

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.datasets,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)"
    ),
]
playwright_sync = pytest.importorskip("playwright.sync_api")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _thumbnails_loaded(page, n: int = 12) -> None:
    """Wait until the first n result thumbnails are decoded, so screenshots show them."""
    page.wait_for_function(
        """n => [...document.querySelectorAll('.card img')].slice(0, n)
                 .every(img => img.complete && img.naturalWidth > 0)""",
        arg=n,
        timeout=60_000,
    )


@contextlib.contextmanager
def browser_page(url: str) -> Iterator[Any]:
    """Debian's Chromium, headless, on a 1280x860 page at ``url``."""
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url)
            yield page
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("MMSEARCH_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_search_upload_and_more_like_this_in_a_browser(server, shots, tmp_path):
    with browser_page(server) as page:
        page.wait_for_selector(f"#status:has-text('{100 + len(TRIP)} images indexed')")

        # 1. Type 狮子: a lion is among the results.
        page.fill("#q", "狮子")
        page.press("#q", "Enter")
        page.wait_for_selector(".card")
        labels = page.locator(".card .label").all_inner_texts()
        assert "lion" in labels[:5], labels
        _thumbnails_loaded(page)
        page.screenshot(path=str(shots / "1-text-search.png"))

        # 2. Upload the lion photo: results appear, the lion first.
        query = tmp_path / "lion query.jpg"
        shutil.copy(LION, query)
        page.set_input_files("#file", str(query))
        page.wait_for_selector("#status:has-text('image2image')")
        labels = page.locator(".card .label").all_inner_texts()
        assert labels and labels[0] == "lion", labels
        assert page.locator("#query-preview img").is_visible()
        _thumbnails_loaded(page)
        page.screenshot(path=str(shots / "2-image-search.png"))

        # 3. Open a result large, then "More like this".
        page.locator(".card").nth(1).click()
        page.wait_for_selector("#viewer[open]")
        opened = page.locator("#viewer-desc").inner_text()
        assert opened
        page.wait_for_function("document.querySelector('#viewer-img').naturalWidth > 0")
        page.screenshot(path=str(shots / "3-viewer.png"))
        first_before = page.locator(".card").first.get_attribute("data-id")
        second_id = page.locator(".card").nth(1).get_attribute("data-id")
        page.click("#more-like-this")
        page.wait_for_function(
            "id => document.querySelector('.card')?.dataset.id === id", arg=second_id
        )
        assert page.locator(".card").first.get_attribute("data-id") != first_before
        assert page.locator(".card").count() > 1
        _thumbnails_loaded(page)
        page.screenshot(path=str(shots / "4-more-like-this.png"))

        # 5. A query that names a place and a time: only the trip's Paris photos, with the
        # filters it understood as chips; removing the date chip keeps the place.
        page.fill("#q", "dog 巴黎 2023年7月")
        page.press("#q", "Enter")
        page.wait_for_selector(".chip[data-kind='date']")
        chips = page.locator(".chip").all_inner_texts()
        assert any("巴黎" in c for c in chips) and any("2023年7月" in c for c in chips), chips
        cards = page.locator(".card .when").all_inner_texts()
        assert cards and all("2023-07" in c and "Paris" in c for c in cards), cards
        assert page.locator(".card .label").first.inner_text() == "trip"
        _thumbnails_loaded(page, len(cards))
        page.screenshot(path=str(shots / "5-place-and-date.png"))
        page.click(".chip[data-kind='date'] button")
        page.wait_for_function("() => !document.querySelector(\".chip[data-kind='date']\")")
        page.wait_for_selector(".chip[data-kind='place']")
        assert page.input_value("#q") == "dog 巴黎"

        # Errors are shown, not swallowed. Switching the mode back re-runs the
        # typed query (狮子); its answer arrives after the error and must not hide it.
        page.select_option("#mode", "text2image")
        page.fill("#q", "   ")
        page.press("#q", "Enter")
        page.wait_for_selector("#status.error")
        page.wait_for_timeout(2000)
        assert "error" in (page.locator("#status").get_attribute("class") or "")


#: The duplicates page's photos: two originals with their copies, and another lion.
DUP_ORIGINALS = ["lion", "goldfish"]
DUP_FILES = len(DUP_ORIGINALS) * 6 + 1 + 1


@pytest.fixture(scope="module")
def dup_server(tmp_path_factory, cache_dir):
    """`mmsearch serve` over a Lite file of photos with copies (``write_library``)."""
    root = tmp_path_factory.mktemp("e2e-dups")
    photos = write_library(root / "photos", DUP_ORIGINALS, {"lion": "n02129165_lion.JPEG"})
    uri = str(root / "dups.db")
    with MMSearch(settings=Settings(uri=uri, collection="dups", cache_dir=cache_dir)) as mm:
        assert mm.index(photos).indexed == DUP_FILES
    env = {"MMSEARCH_URI": uri, "MMSEARCH_COLLECTION": "dups", "MMSEARCH_CACHE_DIR": str(cache_dir)}
    with serving(env, root) as (base, _):
        yield base


def _filenames(base: str, ids: list[str | None]) -> list[str]:
    return [httpx.get(f"{base}/api/v1/items/{i}").json()["filename"] for i in ids]


def test_duplicates_button_shows_each_set_side_by_side(dup_server, shots):
    with browser_page(dup_server) as page:
        page.wait_for_selector(f"#status:has-text('{DUP_FILES} images indexed')")
        page.click("#show-duplicates")
        page.wait_for_selector(".group")
        page.wait_for_selector("#status:has-text('sets of duplicates')")
        assert page.locator(".group").count() == len(DUP_ORIGINALS)
        lion = page.locator(".group").first
        assert lion.locator("h3").inner_text() == "7 copies · mixed"
        figures = lion.locator("figure")
        assert figures.count() == 7
        assert figures.first.get_attribute("data-kind") == "representative"
        assert "lion.jpg" in figures.first.inner_text() and "kept" in figures.first.inner_text()
        kinds = [figures.nth(i).get_attribute("data-kind") for i in range(1, 7)]
        assert sorted(kinds) == ["exact"] + ["near"] * 5
        first, second = figures.nth(0).bounding_box(), figures.nth(1).bounding_box()
        assert first and second and first["y"] == second["y"] and second["x"] > first["x"]
        ids = [figures.nth(i).get_attribute("data-id") for i in range(7)]
        assert {family_of(n) for n in _filenames(dup_server, ids)} == {"lion"}
        page.wait_for_function(
            "() => [...document.querySelectorAll('.group img')]"
            ".every(img => img.complete && img.naturalWidth > 0)",
            timeout=60_000,
        )
        page.screenshot(path=str(shots / "6-duplicates.png"))


def test_collapse_checkbox_shows_each_photo_once(dup_server, shots):
    with browser_page(dup_server) as page:
        page.wait_for_selector(f"#status:has-text('{DUP_FILES} images indexed')")
        page.fill("#q", "狮子")
        page.press("#q", "Enter")
        page.wait_for_selector("#status:has-text('text2image')")
        ids = page.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.id)")
        families = [family_of(n) for n in _filenames(dup_server, ids)]
        assert families.count("lion") == 7 and page.locator(".card .copies").count() == 0

        page.check("#f-collapse")  # the filters re-run the search
        page.wait_for_selector(".card .copies")
        ids = page.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.id)")
        shown = [family_of(n) for n in _filenames(dup_server, ids)]
        assert shown[0] == "lion" and len(shown) == len(set(shown)), shown
        if page.locator("#show-more").count():  # past the relevance cutoff: the goldfish
            page.click("#show-more")
        ids = page.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.id)")
        families = [family_of(n) for n in _filenames(dup_server, ids)]
        assert sorted(families) == ["goldfish", "lion", "other-lion"], families
        assert families[: len(shown)] == shown
        lion = page.locator(".card").nth(families.index("lion"))
        assert lion.locator(".copies").inner_text() == "+6 duplicates"
        _thumbnails_loaded(page, len(families))
        page.screenshot(path=str(shots / "7-collapsed.png"))


SIGN = "火锅"  # hot pot, on a restaurant's sign


@pytest.fixture(scope="module")
def text_server(tmp_path_factory, cache_dir):
    """`mmsearch serve` over photos read by OCR: five photos and one with a sign saying 火锅."""
    font = textphotos.available_fonts().get("wqy-zenhei", ("",))[0]
    if not font:
        pytest.skip("fonts-wqy-zenhei is not installed")
    root = tmp_path_factory.mktemp("e2e-text")
    photos = root / "photos"
    photos.mkdir()
    sources = sorted(textphotos.dataset_photos())[:6]
    for source in sources[1:]:
        shutil.copyfile(source, photos / source.name)
    sign = Image.open(sources[0]).convert("RGB")
    draw = ImageDraw.Draw(sign)
    draw.rectangle((30, 30, 290, 130), fill=(180, 20, 20))
    draw.text((50, 40), f"{SIGN}城", font=ImageFont.truetype(font, 72), fill=(255, 240, 200))
    sign.save(photos / "restaurant.jpg", quality=92)
    uri = str(root / "text.db")
    settings = Settings(uri=uri, collection="text", cache_dir=cache_dir, ocr=True)
    with MMSearch(settings=settings) as mm:
        report = mm.index(photos)
        assert report.indexed == 6 and report.ocr is not None and report.ocr.with_text >= 1
    env = {"MMSEARCH_URI": uri, "MMSEARCH_COLLECTION": "text", "MMSEARCH_CACHE_DIR": str(cache_dir)}
    with serving(env, root) as (base, _):
        yield base


def test_a_chinese_word_on_a_photo_finds_it_with_the_word_highlighted(text_server, shots):
    with browser_page(text_server) as page:
        page.wait_for_selector("#status:has-text('6 images indexed')")
        page.fill("#q", SIGN)
        page.press("#q", "Enter")
        page.wait_for_selector("#status:has-text('text2image')")
        first = page.locator(".card").first
        assert first.get_attribute("data-matched-by") in ("lexical", "both")
        assert first.locator(".ocr mark").first.inner_text() == SIGN
        assert _filenames(text_server, [first.get_attribute("data-id")]) == ["restaurant.jpg"]
        # The cutoff shows what is relevant; the rest waits behind "Show N more".
        shown = page.locator(".card").count()
        more = page.locator("#show-more")
        if more.count():
            hidden = int(more.inner_text().split()[1])
            more.click()
            assert page.locator(".card").count() == shown + hidden
        _thumbnails_loaded(page, page.locator(".card").count())
        page.screenshot(path=str(shots / "8-text-in-photo.png"))
