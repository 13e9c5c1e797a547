"""An offline gazetteer: where a photo was taken (``locate``), what a place name may mean
(``find``), and which places a search query names (``mentions``), in English and Chinese.

The data is ``data/places.json.gz`` and ``data/place-names.txt.gz``, built from GeoNames
(cities of 15,000+ people), CLDR and iso-codes by ``tools/build_places.py``: 34,006
cities, their regions (admin1) and countries, with English and Chinese names. It ships in
the package, so nothing is fetched or built at run time.

Start-up stays small in two steps. ``mentions`` first checks the query's words against the
list of names alone (about 25 ms and 12 MB, once per process); only a query that contains a
name, and ``find`` or ``locate``, load the rest (places, ranks, coordinates: about 0.1 s and
35 MB in all, once). A search that names no place never pays for the places.

Choosing among places: ``locate`` takes the city with the largest population / distance²
within 30 km (2 km floor), so the Eiffel Tower is in Paris, not in the suburb "Paris 16
Passy" whose centre is nearer, while Versailles stays Versailles; with none within 30 km,
the nearest city within 150 km; beyond that (mid-ocean), None. ``find`` ranks a name's
meanings: main names before alternate ones, then by population (a region's is the sum of
its cities'), a city before the region of the same name that holds it.

Free text is ambiguous: many places are named like everyday words ("nice", "reading",
"orange", 花园, 新城, 中山). ``mentions`` counts a name only with evidence that a place is
meant; see ``_counts_english`` and ``_counts_chinese`` for the rules and why.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import threading
import unicodedata
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from mmsearch.filters import Place

#: Version of the data files' layout; ``tools/build_places.py`` writes it.
FORMAT = 1
KINDS = {"c": "city", "r": "region", "k": "country"}
#: locate: candidates within this radius; the gravity rule picks among them.
NEAR_KM = 30.0
#: locate: with no city within NEAR_KM, the nearest within this (Grand Canyon Village:
#: Flagstaff, 112 km; its region and country are right); beyond, no place.
FAR_KM = 150.0
EARTH_KM = 6371.0
#: A city this big is "prominent": its main name counts in a query even lower-case
#: (San Francisco 0.86 M, Florence 0.37 M; first names that are cities below it, such as
#: Madison or Jackson, need a capital or "in").
PROMINENT_POPULATION = 300_000
#: A name that is an everyday word needs a capital, except for a city this big ("Nice",
#: 0.34 M, is not; "Cape Town" is).
BIG_POPULATION = 1_000_000
#: A two-character Chinese city name counts in a query for cities at least this big.
ZH_CITY_POPULATION = 100_000
#: Words after which an English name is taken as a place ("photos in reading" is not
#: enough for an everyday word, see _counts_english).
PREPOSITIONS = frozenset({"in", "at", "from", "near", "around", "to", "visiting"})
_HAN_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"(?P<han>[{_HAN_RANGES}]+)|(?P<word>[^\W\d_{_HAN_RANGES}]+)")
_HAN_ONLY = re.compile(rf"^[{_HAN_RANGES}]+$")
#: Gaps that may sit inside a multi-word name ("New York", "Saint-Étienne", "St. Louis").
_JOINER = re.compile(r"^[\s\-.'’]*$")
_FOLD = str.maketrans({"ø": "o", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d", "ı": "i", "þ": "th"})
_MAX_WORDS = 6
_MAX_HAN = 12
_HAN_TABLE: dict[int, str] = {}


@dataclass(frozen=True)
class Location:
    """Where a point is: its city, the city's region when named, and its country.
    ``city_km`` is the distance to the city's centre: past NEAR_KM the city is only the
    nearest one, and a caller may keep just the region and country."""

    city: Place
    region: Place | None
    country: Place
    city_km: float = 0.0


@dataclass(frozen=True)
class Mention:
    """A place named in a text: ``text[start:end]`` names ``place``."""

    start: int
    end: int
    place: Place


def set_han_map(pairs: dict[str, str]) -> None:
    """The traditional -> simplified character table used by ``han_key`` (loaded from the
    data; the build script sets it before writing the data)."""
    _HAN_TABLE.clear()
    _HAN_TABLE.update({ord(k): v for k, v in pairs.items()})


def latin_key(text: str) -> str:
    """How a name is looked up: accents dropped, case folded, words joined by one space
    ("São Paulo" and "sao paulo", "St. Petersburg" and "st petersburg" meet)."""
    return " ".join(_fold(m["word"]) for m in _TOKEN.finditer(text) if m["word"])


def han_key(text: str) -> str:
    """A Chinese name in simplified characters, character for character (紐約 -> 纽约)."""
    return "".join(_han_char(ch) for ch in text)


def _fold(word: str) -> str:
    decomposed = unicodedata.normalize("NFKD", word.casefold().translate(_FOLD))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _han_char(ch: str) -> str:
    """One character normalised (compatibility ideographs -> unified), then simplified;
    always one character, so offsets in the text stay those of the original."""
    norm = unicodedata.normalize("NFKC", ch)
    ch = norm if len(norm) == 1 else ch
    return _HAN_TABLE.get(ord(ch), ch)


@dataclass
class _Span:
    """A stretch of the text that may be a name: its key and what surrounds it."""

    start: int
    end: int
    key: str
    han: bool
    capitalised: bool = False
    first: bool = False  # the text's first word
    after_preposition: bool = False
    whole: bool = False  # the only words in the text


class Gazetteer:
    """Cities, regions and countries, loaded lazily (see the module's docstring)."""

    _shared: ClassVar[Gazetteer | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, data_dir: Path | None = None) -> None:
        self._dir = data_dir
        self._lock = threading.RLock()
        self._keys: dict[str, int] | None = None  # name key -> its line in the names file
        self._table: _Table | None = None

    @classmethod
    def shared(cls, cache_dir: Path) -> Gazetteer:
        """The process's gazetteer. Nothing is read until it is first used. ``cache_dir``
        is accepted for symmetry with the other shared resources: the packaged data is
        read as it is and needs no derived cache."""
        del cache_dir
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    # -- loading ------------------------------------------------------------------------------

    def _read(self, name: str) -> bytes:
        if self._dir is not None:
            return gzip.decompress((self._dir / name).read_bytes())
        return gzip.decompress(resources.files("mmsearch").joinpath("data", name).read_bytes())

    def _names(self) -> dict[str, int]:
        """The light part: the han table and every name key (no places)."""
        with self._lock:
            if self._keys is None:
                lines = self._read("place-names.txt.gz").decode("utf-8").split("\n")
                traditional, simplified = lines[0], lines[1]
                set_han_map(dict(zip(traditional, simplified, strict=True)))
                self._keys = {key: n for n, key in enumerate(lines[2:])}
            return self._keys

    def _data(self) -> _Table:
        """The heavy part: places, ranked meanings of each name, coordinates."""
        with self._lock:
            if self._table is None:
                keys = self._names()
                raw = json.loads(self._read("places.json.gz"))
                if raw.get("format") != FORMAT:
                    raise RuntimeError(f"places data has format {raw.get('format')}, not {FORMAT}")
                self._table = _Table(raw, keys)
            return self._table

    # -- the API ------------------------------------------------------------------------------

    def locate(self, latitude: float, longitude: float) -> Location | None:
        """The city, region and country of a point; None for no valid point or no city
        within 150 km (the open sea, Antarctica)."""
        try:
            lat, lon = float(latitude), float(longitude)
        except (TypeError, ValueError):
            return None
        if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
            return None
        table = self._data()
        found = table.nearest_city(lat, lon)
        return None if found is None else table.location(*found)

    def find(self, name: str) -> list[Place]:
        """What a name may mean, best first: "Paris" (France, then Texas...), "巴黎",
        "紐約", "日本", "California", "加州". Empty when nothing is called that."""
        text = unicodedata.normalize("NFKC", name or "").strip()
        if not text:
            return []
        names = self._names()  # first: it loads the han table that han_key uses
        key = han_key(text) if _HAN_ONLY.match(text) else latin_key(text)
        if key not in names:
            return []
        table = self._data()
        return [table.place(e >> 1) for e in table.meanings(key)]

    def mentions(self, text: str) -> list[Mention]:
        """Places named in a search query, non-overlapping, longest first where names
        overlap ("New York" over "York"), in the order they appear."""
        spans = self._spans(text or "")
        names = self._names()
        spans = [s for s in spans if s.key in names]
        if not spans:
            return []
        table = self._data()
        found = []
        for span in spans:
            place = table.best_counting(span)
            if place is not None:
                found.append(Mention(span.start, span.end, place))
        found.sort(key=lambda m: (m.start - m.end, m.start))
        chosen: list[Mention] = []
        for m in found:
            if all(m.end <= c.start or m.start >= c.end for c in chosen):
                chosen.append(m)
        return sorted(chosen, key=lambda m: m.start)

    def _spans(self, text: str) -> list[_Span]:
        """Every run of up to six words and every stretch of two to twelve Chinese
        characters: the candidates looked up as names."""
        self._names()  # the han table
        tokens = list(_TOKEN.finditer(text))
        words = [t for t in tokens if t["word"]]
        spans = [s for t in tokens if t["han"] for s in _han_spans(t)]
        for i, first in enumerate(words):
            before = words[i - 1]["word"].lower() if i else ""
            for j in range(i, min(i + _MAX_WORDS, len(words))):
                if j > i and not _JOINER.match(text[words[j - 1].end() : words[j].start()]):
                    break
                start, end = first.start(), words[j].end()
                spans.append(
                    _Span(
                        start,
                        end,
                        " ".join(_fold(w["word"]) for w in words[i : j + 1]),
                        han=False,
                        capitalised=first["word"][0].isupper(),
                        first=i == 0,
                        after_preposition=before in PREPOSITIONS,
                        whole=i == 0 and j == len(words) - 1 and not any(t["han"] for t in tokens),
                    )
                )
        return spans


def _han_spans(run: re.Match[str]) -> list[_Span]:
    """Each substring of a run of Chinese characters, 2 to 12 characters long."""
    key = han_key(run.group())
    out = []
    for i in range(len(key)):
        for j in range(i + 2, min(i + _MAX_HAN, len(key)) + 1):
            out.append(_Span(run.start() + i, run.start() + j, key[i:j], han=True))
    return out


class _Table:
    """The loaded places: columns, name meanings, and cities sorted by latitude."""

    def __init__(self, raw: dict[str, Any], keys: dict[str, int]) -> None:
        import numpy as np

        self.keys = keys
        self.kind: str = raw["kind"]
        self.code: list[str] = raw["code"]
        self.name: list[str] = raw["name"]
        self.name_zh: list[str] = raw["name_zh"]
        self.cc: list[str] = raw["cc"]
        self.region: list[int] = raw["region"]
        self.population: list[int] = raw["population"]
        self.offsets: list[int] = raw["offsets"]
        self.entries: list[int] = raw["meanings"]
        self.common = frozenset(raw["common"])
        self.lat = np.array(raw["lat"], dtype=np.float64) / 100_000
        self.lon = np.array(raw["lon"], dtype=np.float64) / 100_000
        self.country = {self.code[i]: i for i, k in enumerate(self.kind) if k == "k"}
        self._places: dict[int, Place] = {}
        cities = np.flatnonzero(np.frombuffer(self.kind.encode("ascii"), np.uint8) == ord("c"))
        cities = cities[np.argsort(self.lat[cities], kind="stable")]
        self._ids = cities
        self._by_lat = self.lat[cities].tolist()
        lat, lon = np.radians(self.lat[cities]), np.radians(self.lon[cities])
        self._xyz = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)
        self._pop = np.maximum(np.array(self.population, dtype=np.float64)[cities], 1.0)

    def place(self, i: int) -> Place:
        p = self._places.get(i)
        if p is None:
            kind, code, name, zh = KINDS[self.kind[i]], self.code[i], self.name[i], self.name_zh[i]
            lat, lon = float(self.lat[i]), float(self.lon[i])
            p = Place(kind, code, name, zh, self.cc[i], lat, lon)
            self._places[i] = p
        return p

    def meanings(self, key: str) -> list[int]:
        """(place index << 1 | 1 for an alternate name), best first."""
        n = self.keys.get(key)
        return [] if n is None else self.entries[self.offsets[n] : self.offsets[n + 1]]

    def location(self, city: int, km: float) -> Location:
        region = self.region[city]
        cc = self.cc[city]
        country = self.place(self.country[cc]) if cc in self.country else Place("country", cc, cc)
        region_place = self.place(region) if region >= 0 else None
        return Location(self.place(city), region_place, country, round(km, 3))

    def nearest_city(self, lat: float, lon: float) -> tuple[int, float] | None:
        """The gravity rule within NEAR_KM, else the nearest within FAR_KM (module doc)."""
        import numpy as np

        for radius, gravity in ((NEAR_KM, True), (FAR_KM, False)):
            band = math.degrees(radius / EARTH_KM) + 1e-9
            lo = bisect_left(self._by_lat, lat - band)
            hi = bisect_right(self._by_lat, lat + band)
            if lo == hi:
                continue
            rlat, rlon = math.radians(lat), math.radians(lon)
            point = np.array([math.cos(rlat) * math.cos(rlon), math.cos(rlat) * math.sin(rlon)])
            point = np.append(point, math.sin(rlat))
            cos = np.clip(self._xyz[lo:hi] @ point, -1.0, 1.0)
            km = np.arccos(cos) * EARTH_KM
            inside = km <= radius
            if not inside.any():
                continue
            if gravity:
                score = np.where(inside, self._pop[lo:hi] / np.maximum(km, 2.0) ** 2, -1.0)
            else:
                score = np.where(inside, -km, -np.inf)
            best = int(np.argmax(score))
            return int(self._ids[lo + best]), float(km[best])
        return None

    def best_counting(self, span: _Span) -> Place | None:
        """The best meaning of the span's name that the text gives evidence for."""
        common = span.key in self.common
        for entry in self.meanings(span.key):
            i, alternate = entry >> 1, bool(entry & 1)
            if span.han:
                ok = _counts_chinese(span, self.kind[i], self.population[i], alternate, common)
            else:
                ok = _counts_english(span, self.kind[i], self.population[i], alternate, common)
            if ok:
                return self.place(i)
        return None


def _counts_english(span: _Span, kind: str, population: int, alternate: bool, common: bool) -> bool:
    """Whether an English name in a query means the place.

    A name that is also an everyday word (Nice, Reading, Orange, Bath, Split, Mobile,
    Cork, Sunset, Wedding, Turkey) counts only when written with a capital, and not as the
    text's first word, where every word may be capitalised ("Nice sunset", "Orange cat");
    a country's or a big city's (BIG_POPULATION) main name counts there too ("Turkey
    2019"). A name of several everyday words counts lower-case only for a big city ("cape
    town"; not "long beach walk"). A region named by one everyday word ("Central", "Western") never
    counts: too generic. Any other name counts when it is a country's, a region's or a big
    city's main name ("paris", "japan", "california", "san francisco"), or with a capital
    ("Versailles"), after in/at/from/near/to ("photos from versailles"), or as the whole
    query. Big is PROMINENT_POPULATION: lower, more first names read as cities ("austin").
    """
    prominent = not alternate and (kind != "c" or population >= PROMINENT_POPULATION)
    if not common:
        return prominent or span.capitalised or span.after_preposition or span.whole
    big = not alternate and (kind != "c" or population >= BIG_POPULATION)
    words = span.key.count(" ") + 1
    if kind == "r" and words == 1:
        return False
    if kind == "c" and words > 1 and big:
        return True
    return span.capitalised and (not span.first or big)


def _counts_chinese(span: _Span, kind: str, population: int, alternate: bool, common: bool) -> bool:
    """Whether a Chinese name in a query means the place.

    Chinese has no capitals or spaces, so size and length are the evidence. Never a name
    that is an everyday word or a name many places share (花园, 西湖, 太平, 新城, 中山,
    江南: ``tools/build_places.py``'s ZH_COMMON and its shared-name rule); written in full
    it counts (中山市). Names of three characters or more count (洛杉矶, 圣彼得堡); two-
    character ones count for countries and regions (日本, 法国, 浙江, 加州) and as the main
    Chinese name of a city of 100,000+ people (巴黎, 杭州, 丽江), not a stray alternate.
    """
    if common:
        return False
    if span.end - span.start >= 3:
        return True
    if kind != "c":
        return not alternate
    return not alternate and population >= ZH_CITY_POPULATION
