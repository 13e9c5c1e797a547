"""Queries that name a time or a place: "海边 2023年7月", "beach in Paris", "去年夏天的雪".

``parse_query`` turns the dates and places a query names into ``Filters`` and returns the
rest of the text, the part to embed ("海边", "beach", "雪"). Dates are parsed by
``dateparser`` (its ``DateDataParser``, Chinese and English only); this module finds where
in the query a date may be, checks what dateparser answers, and turns a date into a range
by its granularity ("2023年7月" is the whole of July). A small layer adds what dateparser
lacks: seasons, decades, weekends, year ranges and bounds ("since 2019", "2019年以后"),
and it rewrites a few Chinese forms into ones dateparser reads ("三年前" → "3年前").

Why not ``dateparser.search.search_dates``: importing ``dateparser.search`` loads all 205
of dateparser's languages (0.16 s, whatever ``languages`` says), and for Chinese it reads
"2019年" as "2019 years ago" (upstream #866, #519) and glues words such as 在 onto dates.
``DateDataParser`` with one language loads that language only.

Places come from a place finder (``places.Gazetteer``, or anything with ``mentions(text)``),
which decides what counts as a place name; without one, dates still work.

Nothing here raises: a query that cannot be understood is returned unchanged, unfiltered.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

from .filters import Filters, Place

log = logging.getLogger(__name__)

#: Longer texts are descriptions, not queries with filters: they are left as they are.
MAX_QUERY_CHARS = 256
#: Tokens in the longest date tried ("July 14th , 2023", "2023 年 7 月 14").
_MAX_WINDOW = 7
#: Stretches of text tried as dates in one query: bounds the time of a query full of
#: numbers (each try may ask dateparser, ~0.5 ms) to some tens of ms.
_MAX_TRIES = 80
_MASK = "\x00"  # stands in for a place or a named period while dates are searched for


class PlaceFinder(Protocol):
    """What ``parse_query`` needs of a gazetteer."""

    def mentions(self, text: str) -> list[Any]:
        """Places named in ``text``: objects with ``start``, ``end`` and ``place``."""
        ...


@dataclass(frozen=True)
class ParsedQuery:
    """What a query names as filters, and the rest of its text, to embed ("" when the
    query was only filters: search then browses by the filters alone)."""

    text: str
    filters: Filters


def parse_query(
    text: str, *, places: PlaceFinder | None = None, now: datetime | None = None
) -> ParsedQuery:
    """The filters ``text`` names (dates, and places when ``places`` is given) and the text
    left to embed. ``now`` anchors relative dates ("去年", "last week"); wall-clock, naive
    (an aware one is taken at its own wall clock). Never raises."""
    if not isinstance(text, str):
        return ParsedQuery("" if text is None else str(text), Filters())
    try:
        return _parse(text, places, now)
    except Exception:  # a query must always run; an unparsed one runs as it was written
        log.warning("could not parse query %r", text[:80], exc_info=True)
        return ParsedQuery(text, Filters())


def warm_up() -> None:
    """Load dateparser and its Chinese and English data (about 0.3 s) now, so that the
    first query does not wait for them (call it when a server starts)."""
    parse_query("2019年7月 last week")


# --- the whole -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Atom:
    """A date expression: ``[start, end)`` in the rewritten text, and the range it names
    (``lo`` inclusive, ``hi`` exclusive; None is open)."""

    start: int
    end: int
    lo: date | None
    hi: date | None
    period: str  # day, week, month, year, season, decade, weekend, range
    has_year: bool = True
    season: int = 0  # first month of a season, to place it in another year


def _parse(text: str, finder: PlaceFinder | None, now: datetime | None) -> ParsedQuery:
    """``parse_query`` without the guard."""
    if len(text) > MAX_QUERY_CHARS or not text.strip():
        return ParsedQuery(text, Filters())
    today = (now or datetime.now()).replace(tzinfo=None).date()
    mentions = _place_mentions(finder, text)
    masked = list(text)
    for start, end, _ in mentions:
        masked[start:end] = _MASK * (end - start)
    norm, origin = _rewrite("".join(masked))
    named = _named_periods(norm, today)
    unnamed = list(norm)
    for atom in named:
        unnamed[atom.start : atom.end] = _MASK * (atom.end - atom.start)
    atoms = _combine(norm, named + _dates("".join(unnamed), today), today)
    dates = [(origin[a.start][0], origin[a.end - 1][1], a) for a in atoms]
    if not dates and not mentions:
        return ParsedQuery(text, Filters())
    lo, hi = _overall(a for _, _, a in dates)
    understood = sorted(
        [(s, "date", text[s:e]) for s, e, _ in dates]
        + [(s, "place", text[s:e]) for s, e, _ in mentions]
    )
    chosen = tuple(dict.fromkeys(place for _, _, place in mentions))
    filters = Filters(
        taken_from=_midnight(lo),
        taken_until=_midnight(hi),
        places=chosen,
        understood=tuple((kind, written.strip()) for _, kind, written in understood),
    )
    removed = [(s, e) for s, e, _ in dates] + [(s, e) for s, e, _ in mentions]
    return ParsedQuery(_remainder(text, removed), filters)


def _midnight(day: date | None) -> datetime | None:
    """The filter's bound: the day's first moment, wall-clock."""
    return None if day is None else datetime(day.year, day.month, day.day)


def _overall(atoms: Iterable[_Atom]) -> tuple[date | None, date | None]:
    """One range for several dates: where they overlap ("2019 summer 2019"), else the span
    from the first to the last ("2018 2020"): a filter holds one range."""
    ranges = [(a.lo, a.hi) for a in atoms]
    if not ranges:
        return None, None
    los, his = [r[0] for r in ranges], [r[1] for r in ranges]
    lo = max((d for d in los if d is not None), default=None)
    hi = min((d for d in his if d is not None), default=None)
    if lo is None or hi is None or lo < hi:
        return lo, hi
    lo = None if None in los else min(los)
    hi = None if None in his else max(his)
    return lo, hi


# --- places ----------------------------------------------------------------------------


def _place_mentions(finder: PlaceFinder | None, text: str) -> list[tuple[int, int, Place]]:
    """The finder's mentions that make sense (inside the text, not overlapping, naming a
    ``Place``), in order. A failing finder costs the places, not the query."""
    if finder is None:
        return []
    try:
        found = list(finder.mentions(text))
    except Exception:
        log.warning("place finder failed on %r", text[:80], exc_info=True)
        return []
    kept: list[tuple[int, int, Place]] = []
    for mention in found:
        start, end = getattr(mention, "start", None), getattr(mention, "end", None)
        place = getattr(mention, "place", None)
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(place, Place)):
            continue
        if 0 <= start < end <= len(text) and text[start:end].strip():
            kept.append((start, end, place))
    kept.sort(key=lambda m: (m[0], -m[1]))
    result: list[tuple[int, int, Place]] = []
    for mention in kept:
        if not result or mention[0] >= result[-1][1]:
            result.append(mention)
    return result


# --- rewriting Chinese forms dateparser does not read ----------------------------------

_CN_DIGITS = {"〇": 0, "零": 0, "○": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4}
_CN_DIGITS |= {"五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_CN_NUM = "[一二两三四五六七八九十]{1,3}"
_UNIT_AGO = "个?(?:年|月|周|星期|礼拜|天|日|小时)(?:以?前|之前|后|以后|之后)"
_DAY = r"\d{1,2}|[一二三]?十[一二三四五六七八九]?|[一二三四五六七八九]"
_MONTH = r"0?\d{1,2}|十[一二]?|[一二三四五六七八九]"
_SYNONYMS = {  # Chinese forms dateparser lacks → ones it reads
    "大前年": "3年前",
    "前年": "2年前",
    "上上个月": "2个月前",
    "上上周": "2周前",
    "上上个星期": "2周前",
    "上上个礼拜": "2周前",
}
_REWRITES = re.compile(
    "|".join(
        [
            r"(?P<cnyear>[〇零○一二三四五六七八九]{4})(?=年)",
            rf"(?P<cnago>{_CN_NUM})(?={_UNIT_AGO})",
            rf"(?P<md>(?P<m>{_MONTH})月(?P<d>{_DAY})[日号])",
            r"(?<=年)(?P<zero>0)(?=[1-9]月)",
            r"(?P<decade>[一二三四五六七八九]十)(?=年代)",
            r"(?P<syn>大前年|(?<![\d〇零一二两三四五六七八九十])前年|上上(?:个月|(?:周|个星期|个礼拜)"
            r"(?![一二三四五六日天])))",
            r"(?P<last>上个?(?:星期|礼拜)|上个周)(?![一二三四五六日天])",
            r"(?P<this>这个?(?:星期|礼拜|周)|本个?(?:星期|礼拜))(?![一二三四五六日天])",
            r"(?P<thismonth>这个?月)",
            r"(?P<next>下个?(?:星期|礼拜))(?![一二三四五六日天])",
            r"(?<=[\d一二三四五六七八九十]月)(?P<fen>份)",  # "5月份" is "5月"
            r"(?P<past>\b(?:past|previous)\b)(?=\s+(?:day|week|weekend|month|year|spring"
            r"|summer|autumn|fall|winter)\b)",
        ]
    ),
    re.IGNORECASE,
)


def _cn_int(numeral: str) -> int:
    """A Chinese numeral up to 99 ("十五" → 15, "二十" → 20), or Arabic digits."""
    if numeral.isdigit():
        return int(numeral)
    if "十" in numeral:
        tens, _, ones = numeral.partition("十")
        return _CN_DIGITS.get(tens, 1) * 10 + _CN_DIGITS.get(ones, 0)
    return int("".join(str(_CN_DIGITS[c]) for c in numeral))


def _rewritten(match: re.Match[str]) -> str:
    """What one rewrite turns its match into."""
    kind = match.lastgroup
    if kind == "md":  # "7月14日" fails in dateparser ("july 14 day"); "7月14" does not
        return f"{_cn_int(match['m'])}月{_cn_int(match['d'])}"
    if kind == "cnyear":  # 二〇一九 → 2019, digit by digit
        return "".join(str(_CN_DIGITS[c]) for c in match[kind])
    if kind in ("cnago", "decade"):  # 三 → 3, 八十 → 80
        return str(_cn_int(match[kind]))
    replacement = {"zero": "", "fen": "", "last": "上周", "this": "本周", "thismonth": "本月"}
    replacement |= {"next": "下周", "past": "last"}
    return _SYNONYMS.get(match[0], replacement.get(kind or "", match[0]))


def _rewrite(text: str) -> tuple[str, list[tuple[int, int]]]:
    """``text`` with full-width forms folded and Chinese forms rewritten, and for each of
    its characters the ``[start, end)`` of the original it came from."""
    text = text.translate(_FULL_WIDTH)
    pieces: list[str] = []
    origin: list[tuple[int, int]] = []
    done = 0
    for match in _REWRITES.finditer(text):
        pieces.append(text[done : match.start()])
        origin.extend((i, i + 1) for i in range(done, match.start()))
        new = _rewritten(match)
        pieces.append(new)
        origin.extend([(match.start(), match.end())] * len(new))
        if not new and origin:  # a deleted character belongs to the one before ("5月份")
            origin[-1] = (origin[-1][0], match.end())
        done = match.end()
    pieces.append(text[done:])
    origin.extend((i, i + 1) for i in range(done, len(text)))
    return "".join(pieces), origin


_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


# --- what dateparser reads -------------------------------------------------------------

_EN_MONTHS = {
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
}
#: Month names that are not also common words or names ("may", "march", "june").
_CLEAR_MONTHS = {"january", "february", "july", "september", "october", "november", "december"}
_EN_DIRECTIONS = {"ago", "last", "this", "next", "yesterday", "today", "tomorrow", "tonight"}
_EN_WORDS = _EN_MONTHS | _EN_DIRECTIONS | {"day", "days", "week", "weeks", "month", "months"}
_EN_WORDS |= {"year", "years", "a", "an", "one", "two", "three", "four", "five", "six"}
_EN_WORDS |= {"seven", "eight", "nine", "ten", "eleven", "twelve", "of"}
_ZH_DIRECTIONS = set("前后上下去昨今本明")
_ZH_CHARS = set("〇零一二两三四五六七八九十年月日号周星期礼拜天大个") | _ZH_DIRECTIONS
_GLUE = {",", "-", "/", ".", "of"}  # inside a date only
_TOKEN = re.compile(r"[A-Za-z]+|\d+(?:st|nd|rd|th)?|[\u3007\u3400-\u9fff\uf900-\ufaff]|\S")
_PREPOSITION = re.compile(
    r"\b(?:in|during|since|before|after|until|till|from|of|early|late|mid|last|this|between)"
    r"\W*$",
    re.I,
)


_MONTH_NAMES = "|".join(sorted(_EN_MONTHS))
#: A month name next to another: "between May and July", "from March to June", "March-May".
_LISTED = re.compile(
    rf"\b(?:{_MONTH_NAMES})\b[\w\s,]{{0,12}}\b(?:and|or|to|until|till|through|thru)\s+$"
    rf"|\b(?:{_MONTH_NAMES})\s*[-–~]\s*$",
    re.I,
)
_LISTED_NEXT = re.compile(
    rf"^\s*(?:[-–~]|\b(?:and|or|to|until|till|through|thru)\b)\s*(?:{_MONTH_NAMES})\b", re.I
)


def _is_cjk(char: str) -> bool:
    """A Chinese character (each one is a token: Chinese has no spaces between words)."""
    return char == "\u3007" or "\u3400" <= char <= "\u9fff" or "\uf900" <= char <= "\ufaff"


@dataclass(frozen=True)
class _Token:
    start: int
    end: int
    text: str
    glue: bool


def _runs(norm: str) -> list[list[_Token]]:
    """Runs of tokens that can be part of a date, apart only by spaces: where to look."""
    runs: list[list[_Token]] = []
    current: list[_Token] = []
    last_end = 0
    for match in _TOKEN.finditer(norm):
        word = match[0].lower()
        digits = word[0].isdigit()
        glued = digits and _glued_to_letters(norm, match.start(), match.end())
        ok = not glued and (digits or word in _EN_WORDS or word in _ZH_CHARS or word in _GLUE)
        if not ok or (current and norm[last_end : match.start()].strip()):
            if current:
                runs.append(current)
            current = []
        if ok:
            current.append(_Token(match.start(), match.end(), word, word in _GLUE))
        last_end = match.end()
    if current:
        runs.append(current)
    return runs


def _glued_to_letters(norm: str, start: int, end: int) -> bool:
    """A number written into a word ("iPhone12", "IMG_2019") is not a date."""
    before = norm[start - 1] if start else " "
    after = norm[end] if end < len(norm) else " "
    return any(c.isascii() and (c.isalpha() or c == "_") for c in before + after)


def _dates(norm: str, today: date) -> list[_Atom]:
    """The dates dateparser finds in ``norm``: in each run of date-like tokens, from the
    left, the longest stretch it parses and that passes ``_accepted``."""
    atoms = []
    tries = 0
    for run in _runs(norm):
        i = 0
        while i < len(run) and tries < _MAX_TRIES:
            atom, j = None, i + 1
            if not run[i].glue and not _joined(run, i):
                for j in range(min(len(run), i + _MAX_WINDOW), i, -1):
                    if not run[j - 1].glue and not _joined(run, j):
                        tries += 1
                        atom = _window(norm, run[i:j], today)
                        if atom:
                            atom, j = _shortest(norm, run, i, j, atom, today)
                            break
            if atom:
                atoms.append(atom)
                i = j
            else:
                i += 1
    return atoms


def _shortest(
    norm: str, run: list[_Token], i: int, j: int, atom: _Atom, today: date
) -> tuple[_Atom, int]:
    """The date without a last Chinese character that adds nothing to it: "今天" of
    "今天天气" (today's weather), not "今天天"; dateparser reads both as today."""
    while j - i > 1 and _is_cjk(run[j - 1].text[0]) and not _joined(run, j - 1):
        shorter = _window(norm, run[i : j - 1], today)
        if shorter is None or (shorter.lo, shorter.hi) != (atom.lo, atom.hi):
            break
        atom, j = shorter, j - 1
    return atom, j


def _joined(run: list[_Token], i: int) -> bool:
    """Whether tokens ``i - 1`` and ``i`` are a number and the Chinese unit written onto
    it ("7月", "2019年"): a date does not start or end between them ("去年7" of "去年7月")."""
    if not 0 < i < len(run) or run[i - 1].end != run[i].start:
        return False
    return run[i - 1].text[0].isdigit() and _is_cjk(run[i].text[0])


@dataclass(frozen=True)
class _Facts:
    """What a stretch of text holds, to tell a date from a number or a word."""

    year: bool  # a four-digit year in 1900..next year, or "19年"
    absolute: bool  # worth asking dateparser's absolute parser
    directed: bool  # worth asking its relative parser: "ago", "last", 前, 去...


def _facts(window: str, words: list[str], around: tuple[str, str], today: date) -> _Facts:
    """What ``window`` holds (``around``: the text before and after it), checked before
    dateparser is asked anything: most stretches are not dates, and asking costs ~0.5 ms."""
    years = [int(y) for y in re.findall(r"(?<!\d)\d{4}(?!\d)", window)]
    year = any(1900 <= y <= today.year + 1 for y in years) or bool(
        re.search(r"(?<!\d)\d\d年", window)
    )
    named = [w for w in words if w in _EN_MONTHS]
    digit = any(c.isdigit() for c in window)
    month = ("月" in window and "个月" not in window) or any(
        w in _CLEAR_MONTHS or digit for w in named
    )
    if named and not month:  # "may", "march": a month only next to a time word
        before, after = around
        month = bool(
            _PREPOSITION.search(before) or _LISTED.search(before) or _LISTED_NEXT.match(after)
        )
    numeric = not any(c.isalpha() for c in window)  # CJK counts as alpha
    absolute = year if numeric else (year or month)
    directed = any(w in _EN_DIRECTIONS or w in _ZH_DIRECTIONS for w in words)
    return _Facts(year, absolute, directed)


def _window(norm: str, tokens: list[_Token], today: date) -> _Atom | None:
    """The date these tokens name, if dateparser reads one that makes sense."""
    start, end = tokens[0].start, tokens[-1].end
    window = norm[start:end]
    around = (norm[max(0, start - 40) : start], norm[end : end + 40])
    facts = _facts(window, [t.text for t in tokens], around, today)
    language = "zh" if any(_is_cjk(c) for c in window) else "en"
    kinds = ["relative-time"] if facts.directed else []
    kinds += ["absolute-time"] if facts.absolute else []
    for kind in kinds:
        found = _dateparser(window, language, kind, today)
        if found is None:
            continue
        day, period = found
        if _accepted(day, period, kind, facts, today):
            lo, hi = _period_range(day, period)
            has_year = kind == "relative-time" or facts.year
            return _Atom(start, end, lo, hi, period, has_year)
    return None


def _accepted(day: date, period: str, kind: str, facts: _Facts, today: date) -> bool:
    """Whether dateparser's answer is a date the text names: not a time of day or a
    duration ("a second", "5年"), not a year it made up ("2019年" as 2019 years ago)."""
    if not 1900 <= day.year <= today.year + 1:
        return False
    if kind == "relative-time":
        return period in ("day", "week", "month", "year")
    return period in ("day", "month") or (period == "year" and facts.year)


@lru_cache(maxsize=4096)
def _dateparser(window: str, language: str, kind: str, today: date) -> tuple[date, str] | None:
    """dateparser's reading of ``window`` with one parser ("absolute-time" or
    "relative-time"), as of midnight ``today``: (the day, its period), or None. A relative
    date that is not a whole number of days from midnight ("a second", "last night") is
    None: the filters are in days."""
    from dateparser.date import DateDataParser  # 0.15 s; only when a query needs it

    settings = {
        "RELATIVE_BASE": datetime(today.year, today.month, today.day),
        "PARSERS": [kind],
        "PREFER_DATES_FROM": "past",  # "July" is the last July: photos are in the past
    }
    try:
        data = DateDataParser(languages=[language], settings=settings).get_date_data(window)
    except Exception:  # dateparser's own bugs on odd input must not reach the caller
        return None
    moment = data.date_obj
    if moment is None or (kind == "relative-time" and moment.time() != datetime.min.time()):
        return None
    return moment.date(), data.period or "day"


def _add_months(day: date, months: int) -> date:
    """The first of the month ``months`` after ``day``'s."""
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _period_range(day: date, period: str) -> tuple[date, date]:
    """The days a date of this granularity covers: "2019" is all of 2019."""
    if period == "year":
        return date(day.year, 1, 1), date(day.year + 1, 1, 1)
    if period == "month":
        return day.replace(day=1), _add_months(day, 1)
    if period == "week":
        monday = day - timedelta(days=day.weekday())
        return monday, monday + timedelta(days=7)
    return day, day + timedelta(days=1)


# --- what dateparser lacks: seasons, decades, weekends -----------------------------------

_SEASONS = {"spring": 3, "summer": 6, "autumn": 9, "fall": 9, "winter": 12}
_SEASONS |= {"春": 3, "夏": 6, "秋": 9, "冬": 12}
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEK_OFFSETS = {"上上": -2, "上": -1, "本": 0, "这": 0, "下": 1}
_NAMED = re.compile(
    "|".join(
        [
            r"\b(?:(?P<mod>last|this)\s+)?(?P<season>spring|summer|autumn|fall|winter)\b",
            r"(?P<zhseason>[春夏秋冬])(?:天|季)",
            r"(?<=年)(?P<bare>[春夏秋冬])(?=$|的|[^\u3400-\u9fff])",
            r"(?:\bthe\s+)?(?P<decade>\b(?:19|20)\d0s\b|(?<=the )\d0'?s\b|'\d0s\b)",
            r"(?P<zhdecade>(?:19|20)?\d0)年代",
            r"\b(?P<weekend>last|this)\s+weekend\b",
            r"(?P<zhweekend>上|本)周末",
            rf"\b(?P<weekday>last|this)\s+(?P<enday>{'|'.join(_WEEKDAYS)})\b",
            r"(?P<zhweek>上上|上|本|这|下)个?(?:周|星期|礼拜)(?P<zhday>[一二三四五六日天])",
        ]
    ),
    re.IGNORECASE,
)
#: "spring" and "fall" are also a water source and a verb: only with a time word near.
_PLAIN_WORDS = {"spring", "fall"}


def _named_periods(norm: str, today: date) -> list[_Atom]:
    """Seasons ("last summer", "夏天"), decades ("the 90s", "80年代") and weekends
    ("last weekend", "上周末"), the periods dateparser has no words for."""
    atoms = []
    for match in _NAMED.finditer(norm):
        atom = _named(match, norm, today)
        if atom is not None:
            atoms.append(atom)
    return atoms


def _named(match: re.Match[str], norm: str, today: date) -> _Atom | None:
    """The atom for one match of ``_NAMED``."""
    start, end, kind = match.start(), match.end(), match.lastgroup
    if kind in ("season", "zhseason", "bare", "mod"):
        word = (match["season"] or match["zhseason"] or match["bare"]).lower()
        modifier = (match["mod"] or "").lower()
        if word in _PLAIN_WORDS and not modifier and not _near_time(norm, start, end):
            return None
        lo, hi = _season(_SEASONS[word], modifier, today)
        return _Atom(start, end, lo, hi, "season", False, _SEASONS[word])
    if kind in ("decade", "zhdecade"):
        digits = re.sub(r"\D", "", match[kind])
        first = int(digits)
        if first < 100:  # "the 90s": the last such decade that has begun
            first += 2000 if 2000 + first <= today.year else 1900
        return _Atom(start, end, date(first, 1, 1), date(first + 10, 1, 1), "decade")
    monday = today - timedelta(days=today.weekday())
    if kind in ("weekday", "enday", "zhweek", "zhday"):
        return _weekday(match, today, start, end)
    if (match["weekend"] or match["zhweekend"]).lower() in ("last", "上"):
        monday -= timedelta(days=7)
    saturday = monday + timedelta(days=5)
    return _Atom(start, end, saturday, saturday + timedelta(days=2), "weekend")


def _weekday(match: re.Match[str], today: date, start: int, end: int) -> _Atom:
    """A weekday with its week: "上周六" (Saturday of last week), "这周日", "last Saturday"
    (the last one before today), "this Friday" (this week's). A weekday alone
    ("星期天的公园", "monday") is left to the text: which one is meant is unclear."""
    monday = today - timedelta(days=today.weekday())
    if match["zhweek"]:
        index = "一二三四五六".find(match["zhday"])
        day = monday + timedelta(days=7 * _WEEK_OFFSETS[match["zhweek"]] + (index % 7))
    else:
        index = _WEEKDAYS.index(match["enday"].lower())
        if match["weekday"].lower() == "this":
            day = monday + timedelta(days=index)
        else:
            day = today - timedelta(days=(today.weekday() - index) % 7 or 7)
    return _Atom(start, end, day, day + timedelta(days=1), "day")


def _near_time(norm: str, start: int, end: int) -> bool:
    """Whether a word is next to a year or after "in (the)": "spring 2020", "in the fall"."""
    before, after = norm[max(0, start - 12) : start], norm[end : end + 12]
    return bool(
        re.search(r"\b(?:in|during)\s+(?:the\s+)?$|\d{4}\s*(?:of\s+)?$", before, re.I)
        or re.match(r"\s*(?:of\s+|in\s+)?\d{4}", after)
    )


def _season(first_month: int, modifier: str, today: date) -> tuple[date, date]:
    """A season without a year: "last" is the last one that has ended, "this" the one
    now or else this year's, and none the last one that has begun (northern hemisphere;
    winter is December to February and belongs to the year of its December)."""
    seasons = [_season_in(first_month, year) for year in range(today.year - 2, today.year + 1)]
    if modifier == "last":
        return max(s for s in seasons if s[1] <= today)
    if modifier == "this":
        now = [s for s in seasons if s[0] <= today < s[1]]
        return now[0] if now else _season_in(first_month, today.year)
    return max(s for s in seasons if s[0] <= today)


def _season_in(first_month: int, year: int) -> tuple[date, date]:
    """The three months from ``first_month`` of ``year`` (winter runs into the next year)."""
    lo = date(year, first_month, 1)
    return lo, _add_months(lo, 3)


# --- putting dates together: "去年 夏天", "2018 to 2020", "since 2019" -------------------

_ADJACENT = re.compile(r"\s*(?:的|of|in)?\s*", re.I)
_RANGE = re.compile(r"\s*(?P<word>to|until|till|through|thru|and|-|–|—|~|～|到|至)\s*", re.I)
_RANGE_START = re.compile(r"(?:\b(?:from|between)\s+|[从自]\s*)$", re.I)
_BOUND_BEFORE = re.compile(r"\b(?P<word>since|after|before|until|till|up to)\s+$", re.I)
_BOUND_AFTER = re.compile(
    r"^\s*(?P<word>以来|以后|之后|以前|之前|起|开始|后|前|onwards?\b|and later\b|or later\b)",
    re.I,
)
_BOUNDS = {"since": "since", "以来": "since", "以后": "since", "起": "since", "开始": "since"}
_BOUNDS |= {"onward": "since", "onwards": "since", "and later": "since", "or later": "since"}
_BOUNDS |= {"after": "after", "之后": "after", "后": "after", "before": "before"}
_BOUNDS |= {"以前": "before", "之前": "before", "前": "before", "until": "until"}
_BOUNDS |= {"till": "until", "up to": "until"}


def _combine(norm: str, atoms: list[_Atom], today: date) -> list[_Atom]:
    """Dates that make one: a year lent to a date without one ("去年" + "7月", "summer"
    + "2022"), ranges ("2018 to 2020"), bounds ("since 2019", "2019年以后")."""
    atoms = sorted(atoms, key=lambda a: a.start)
    atoms = _pairwise(norm, atoms, _with_year)
    atoms = _pairwise(norm, atoms, _as_range)
    return [_bounded(norm, _modified(norm, atom, today)) for atom in atoms]


def _modified(norm: str, atom: _Atom, today: date) -> _Atom:
    """A month or day after "last" or "this": "last July" is the last July that has
    ended, "this March" this year's March (seasons have their own rule)."""
    before = re.search(r"\b(?P<word>last|this)\s+$", norm[: atom.start], re.I)
    if before is None or atom.has_year or atom.season or atom.lo is None or atom.hi is None:
        return atom
    if before["word"].lower() == "this":
        atom = _in_year(atom, today.year)
    elif atom.hi > today:
        atom = _in_year(atom, atom.lo.year - 1)
    return replace(atom, start=before.start())


def _pairwise(
    norm: str, atoms: list[_Atom], join: Callable[[str, _Atom, _Atom], _Atom | None]
) -> list[_Atom]:
    """Atoms with each neighbouring pair that ``join`` makes one replaced by it."""
    result: list[_Atom] = []
    for atom in atoms:
        joined = join(norm, result[-1], atom) if result else None
        if joined is not None:
            result[-1] = joined
        else:
            result.append(atom)
    return result


def _in_year(atom: _Atom, year: int) -> _Atom:
    """A date without a year (a month, a day, a season) placed in ``year``."""
    if atom.season:
        lo, hi = _season_in(atom.season, year)
    else:
        assert atom.lo is not None
        try:
            lo, hi = _period_range(atom.lo.replace(year=year), atom.period)
        except ValueError:  # 29 February
            return atom
    return replace(atom, lo=lo, hi=hi, has_year=True)


def _with_year(norm: str, first: _Atom, second: _Atom) -> _Atom | None:
    """A year next to a date without one: "去年7月", "2022年的夏天", "summer 2022"."""
    if not _ADJACENT.fullmatch(norm[first.end : second.start]):
        return None
    for year, other in ((first, second), (second, first)):
        if year.period == "year" and year.has_year and not other.has_year and year.lo:
            dated = _in_year(other, year.lo.year)
            return replace(dated, start=first.start, end=second.end)
    return None


def _as_range(norm: str, first: _Atom, second: _Atom) -> _Atom | None:
    """A range: "2018 to 2020", "between 2018 and 2020", "2018-2020", "从2018年到2020年"."""
    gap = _RANGE.fullmatch(norm[first.end : second.start])
    opener = _RANGE_START.search(norm[: first.start])
    if gap is None or (gap["word"].lower() == "and" and not opener):
        return None
    if first.has_year and not second.has_year and first.lo:
        second = _in_year(second, first.lo.year)
    elif second.has_year and not first.has_year and second.lo:
        first = _in_year(first, second.lo.year)
    if first.lo and second.hi and first.lo >= second.hi and first.lo.year > 1900:
        first = _in_year(first, first.lo.year - 1)  # "December to February"
    if not (first.lo and second.hi and first.lo < second.hi):
        return None
    start = opener.start() if opener else first.start
    return _Atom(start, second.end, first.lo, second.hi, "range")


def _bounded(norm: str, atom: _Atom) -> _Atom:
    """An open range from or to the date: "since 2019", "before 2019", "2019年以后"."""
    before = _BOUND_BEFORE.search(norm[: atom.start])
    after = _BOUND_AFTER.match(norm[atom.end :])
    if before:
        bound, start, end = _BOUNDS[before["word"].lower()], before.start(), atom.end
    elif after and atom.period != "range":
        bound, start = _BOUNDS[re.sub(r"\s+", " ", after["word"].lower())], atom.start
        end = atom.end + after.end()
        opener = re.search(r"[从自]\s*$", norm[: atom.start])
        start = opener.start() if opener and bound == "since" else start
    else:
        return atom
    lo, hi = {
        "since": (atom.lo, None),
        "after": (atom.hi, None),
        "before": (None, atom.lo),
        "until": (None, atom.hi),
    }[bound]
    return _Atom(start, end, lo, hi, "range")


# --- the text left to embed ----------------------------------------------------------------

_LEFT_BEHIND = [  # connective words a removed date or place leaves dangling
    re.compile(  # "late 2019", "2019年底": the filter is the whole year, a little wider
        r"\b(?:early|late|mid-?|(?:the\s+)?(?:end|beginning|start|middle)\s+of)\s*\x00"
        r"|\x00(?:年底|年初|年末|月底|月初|月末|底|初|末|上旬|中旬|下旬)(?=$|的|[^\u3400-\u9fff])",
        re.I,
    ),
    re.compile(
        r"(?:\b(?:taken|shot|photographed|captured)\s+)?\b(?:in|on|at|from|to|during|of|around"
        r"|near|for)\s+(?:the\s+)?\x00",
        re.I,
    ),
    re.compile(r"\b(?:taken|shot|photographed|captured)\s+\x00", re.I),
    re.compile(r"(?:我?在|于|从|自)\s*\x00"),
    re.compile(r"\x00\s*(?:拍摄的|拍的|时拍的|的时候|时候|时的|期间的?|的|在)"),
    re.compile(r"\x00(?:'s|’s)\b", re.I),
    re.compile(r"\x00\s*(?:and|or|,|，|、|和|与|跟|&)\s*\x00", re.I),
]
#: Words that say "photos" and nothing about them: a query made only of these and filters
#: is a request to browse by the filters.
_GENERIC = re.compile(
    r"\b(?:photos?|pictures?|pics?|images?|shots?|snapshots?|taken|my|our|all|the|some"
    r"|me|us|of|from|in|show|find)\b|照片|图片|相片|我们?的|我们?|拍摄的|拍的|所有的?|全部的?"
    r"|找|显示|看看|的|图|照",
    re.I,
)


def _remainder(text: str, removed: list[tuple[int, int]]) -> str:
    """``text`` without the removed spans and the connective words left around them, or
    "" if nothing but words like "photos" is left."""
    marked, done = [], 0
    for start, end in sorted(removed):
        marked.append(text[done:start] + "\x00")
        done = end
    marked.append(text[done:])
    rest = "".join(marked)
    for _ in range(3):  # "photos from Paris and London": the rules feed each other
        for pattern in _LEFT_BEHIND:
            rest = pattern.sub(lambda m: "\x00" * m[0].count("\x00"), rest)
    rest = _join(rest)
    if not _GENERIC.sub("", rest).strip(" \t\n,，、.。;；:：!！?？-&"):
        return ""
    return rest


def _join(rest: str) -> str:
    """Markers become a space between two words, nothing next to Chinese; spaces and
    punctuation left at either end go."""
    pieces = rest.split("\x00")
    out = pieces[0]
    for piece in pieces[1:]:
        left, right = out.rstrip()[-1:], piece.lstrip()[:1]
        if left and right and not (_is_cjk(left) or _is_cjk(right)):
            out = out.rstrip() + " " + piece.lstrip()
        else:
            out = out.rstrip() + piece.lstrip()
    out = re.sub(r"\(\s*\)|（\s*）|\[\s*\]|【\s*】|“\s*”|\"\s*\"", " ", out)
    out = re.sub(r"\s+", " ", out)
    return out.strip(" \t\n,，、;；:：-&")
