"""Lexical search: a query's words against each photo's OCR text, description, keywords,
file name and label, ranked by BM25, inside Milvus, the same way on every kind of Milvus
mmsearch runs on.

Why not Milvus's own full-text search: the default store, the embedded Milvus 2.3 server,
has no BM25, no sparse vectors and no ``hybrid_search``; Milvus Lite 3.2 has BM25 but
its Chinese analyzer needs the ``jieba`` package and its ``standard`` analyzer finds
nothing for 狮子 (measured, ``bench/hybrid.py``). What all three have is an ARRAY field and
``array_contains_any`` (verified on Lite 3.2.2 and on the 2.3.5 server), so:

- **at ingest** each row gets ``lex_tokens`` (``row_tokens``): its distinct terms, each
  tagged with the field it came from (``o:`` OCR, ``f:`` file name, ``l:`` label,
  ``k:`` keywords, ``d:`` description), so one array tells both *whether* a row holds a
  term and *where*, which is what field weighting needs, with no second read;
- **at query time** (``LexicalIndex.search``) one ``array_contains_any`` query fetches the
  rows holding any query term with their arrays. When that fetch is complete (fewer rows
  than ``max_candidates``) the document frequencies of the fetched terms are counted in
  it; other terms (too common to fetch, or CJK single characters) get theirs from
  ``count(*)`` queries, cached. BM25F is scored here, in Python, over the candidates.

Terms (``tokenize``): Chinese (and Japanese kana) runs give single characters and
character bigrams, after folding traditional characters to simplified one for one, so
offsets stay those of the text; other scripts give case-folded words without accents,
with Harman's light English plural stemming ("dogs" -> "dog"). Offsets are Python string
indices (code points) into the stored text, for highlighting (``matches``).

A description or keyword is only as right as the model that wrote it, so their matches
weigh less than OCR, file-name and label matches (``DEFAULT_WEIGHTS``, measured in
``bench/hybrid.py``).
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from math import log
from pathlib import PurePath
from typing import Any

from mmsearch.filters import literal

#: The per-row field of tagged terms: ARRAY of VARCHAR.
TOKENS_FIELD = "lex_tokens"
#: Most terms kept per row (Milvus allows up to 4096 array elements).
TOKENS_CAPACITY = 1024
#: Longest term kept, in UTF-8 bytes (the array's element max_length).
TOKEN_MAX_BYTES = 64
#: Distinct terms of a query that count (the first ones): each may cost a count query, a
#: scan of the collection on servers without array indexes, so a long query must not
#: cost thousands of them.
MAX_QUERY_TERMS = 32
#: The OCR text field another part of mmsearch fills (VARCHAR).
OCR_FIELD = "ocr_text"
#: What ``Store`` must add to new collections, as ``pymilvus`` ``add_field`` arguments.
SCHEMA_FIELDS: tuple[dict[str, Any], ...] = (
    {
        "field_name": TOKENS_FIELD,
        "datatype": "ARRAY",
        "element_type": "VARCHAR",
        "max_capacity": TOKENS_CAPACITY,
        "max_length": TOKEN_MAX_BYTES,
    },
)

#: Searchable fields -> their tag in ``lex_tokens``, in the order terms are kept when a
#: row has more than ``TOKENS_CAPACITY`` (the surest sources first).
TAGS = {"label": "l", "file_name": "f", "ocr_text": "o", "keywords": "k", "description": "d"}
FIELD_OF_TAG = {tag: name for name, tag in TAGS.items()}
#: How much a match in each field counts: text read off the photo, its file name and its
#: folder are what the user wrote or saw; descriptions and keywords are a model's guesses.
DEFAULT_WEIGHTS: dict[str, float] = {
    "ocr_text": 1.0,
    "file_name": 1.0,
    "label": 1.0,
    "keywords": 0.5,
    "description": 0.5,
}

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_RUN = re.compile(rf"(?P<cjk>[{_CJK}]+)|(?P<word>[^\W_{_CJK}]+)")
#: Words too common to search by (English); CJK characters likewise, as single characters.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "with",
    ]
)
STOP_CHARS = frozenset("的了是在和与或也有着个只张这那之其及一把被等")


@dataclass(frozen=True)
class Token:
    """A term and where it is in the text: ``text[start:end]``. ``kind`` is ``word``,
    ``char`` (one CJK character) or ``bigram`` (two)."""

    term: str
    start: int
    end: int
    kind: str = "word"


@lru_cache(maxsize=1)
def _han_table() -> dict[int, str]:
    """Traditional -> simplified, character for character: the first two lines of the
    gazetteer's name file (``places.py`` reads the same table)."""
    data = resources.files("mmsearch").joinpath("data", "place-names.txt.gz")
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        traditional, simplified = fh.readline().rstrip("\n"), fh.readline().rstrip("\n")
    return {ord(t): s for t, s in zip(traditional, simplified, strict=True) if len(s) == 1}


def _fold_word(word: str) -> str:
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def stem(word: str) -> str:
    """Harman's S-stemmer: English plurals only ("dogs", "boxes", "puppies"), which is
    what most mismatches between a query and a caption are; never touches numbers."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[Token]:
    """The terms of a text with their offsets, in order (see the module docstring)."""
    out: list[Token] = []
    for m in _RUN.finditer(text):
        if m.lastgroup == "word":
            term = stem(_fold_word(m.group()))
            if term and term not in STOPWORDS:
                out.append(Token(term, m.start(), m.end()))
            continue
        run = m.group().translate(_han_table())
        base = m.start()
        for i, ch in enumerate(run):
            if ch not in STOP_CHARS:
                out.append(Token(ch, base + i, base + i + 1, "char"))
            if i + 1 < len(run) and not (ch in STOP_CHARS and run[i + 1] in STOP_CHARS):
                out.append(Token(run[i : i + 2], base + i, base + i + 2, "bigram"))
    return out


def terms(text: str) -> list[str]:
    """The distinct terms of a text, in order of first appearance."""
    return list(dict.fromkeys(t.term for t in tokenize(text)))


# -- the row side ---------------------------------------------------------------------------


def file_name(origin: str) -> str:
    """The part of a path that is searched: its file name (offsets of matches are in it)."""
    return PurePath(origin).name if origin else ""


def _searchable(name: str) -> str:
    """A file name without its extension (".JPEG" is in every row and means nothing)."""
    stem_, dot, ext = name.rpartition(".")
    return stem_ if dot and stem_ and len(ext) <= 5 else name


def field_texts(row: Mapping[str, Any] | Any) -> dict[str, list[str]]:
    """The searchable texts of a row, by field: a stored record (``image_description``,
    ``keywords`` as JSON, ``origin``...) or an ``Item``/``Hit`` (``description``...)."""
    if isinstance(row, Mapping):
        get = row.get
        description = get("image_description", get("description", ""))
    else:

        def get(key: str, default: Any = "") -> Any:
            return getattr(row, key, default)

        description = get("description", "")
    keywords: Any = get("keywords", []) or []
    if isinstance(keywords, str):
        try:
            keywords = json.loads(keywords)
        except json.JSONDecodeError:
            keywords = [keywords]
    return {
        "label": [str(get("label", "") or "")],
        "file_name": [file_name(str(get("origin", "") or ""))],
        "ocr_text": [str(get(OCR_FIELD, "") or "")],
        "keywords": [str(k) for k in keywords],
        "description": [str(description or "")],
    }


def _field_terms(name: str, text: str) -> Iterable[str]:
    return terms(_searchable(text) if name == "file_name" else text)


def row_tokens(row: Mapping[str, Any] | Any) -> list[str]:
    """``lex_tokens`` for a row: its distinct terms tagged by field (``"o:狮子"``), the
    surest fields first, at most ``TOKENS_CAPACITY``, each at most ``TOKEN_MAX_BYTES``."""
    out: dict[str, None] = {}
    for name, texts in field_texts(row).items():
        tag = TAGS[name]
        for text in texts:
            for term in _field_terms(name, text):
                tagged = f"{tag}:{term}"
                if len(tagged.encode("utf-8")) <= TOKEN_MAX_BYTES:
                    out.setdefault(tagged, None)
                if len(out) >= TOKENS_CAPACITY:
                    return list(out)
    return list(out)


def lexical_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The lexical fields to add to a stored record (``schema.row_record``'s output plus
    ``ocr_text``): computed from the texts as stored, so offsets match what is read back."""
    return {TOKENS_FIELD: row_tokens(record)}


# -- highlights -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """Why a result matched: ``text`` is ``field``'s value ``[start:end]`` (code points);
    for ``keywords``, of keyword number ``index``. ``file_name`` offsets are in the file
    name (the last part of ``origin``)."""

    field: str
    start: int
    end: int
    text: str
    index: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "index": self.index,
        }


def _spans(tokens: Iterable[Token], wanted: set[str]) -> list[tuple[int, int]]:
    """Offsets of the tokens whose term is wanted, overlapping or touching ones joined (狮
    and 狮子 and 子 make one span)."""
    spans = sorted((t.start, t.end) for t in tokens if t.term in wanted)
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def matches(
    row: Mapping[str, Any] | Any, query: str, *, fields: Iterable[str] | None = None
) -> list[Match]:
    """Where the query's terms occur in a row's searchable fields (any result, however it
    was found), surest fields first; empty when none does."""
    wanted = set(terms(query))
    allowed = set(fields) if fields is not None else set(TAGS)
    out: list[Match] = []
    if not wanted:
        return out
    for name, texts in field_texts(row).items():
        if name not in allowed:
            continue
        for index, text in enumerate(texts):
            searched = _searchable(text) if name == "file_name" else text
            for start, end in _spans(tokenize(searched), wanted):
                out.append(Match(name, start, end, text[start:end], index))
    return out


# -- the query side -------------------------------------------------------------------------


@dataclass(frozen=True)
class LexicalHit:
    """A row that holds query terms: its BM25F score, the query terms it holds and the
    fields they were found in."""

    id: str
    score: float
    terms: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()


@dataclass
class _Counts:
    """Document frequencies and the row count of one collection, cached for ``ttl`` s:
    they change slowly, and each count is a scan on servers without array indexes."""

    ttl: float
    rows: tuple[float, int] | None = None
    df: dict[tuple[str, ...], tuple[float, int]] = field(default_factory=dict)

    def get(self, key: tuple[str, ...]) -> int | None:
        hit = self.df.get(key)
        return hit[1] if hit and time.monotonic() - hit[0] < self.ttl else None

    def put(self, key: tuple[str, ...], value: int) -> None:
        if len(self.df) > 200_000:
            self.df.clear()
        self.df[key] = (time.monotonic(), value)


def query_tokens(text: str, *, chars: bool = True) -> tuple[list[str], list[str]]:
    """(all distinct query terms, the ones to fetch candidates by). With ``chars`` off,
    CJK single characters that a bigram covers are not fetched by (they still count in
    the score): fewer candidates, but 棕色的狗 then misses a row that says only 狗."""
    tokens = tokenize(text)
    covered = {i for t in tokens if t.kind == "bigram" for i in range(t.start, t.end)}
    all_terms = list(dict.fromkeys(t.term for t in tokens))[:MAX_QUERY_TERMS]
    fetch = [t.term for t in tokens if chars or t.kind != "char" or t.start not in covered]
    return all_terms, [t for t in dict.fromkeys(fetch) if t in all_terms]


class LexicalIndex:
    """BM25F over ``lex_tokens`` of a store's main collection.

    ``store`` needs ``client`` (a ``MilvusClient``), ``collection`` and ``count()``: a
    ``Store`` opened for reading. ``weights`` weigh fields (0 leaves one out); ``k1`` and
    ``b`` are BM25's; ``max_candidates`` bounds the rows one query reads back.
    """

    _shared: dict[tuple[str, str], _Counts] = {}
    _lock = threading.Lock()

    def __init__(
        self,
        store: Any,
        *,
        weights: Mapping[str, float] | None = None,
        k1: float = 1.2,
        b: float = 0.75,
        max_candidates: int = 1000,
        ttl: float = 60.0,
    ) -> None:
        self.store = store
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        #: The fields searched (weight > 0) and their tags.
        self.fields = [f for f, w in self.weights.items() if w > 0]
        self.tags = [TAGS[f] for f in self.fields]
        self.k1, self.b = k1, b
        self.max_candidates = max_candidates
        uri = getattr(store, "uri", None)
        if uri is None:  # a store-like object of its own: its own counts
            self.counts = _Counts(ttl)
        else:  # every index on one collection in this process shares them
            with self._lock:
                self.counts = self._shared.setdefault((uri, store.collection), _Counts(ttl))

    def _tagged(self, term: str) -> list[str]:
        return [f"{tag}:{term}" for tag in self.tags]

    def _contains(self, words: Sequence[str]) -> str:
        tagged = [literal(t) for w in words for t in self._tagged(w)]
        return f"array_contains_any({TOKENS_FIELD}, [{', '.join(tagged)}])"

    def rows(self) -> int:
        """Rows in the collection (cached like the document frequencies)."""
        now = time.monotonic()
        if self.counts.rows is None or now - self.counts.rows[0] >= self.counts.ttl:
            self.counts.rows = (now, int(self.store.count()))
        return self.counts.rows[1]

    def doc_freq(self, term: str) -> int:
        """Rows holding ``term`` in a searched field (a count query, cached)."""
        key = (term, *self.tags)
        cached = self.counts.get(key)
        if cached is None:
            res = self.store.client.query(
                self.store.collection, filter=self._contains([term]), output_fields=["count(*)"]
            )
            cached = int(res[0]["count(*)"]) if res else 0
            self.counts.put(key, cached)
        return cached

    def _fetch(self, words: Sequence[str], filter: str) -> list[dict[str, Any]]:
        expr = self._contains(words)
        if filter:
            expr = f"({filter}) and {expr}"
        return self.store.client.query(
            self.store.collection,
            filter=expr,
            output_fields=[TOKENS_FIELD],
            limit=self.max_candidates + 1,
        )

    def candidates(self, words: Sequence[str], filter: str) -> tuple[list[dict], bool]:
        """Rows holding any of ``words`` (and matching ``filter``), and whether that is all
        of them. Too many: fetch by the rarest words whose rows fit, the rest still count."""
        rows = self._fetch(words, filter) if words else []
        if len(rows) <= self.max_candidates:
            return rows, True
        ranked = sorted(words, key=self.doc_freq)
        chosen, total = [], 0
        for word in ranked:
            df = self.doc_freq(word)
            if chosen and total + df > self.max_candidates:
                break
            chosen.append(word)
            total += df
        rows = self._fetch(chosen, filter)[: self.max_candidates]
        return rows, False

    def search(self, text: str, *, k: int = 10, filter: str = "") -> list[LexicalHit]:
        """The ``k`` rows that match ``text`` best by BM25F (fewer when fewer match)."""
        all_terms, fetch = query_tokens(text)
        if not all_terms:
            return []
        rows, complete = self.candidates(fetch, filter)
        if not rows:
            return []
        parsed = [(r["id"], _by_field(r.get(TOKENS_FIELD) or [], self.tags)) for r in rows]
        df = {}
        for term in all_terms:
            if complete and not filter and term in fetch:
                df[term] = sum(1 for _, fields in parsed if any(term in f for f in fields.values()))
            else:
                df[term] = self.doc_freq(term)
        n = max(self.rows(), max(df.values(), default=0), 1)
        idf = {t: log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items() if d > 0}
        scored = self._score(parsed, idf)
        scored.sort(key=lambda h: (-h.score, h.id))
        return scored[:k]

    def _score(
        self, parsed: list[tuple[str, dict[str, set[str]]]], idf: Mapping[str, float]
    ) -> list[LexicalHit]:
        """BM25F: per term, the field-weighted, length-normalised presence, saturated once.
        Field lengths are the row's term counts per field; their means, the candidates'."""
        avg = _mean_lengths(parsed)
        out = []
        for row_id, fields in parsed:
            norm = {
                tag: self.weights[FIELD_OF_TAG[tag]]
                / (1 - self.b + self.b * len(terms_) / avg[tag])
                for tag, terms_ in fields.items()
            }
            score, held, where = 0.0, [], set()
            for term, weight in idf.items():
                tf = sum(norm[tag] for tag, terms_ in fields.items() if term in terms_)
                if tf > 0:
                    score += weight * tf * (self.k1 + 1) / (self.k1 + tf)
                    held.append(term)
                    where.update(FIELD_OF_TAG[t] for t, ts in fields.items() if term in ts)
            if score > 0:
                out.append(LexicalHit(row_id, score, tuple(held), tuple(sorted(where))))
        return out


def _by_field(tokens: Iterable[str], tags: Sequence[str]) -> dict[str, set[str]]:
    """A row's tagged terms as tag -> terms, for the searched tags only."""
    out: dict[str, set[str]] = {}
    for tagged in tokens:
        tag, _, term = tagged.partition(":")
        if tag in tags:
            out.setdefault(tag, set()).add(term)
    return out


def _mean_lengths(parsed: Sequence[tuple[str, dict[str, set[str]]]]) -> dict[str, float]:
    sums: dict[str, list[int]] = {}
    for _, fields in parsed:
        for tag, ts in fields.items():
            sums.setdefault(tag, []).append(len(ts))
    return {tag: max(sum(v) / len(v), 1.0) for tag, v in sums.items()}
