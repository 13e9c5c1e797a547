"""Query checks and the four modes, with fake providers on the in-memory store."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mmsearch import MMSearch
from mmsearch.search import MAX_K, Mode, QueryError, check_query

from ..fakes import colour_image

IMAGE = Image.new("RGB", (4, 4))


@pytest.mark.parametrize(
    ("query", "mode", "k", "paths", "expected"),
    [
        ("red", None, 10, False, Mode.text2image),
        (IMAGE, None, 10, False, Mode.image2image),
        (Path("q.jpg"), "image2text", 10, False, Mode.image2text),
        ("q.jpg", "image2image", 10, True, Mode.image2image),
        ("red", "text2text", MAX_K, False, Mode.text2text),
    ],
)
def test_valid_queries(query, mode, k, paths, expected):
    assert check_query(query, mode, k, paths=paths) is expected


@pytest.mark.parametrize(
    ("query", "mode", "k", "message"),
    [
        ("", None, 10, "empty"),
        ("   ", "text2text", 10, "empty"),
        ("red", None, 0, "between 1 and"),
        ("red", None, MAX_K + 1, "between 1 and"),
        ("red", "sideways", 10, "unknown mode"),
        ("q.jpg", "image2image", 10, "takes an image"),  # a path only where paths are allowed
        (IMAGE, "text2text", 10, "takes a text"),
        (None, "text2image", 10, "takes a text"),
    ],
)
def test_invalid_queries(query, mode, k, message):
    with pytest.raises(QueryError, match=message):
        check_query(query, mode, k)


@pytest.fixture
def library(settings, photos):
    with MMSearch(settings=settings) as mm:
        mm.index(photos)
        yield mm, photos


def test_the_four_modes(library):
    mm, photos = library
    assert Path(mm.search("red", k=1)[0].origin).name == "red.png"
    assert mm.search("a green picture", mode="text2text", k=1)[0].description == "a green picture"
    blue = colour_image("blue")
    assert Path(mm.search(blue, k=1)[0].origin).name == "blue.png"
    assert mm.search(blue, mode="image2text", k=1)[0].description == "a blue picture"
    by_path = mm.search(str(photos / "warm" / "yellow.png"), mode="image2image", k=1)
    assert Path(by_path[0].origin).name == "yellow.png"


def test_filters_and_more_like_this(library):
    mm, _ = library
    warm = mm.search("blue", k=10, filter='label == "warm"')
    assert {Path(h.origin).stem for h in warm} == {"red", "yellow"}
    red = mm.search("red", k=1)[0]
    assert mm.more_like_this(red.id, k=1)[0].id == red.id
    with pytest.raises(QueryError, match="no item"):
        mm.more_like_this("0" * 24)


def test_an_unreadable_query_image_is_a_query_error(library, tmp_path):
    mm, _ = library
    bad = tmp_path / "bad.png"
    bad.write_text("no")
    with pytest.raises(QueryError, match="not an image"):
        mm.search(str(bad), mode="image2image")
