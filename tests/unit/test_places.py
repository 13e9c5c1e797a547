"""The gazetteer (places.py) on its packaged data: where points are, what names mean, and
which places a search query names, in English and Chinese, hits and non-hits."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmsearch.places import Gazetteer, Location

PARIS, NEW_YORK_CITY, TOKYO, HANGZHOU = "2988507", "5128581", "1850147", "1808926"


@pytest.fixture(scope="module")
def gaz() -> Gazetteer:
    return Gazetteer()


# -- locate --------------------------------------------------------------------------------


def _where(loc: Location | None) -> tuple[str, str, str] | None:
    if loc is None:
        return None
    return loc.city.name, loc.region.code if loc.region else "", loc.country.code


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        # Paris, not the suburb "Paris 07 Palais-Bourbon" whose centre is nearer
        ((48.8584, 2.2945), ("Paris", "FR.11", "FR")),
        ((48.8049, 2.1204), ("Versailles", "FR.11", "FR")),
        ((40.7580, -73.9855), ("New York City", "US.NY", "US")),  # Times Square
        ((35.6628, 139.7314), ("Tokyo", "JP.40", "JP")),  # Roppongi
        ((30.2418, 120.1500), ("Hangzhou", "CN.02", "CN")),  # West Lake
        ((-33.8568, 151.2153), ("Sydney", "AU.02", "AU")),  # the Opera House
    ],
)
def test_locate_picks_the_city_people_would_name(gaz, point, expected):
    assert _where(gaz.locate(*point)) == expected


def test_locate_gives_english_and_chinese_names_and_codes(gaz):
    loc = gaz.locate(48.8584, 2.2945)
    assert (loc.city.kind, loc.city.code, loc.city.name_zh) == ("city", PARIS, "巴黎")
    assert (loc.region.kind, loc.region.name, loc.region.name_zh) == (
        "region",
        "Île-de-France",
        "法兰西岛",
    )
    assert (loc.country.kind, loc.country.name, loc.country.name_zh) == (
        "country",
        "France",
        "法国",
    )
    assert loc.city.country_code == "FR" and loc.city.latitude == pytest.approx(48.853, abs=0.01)


@pytest.mark.parametrize(
    "point",
    [(0.0, -30.0), (-60.0, -140.0), (float("nan"), 2.0), (91.0, 0.0), (0.0, 181.0), ("x", 1)],
)
def test_locate_mid_ocean_and_invalid_points_is_none(gaz, point):
    assert gaz.locate(*point) is None


def test_a_remote_point_takes_the_nearest_city_within_150_km(gaz):
    loc = gaz.locate(36.0544, -112.1401)  # Grand Canyon Village: no town within 30 km
    assert _where(loc) == ("Flagstaff", "US.AZ", "US")
    assert 100 < loc.city_km < 150  # the caller may keep only the region and country
    assert gaz.locate(48.8584, 2.2945).city_km < 5


# -- find ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "code"),
    [
        ("Paris", "city", PARIS),
        ("PARIS", "city", PARIS),
        ("巴黎", "city", PARIS),
        ("紐約", "city", NEW_YORK_CITY),
        ("纽约", "city", NEW_YORK_CITY),
        ("New York", "city", NEW_YORK_CITY),  # before the state that holds it
        ("東京", "city", TOKYO),
        ("杭州", "city", HANGZHOU),
        ("日本", "country", "JP"),
        ("Japan", "country", "JP"),
        ("法国", "country", "FR"),
        ("USA", "country", "US"),
        ("UK", "country", "GB"),
        ("California", "region", "US.CA"),
        ("加州", "region", "US.CA"),
        ("浙江", "region", "CN.02"),
        ("浙江省", "region", "CN.02"),
        ("sao paulo", "city", "3448439"),
        ("München", "city", "2867714"),  # a native spelling of a big city
        ("Peking", "city", "1816670"),  # an old name
    ],
)
def test_find_names_in_both_languages(gaz, name, kind, code):
    best = gaz.find(name)[0]
    assert (best.kind, best.code) == (kind, code)


def test_find_ranks_meanings_by_population(gaz):
    paris = gaz.find("Paris")
    assert paris[0].country_code == "FR" and "US" in {p.country_code for p in paris[1:]}
    assert [p.kind for p in gaz.find("New York")] == ["city", "region"]


@pytest.mark.parametrize("name", ["", "   ", "Xyzzy", "棕色的狗", "x"])
def test_find_unknown_names_is_empty(gaz, name):
    assert gaz.find(name) == []


# -- mentions ------------------------------------------------------------------------------


def _named(gaz: Gazetteer, text: str) -> list[tuple[str, str]]:
    return [(text[m.start : m.end], m.place.code) for m in gaz.mentions(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sunset in Nice", [("Nice", "2990440")]),
        ("photos from Bath", [("Bath", "2656173")]),
        ("Paris at night", [("Paris", PARIS)]),
        ("paris at night", [("paris", PARIS)]),  # a big city, written lower-case
        ("Versailles", [("Versailles", "2969679")]),  # the whole query
        ("photos from versailles", [("versailles", "2969679")]),  # after "from"
        ("trip to New York", [("New York", NEW_YORK_CITY)]),  # not "York"
        ("beach in japan", [("japan", "JP")]),
        ("Turkey 2019", [("Turkey", "TR")]),  # a country, capitalised first
        ("travel in China", [("China", "CN")]),
        ("road trip California, Oregon", [("California", "US.CA"), ("Oregon", "US.OR")]),
        ("san francisco fog", [("san francisco", "5391959")]),
        ("cape town harbour", [("cape town", "3369157")]),  # everyday words, a big city
        ("beaches of New Jersey", [("New Jersey", "US.NJ")]),
    ],
)
def test_english_mentions(gaz, text, expected):
    assert _named(gaz, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "nice sunset on the beach",
        "Nice sunset",  # capitalised only as the first word
        "orange cat",
        "Orange cat in a box",
        "reading a book",
        "split screen",
        "mobile phone",
        "bath time",
        "cork board",
        "wedding photos",
        "sunset at the beach",
        "la playa",
        "roast turkey",
        "china plates",
        "dog in nice weather",  # lower-case everyday word after "in"
        "phoenix tattoo",
        "long beach walk",
        "north west coast",
        "Central Park",
        "brown dog",
    ],
)
def test_english_everyday_words_are_not_places(gaz, text):
    assert gaz.mentions(text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("我在巴黎的照片", [("巴黎", PARIS)]),
        ("紐約的夜景", [("紐約", NEW_YORK_CITY)]),
        ("纽约的夜景", [("纽约", NEW_YORK_CITY)]),
        ("东京的樱花", [("东京", TOKYO)]),
        ("日本的寺庙", [("日本", "JP")]),
        ("法国南部的海边", [("法国", "FR")]),
        ("加州海滩", [("加州", "US.CA")]),
        ("浙江的山", [("浙江", "CN.02")]),
        ("杭州西湖", [("杭州", HANGZHOU)]),  # 西湖 alone is not a place
        ("中山市的夜景", [("中山市", "6986104")]),  # 中山 written in full
        ("洛杉矶的海滩", [("洛杉矶", "5368361")]),
        ("丽江古城", [("丽江", "1813253")]),
        ("巴黎和伦敦", [("巴黎", PARIS), ("伦敦", "2643743")]),
    ],
)
def test_chinese_mentions(gaz, text, expected):
    assert _named(gaz, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "花园里的猫",
        "西湖边的日落",
        "太平洋的日落",
        "新城的房子",
        "中山公园",
        "江南水乡",
        "棕色的狗",
    ],
)
def test_chinese_everyday_words_are_not_places(gaz, text):
    assert gaz.mentions(text) == []


def test_mention_offsets_point_into_the_original_text(gaz):
    text = "Photos: São Paulo and 東京"
    assert [text[m.start : m.end] for m in gaz.mentions(text)] == ["São Paulo", "東京"]


def test_a_query_that_names_no_place_does_not_load_the_places():
    fresh = Gazetteer()
    assert fresh.mentions("a brown dog on the grass") == []
    assert fresh._table is None  # only the list of names was read
    assert fresh.mentions("a brown dog in Paris")[0].place.code == PARIS
    assert fresh._table is not None


def test_traditional_names_work_in_a_fresh_gazetteer():
    assert Gazetteer().find("紐約")[0].code == NEW_YORK_CITY


def test_shared_is_one_gazetteer_per_process(tmp_path: Path):
    assert Gazetteer.shared(tmp_path) is Gazetteer.shared(tmp_path / "other")
