"""Queries that name a time or a place (``mmsearch.queryparse``).

The table in ``queries.tsv`` holds queries in English and Chinese with the filters and the
text expected of them, written down by hand; the real gazetteer (``mmsearch.places``) is
tried on place queries when it is there.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mmsearch.filters import Filters, Place
from mmsearch.queryparse import ParsedQuery, parse_query, warm_up

NOW = datetime(2026, 3, 15, 10, 0)  # a Sunday
TABLE = Path(__file__).with_name("queries.tsv")


@dataclass(frozen=True)
class FakeMention:
    start: int
    end: int
    place: Place


def _place(kind: str, code: str, name: str, name_zh: str, country: str) -> Place:
    return Place(kind, code, name, name_zh, country)


PARIS = _place("city", "2988507", "Paris", "巴黎", "FR")
BEIJING = _place("city", "1816670", "Beijing", "北京", "CN")
TOKYO = _place("city", "1850147", "Tokyo", "东京", "JP")
NEW_YORK = _place("city", "5128581", "New York City", "纽约", "US")
PLACES = {
    "Paris": PARIS,
    "巴黎": PARIS,
    "北京": BEIJING,
    "Beijing": BEIJING,
    "东京": TOKYO,
    "Tokyo": TOKYO,
    "New York": NEW_YORK,
    "纽约": NEW_YORK,
    "Japan": _place("country", "JP", "Japan", "日本", "JP"),
    "日本": _place("country", "JP", "Japan", "日本", "JP"),
    "杭州": _place("city", "1808926", "Hangzhou", "杭州", "CN"),
    "London": _place("city", "2643743", "London", "伦敦", "GB"),
    "上海": _place("city", "1796236", "Shanghai", "上海", "CN"),
}


class FakeFinder:
    """Finds the names of ``PLACES`` as written: the logic without the gazetteer."""

    def mentions(self, text: str) -> list[FakeMention]:
        found = []
        for name, place in PLACES.items():
            start = text.find(name)
            while start >= 0:
                found.append(FakeMention(start, start + len(name), place))
                start = text.find(name, start + 1)
        return sorted(found, key=lambda m: m.start)


@dataclass(frozen=True)
class Row:
    query: str
    now: datetime
    text: str
    taken_from: datetime | None
    taken_until: datetime | None
    places: tuple[str, ...]
    understood: tuple[tuple[str, str], ...]
    known: str


def _day(field: str) -> datetime | None:
    return None if field == "-" else datetime.fromisoformat(field)


def _rows() -> list[Row]:
    rows = []
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = (line.split("\t") + [""] * 8)[:8]
        query, now, text, lo, hi, places, understood, known = fields
        chips = (
            ()
            if understood == "-"
            else tuple(tuple(chip.split(":", 1)) for chip in understood.split(" | "))
        )
        rows.append(
            Row(
                query,
                NOW if now == "-" else datetime.fromisoformat(now),
                text,
                _day(lo),
                _day(hi),
                () if places == "-" else tuple(places.split(",")),
                chips,  # type: ignore[arg-type]
                known,
            )
        )
    return rows


ROWS = _rows()


def _as_row(row: Row, parsed: ParsedQuery) -> Row:
    filters = parsed.filters
    return Row(
        row.query,
        row.now,
        parsed.text,
        filters.taken_from,
        filters.taken_until,
        tuple(p.code for p in filters.places),
        filters.understood,
        row.known,
    )


def _exact(row: Row) -> bool:
    parsed = parse_query(row.query, places=FakeFinder(), now=row.now)
    return _as_row(row, parsed) == row


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(r, marks=pytest.mark.xfail(reason=r.known, strict=True) if r.known else ())
        for r in ROWS
    ],
    ids=[f"{r.query}@{r.now:%Y-%m-%d}" for r in ROWS],
)
def test_table(row: Row) -> None:
    parsed = parse_query(row.query, places=FakeFinder(), now=row.now)
    assert _as_row(row, parsed) == row


def test_table_share(capsys: pytest.CaptureFixture[str]) -> None:
    """At least 60 queries in both languages; the known failures are the only ones."""
    english = [r for r in ROWS if r.query.isascii()]
    assert len(ROWS) >= 60 and len(english) >= 25 and len(ROWS) - len(english) >= 25
    exact = [r for r in ROWS if _exact(r)]
    with capsys.disabled():
        print(f"\nqueryparse table: {len(exact)}/{len(ROWS)} exact ({len(exact) / len(ROWS):.0%})")
    assert {r.query for r in ROWS if not _exact(r)} == {r.query for r in ROWS if r.known}


def test_query_of_only_filters_leaves_no_text() -> None:
    """An empty remainder means: browse by the filters."""
    assert parse_query("2019年", now=NOW).text == ""
    assert parse_query("photos from Paris", places=FakeFinder(), now=NOW).text == ""
    assert parse_query("photos", now=NOW) == ParsedQuery("photos", Filters())


def test_dates_work_without_a_place_finder() -> None:
    parsed = parse_query("beach in Paris 2019", now=NOW)
    assert parsed.text == "beach in Paris"
    assert parsed.filters.taken_from == datetime(2019, 1, 1)
    assert parsed.filters.places == ()


def test_now_defaults_and_may_be_aware() -> None:
    aware = datetime(2026, 3, 15, 23, 30, tzinfo=UTC)
    assert parse_query("yesterday", now=aware).filters.taken_from == datetime(2026, 3, 14)
    this_year = datetime.now().year
    assert parse_query("this year").filters.taken_from == datetime(this_year, 1, 1)


class BrokenFinder:
    def mentions(self, text: str) -> list[object]:
        raise RuntimeError("gazetteer down")


class OddFinder:
    def mentions(self, text: str) -> list[object]:
        return [
            FakeMention(-3, 2, PARIS),
            FakeMention(2, 1, PARIS),
            FakeMention(0, 10_000, PARIS),
            FakeMention(0, 4, "Paris"),  # type: ignore[arg-type]
            object(),
            FakeMention(0, 2, PARIS),
            FakeMention(1, 3, PARIS),  # overlaps the one before
        ]


def test_a_failing_or_odd_place_finder_costs_only_places() -> None:
    parsed = parse_query("dog 2019", places=BrokenFinder(), now=NOW)
    assert parsed.text == "dog" and parsed.filters.taken_from == datetime(2019, 1, 1)
    parsed = parse_query("Pa dog", places=OddFinder(), now=NOW)
    assert parsed.filters.places == (PARIS,) and parsed.text == "dog"


@pytest.mark.parametrize("value", [None, 2019, b"2019", ["2019"]])
def test_not_a_string(value: object) -> None:
    parsed = parse_query(value, now=NOW)  # type: ignore[arg-type]
    assert isinstance(parsed.text, str) and not parsed.filters


def _fuzz_queries(count: int) -> list[str]:
    rng = random.Random(12)
    pieces = ["2019", "年", "月", "日", "前", "去年", "last", "week", "summer", "夏天", " ", "-"]
    pieces += ["in", "Paris", "巴黎", "to", "since", "的", "在", "0", "99999", "'", "9月", "ago"]
    queries = ["", " ", "\x00", "\n\t", "年" * 300, "2019 " * 60, "1" * 257, "9" * 40]
    for _ in range(count):
        if rng.random() < 0.5:
            queries.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
        else:
            size = rng.randint(1, 40)
            queries.append("".join(chr(rng.randint(1, 0x2FFFF)) for _ in range(size)))
    return queries


def test_fuzz_never_raises_and_keeps_what_it_does_not_understand() -> None:
    for query in _fuzz_queries(1500):
        parsed = parse_query(query, places=FakeFinder(), now=NOW)
        assert isinstance(parsed, ParsedQuery) and isinstance(parsed.text, str)
        if not parsed.filters:
            assert parsed.text == query and parsed.filters.understood == ()
        for _, written in parsed.filters.understood:
            assert written and written in query
        lo, hi = parsed.filters.taken_from, parsed.filters.taken_until
        assert lo is None or hi is None or lo < hi


@pytest.mark.parametrize("now", [datetime(1900, 1, 1), datetime(9998, 12, 31), datetime.min])
def test_extreme_now(now: datetime) -> None:
    for query in ["2019", "last summer", "去年冬天", "the 90s", "last weekend", "since 2019"]:
        assert isinstance(parse_query(query, now=now), ParsedQuery)


def test_time_per_query_after_warm_up(capsys: pytest.CaptureFixture[str]) -> None:
    warm_up()
    queries = [r.query for r in ROWS]
    start = time.perf_counter()
    for query in queries:
        parse_query(query, places=FakeFinder(), now=datetime(2026, 3, 16))
    cold_cache = (time.perf_counter() - start) / len(queries)
    start = time.perf_counter()
    for query in queries:
        parse_query(query, places=FakeFinder(), now=datetime(2026, 3, 16))
    cached = (time.perf_counter() - start) / len(queries)
    with capsys.disabled():
        print(f"\nqueryparse: {cold_cache * 1e3:.2f} ms/query new, {cached * 1e3:.2f} repeated")
    assert cold_cache < 0.05  # a few ms on a quiet machine; loose for a busy one


def test_import_and_first_call_load_only_chinese_and_english() -> None:
    code = (
        "import sys\n"
        "import mmsearch.queryparse as q\n"
        "assert 'dateparser' not in sys.modules\n"
        "q.parse_query('海边 2023年7月 last week in July 2023')\n"
        "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules if 'translation_data.' in m))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['en', 'zh']"


# --- the real gazetteer ----------------------------------------------------------------

GAZETTEER_CASES = [  # query, text, place codes, date range or None
    ("beach in Paris", "beach", ("2988507",), None),
    ("巴黎的铁塔", "铁塔", ("2988507",), None),
    ("photos from 北京 last summer", "", ("1816670",), ("2025-06-01", "2025-09-01")),
    ("东京 2019年", "", ("1850147",), ("2019-01-01", "2020-01-01")),
    ("snow in Japan", "snow", ("JP",), None),
    ("杭州西湖", "西湖", ("1808926",), None),
    ("去年夏天在北京", "", ("1816670",), ("2025-06-01", "2025-09-01")),
    ("2019年7月在东京", "", ("1850147",), ("2019-07-01", "2019-08-01")),
    ("sunset in Nice", "sunset", ("2990440",), None),
    ("nice sunset 2019", "nice sunset", (), ("2019-01-01", "2020-01-01")),
    ("Tokyo in spring 2019", "", ("1850147",), ("2019-03-01", "2019-06-01")),
    ("纽约的夜景 2018年", "夜景", ("5128581",), ("2018-01-01", "2019-01-01")),
    ("日本的寺庙", "寺庙", ("JP",), None),
    ("photos from Sydney last week", "", ("2147714",), ("2026-03-02", "2026-03-09")),
    ("我在巴黎拍的照片", "", ("2988507",), None),
    ("London 2012", "", ("2643743",), ("2012-01-01", "2013-01-01")),
    ("香港 去年冬天", "", ("1819729",), ("2025-12-01", "2026-03-01")),
    ("roast turkey", "roast turkey", (), None),
]


@pytest.fixture(scope="module")
def gazetteer(tmp_path_factory: pytest.TempPathFactory) -> object:
    places = pytest.importorskip("mmsearch.places")
    if not hasattr(getattr(places, "Gazetteer", None), "mentions"):
        pytest.skip("mmsearch.places has no Gazetteer.mentions")
    try:
        found = places.Gazetteer.shared(tmp_path_factory.mktemp("cache"))
        found.mentions("Paris")
    except Exception as error:  # its data may not be built here
        pytest.skip(f"gazetteer unavailable: {error}")
    return found


@pytest.mark.parametrize("case", GAZETTEER_CASES, ids=[c[0] for c in GAZETTEER_CASES])
def test_real_gazetteer(gazetteer: object, case: tuple) -> None:
    query, text, codes, dates = case
    parsed = parse_query(query, places=gazetteer, now=NOW)  # type: ignore[arg-type]
    assert parsed.text == text
    assert tuple(p.code for p in parsed.filters.places) == codes
    lo, hi = parsed.filters.taken_from, parsed.filters.taken_until
    expected = (None, None) if dates is None else tuple(map(datetime.fromisoformat, dates))
    assert (lo, hi) == expected
