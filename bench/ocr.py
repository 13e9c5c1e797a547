"""OCR (issue 13): what the OCR pass costs next to ingest, and whether a search for the
words written on a photo finds it. Public API only: ``MMSearch.index``,
``MMSearch.enrich_ocr``, ``MMSearch.find``, ``Store.iter_items`` and ``ocr.OcrEngine``.

1. Speed, side by side in one run, each set into a fresh collection of a fresh Milvus Lite
   file in /tmp: ``MMSearch.index(folder, ocr=False)`` (images/s), then
   ``MMSearch.enrich_ocr()`` on the same collection (images/s), and their ratio per photo.
   The sets: (a) a sample of flickr8k_cn photos as they are (no text written on them;
   some hold text of their own: a shop front, a number plate), (b) the photos with text of
   the corpus below, (c) their text-free twins. The engine's gate and its full read are
   wrapped (``OcrEngine.gate`` is public for benchmarks) to count their seconds: the gate's
   share of the pass, and the cost per photo with text.
2. Search quality on the corpus (``tests/textphotos.py``, ``make_corpus(dir, N, seed)``:
   real photos with Chinese/English text written on them, and the same photos without it),
   all 2N photos indexed and read by the pass. For every phrase and every two-character
   Chinese word of the truth, ``find(q, k=10, parse=False)`` per ranking: is a photo with
   that text ranked first (any photo whose phrases contain the query counts: a phrase or
   word is often written on several), is the photo's own text-free twin ever above it?
   And the OCR read recall (the query inside the stored ``ocr_text``, both normalised), so
   a miss can be put down to OCR (not read) or to ranking (read, not first).
3. ``--sweeps`` (slow: about 4 more minutes per 100 photo pairs on 2 busy cores): the gate
   at other sizes and areas, and the confidence threshold, on the same corpus.

    .venv/bin/python bench/ocr.py --n 200 --notext-n 120
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
import common  # noqa: E402 - bench/common.py

from mmsearch import MMSearch, ocr  # noqa: E402
from tests import textphotos  # noqa: E402

RANKINGS = ("fused", "lexical", "vector")
TARGETS = {"phrase_first": 0.9, "zh_word2_first": 0.8, "twin_above": 0}
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
GATE_SIDES = (256, 320, 384)
GATE_AREAS = (4, 8, 12, 20, 40)


def norm(text: str) -> str:
    return ocr.normalize(text)


def loose(text: str) -> str:
    """Normalised, without spaces or punctuation: "Open24hours" matches "Open 24 hours"."""
    return re.sub(r"[\W_]+", "", norm(text))


def share(flags: list[bool]) -> float | None:
    return round(float(np.mean(flags)), 4) if flags else None


# -- 1. speed -----------------------------------------------------------------------------------


class Timed:
    """A callable of the engine (its gate, its full read), counting calls and seconds, and
    how many calls answered something truthy (a gate that passed, lines read)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.calls, self.truthy, self.seconds = fn, 0, 0, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            out = self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1
        self.truthy += bool(out)
        return out


@contextmanager
def timing(engine: ocr.OcrEngine) -> Iterator[tuple[Timed, Timed]]:
    """The engine's gate and full read (``read_lines``) timed while inside."""
    gate, read = Timed(engine.gate), Timed(engine.read_lines)
    engine.gate, engine.read_lines = gate, read  # type: ignore[assignment,method-assign]
    try:
        yield gate, read
    finally:
        engine.gate = gate.fn
        del engine.read_lines  # the method again


def ingest_then_ocr(mm: MMSearch, folder: Path, engine: ocr.OcrEngine) -> dict[str, Any]:
    """``index(folder, ocr=False)`` then ``enrich_ocr()`` on the same collection."""
    cpu = common.cpu_seconds()
    report = mm.index(folder, ocr=False)
    ingest_cpu = common.cpu_seconds() - cpu
    if report.failed or not report.indexed:
        raise SystemExit(f"ingest of {folder} failed: {report.as_dict()}")
    with timing(engine) as (gate, read):
        cpu = common.cpu_seconds()
        enrich = mm.enrich_ocr()
        ocr_cpu = common.cpu_seconds() - cpu
    if enrich.failed or enrich.read != report.indexed:
        raise SystemExit(f"OCR pass on {folder} failed: {enrich.as_dict()}")
    n = report.indexed
    ingest_s, ocr_s = report.seconds / n, enrich.seconds / n
    rest = enrich.seconds - gate.seconds - read.seconds
    return {
        "images": n,
        "ingest": {
            "images_per_second": round(n / report.seconds, 3),
            "seconds_per_image": round(ingest_s, 4),
            "cpu_s_per_image": round(ingest_cpu / n, 4),
            "stage_seconds": {k: round(v, 2) for k, v in report.stages.items()},
        },
        "ocr_pass": {
            "images_per_second": round(n / enrich.seconds, 3),
            "seconds_per_image": round(ocr_s, 4),
            "cpu_s_per_image": round(ocr_cpu / n, 4),
            "with_text": enrich.with_text,
            "gate_passed": gate.truthy,
            "gate_s_per_image": round(gate.seconds / max(gate.calls, 1), 4),
            "full_reads": read.calls,
            "full_read_s_each": round(read.seconds / read.calls, 4) if read.calls else None,
            "share_of_pass": {
                "gate": round(gate.seconds / enrich.seconds, 4),
                "full_read": round(read.seconds / enrich.seconds, 4),
                "decode_and_store": round(rest / enrich.seconds, 4),
            },
        },
        "ocr_over_ingest_per_image": round(ocr_s / ingest_s, 2),
        "ingest_with_ocr_images_per_second": round(n / (report.seconds + enrich.seconds), 3),
        "loadavg": common.loadavg(),
    }


def copy_sample(photos: list[Path], n: int, seed: int, out: Path) -> Path:
    """``n`` photos drawn from ``photos``, copied into ``out`` (a folder to index)."""
    out.mkdir(parents=True)
    for path in random.Random(seed).sample(photos, min(n, len(photos))):
        shutil.copy2(path, out / path.name)
    return out


# -- 2. search quality --------------------------------------------------------------------------


def queries(records: list[textphotos.TextPhoto]) -> list[tuple[str, int, str]]:
    """(kind, record number, query): every phrase and every two-character Chinese word."""
    out = []
    for i, rec in enumerate(records):
        out += [("phrase", i, p) for p in rec.phrases]
        out += [("zh_word2", i, w) for w in rec.words]
    return out


def ranks(hits: list, where: dict[Path, tuple[str, int]]) -> list[tuple[str, int] | None]:
    """Each hit as (text|plain, record number), None for a photo not of the corpus."""
    return [where.get(Path(h.origin).resolve()) for h in hits]


def quality_part(
    mm: MMSearch, records: list[textphotos.TextPhoto], rankings: tuple[str, ...], k: int
) -> dict[str, Any]:
    where = {r.path.resolve(): ("text", i) for i, r in enumerate(records)}
    where |= {r.plain_path.resolve(): ("plain", i) for i, r in enumerate(records)}
    stored: dict[tuple[str, int], str] = {}
    for item in mm.store.iter_items():
        key = where.get(Path(item.origin).resolve())
        if key is not None:
            stored[key] = item.ocr_text
    if len(stored) != 2 * len(records):
        raise SystemExit(f"{len(stored)} corpus rows stored, expected {2 * len(records)}")

    # What OCR read: the query inside the stored text (exact, normalised; and loosely).
    asked = queries(records)
    read = {(i, q): norm(q) in norm(stored["text", i]) for _, i, q in asked}
    read_loose = {(i, q): loose(q) in loose(stored["text", i]) for _, i, q in asked}
    twin_reads = [loose(q) in loose(stored["plain", i]) for _, i, q in asked]
    by: dict[str, dict[str, list[bool]]] = {"lang": {}, "style": {}, "font": {}}
    for kind, i, q in asked:
        if kind == "phrase":
            for key, groups in by.items():
                groups.setdefault(str(getattr(records[i], key)), []).append(read[i, q])
    ocr_recall = {
        kind: {
            "n": sum(1 for kd, *_ in asked if kd == kind),
            "read": share([read[i, q] for kd, i, q in asked if kd == kind]),
            "read_ignoring_spaces": share([read_loose[i, q] for kd, i, q in asked if kd == kind]),
        }
        for kind in ("phrase", "zh_word2")
    }
    ocr_recall["text_photos_with_any_text"] = share(
        [bool(stored["text", i]) for i in range(len(records))]
    )
    ocr_recall["twins_with_any_text"] = share(
        [bool(stored["plain", i]) for i in range(len(records))]
    )
    ocr_recall["twin_reads_the_query"] = share(twin_reads)
    ocr_recall["phrase_read_by"] = {
        key: {g: share(v) for g, v in sorted(groups.items())} for key, groups in by.items()
    }
    print(json.dumps({"ocr_recall": ocr_recall}, ensure_ascii=False), flush=True)

    # Who holds each query: every photo with text whose phrases contain it.
    holders = {
        q: {j for j, r in enumerate(records) if any(norm(q) in norm(p) for p in r.phrases)}
        for _, _, q in asked
    }
    result: dict[str, Any] = {
        "ocr_recall": ocr_recall,
        "queries": len(asked),
        "unique_queries": len(holders),
        "k": k,
    }
    firsts: dict[str, list[bool]] = {}
    for ranking in rankings:
        answers: dict[str, list] = {}
        seconds = []
        for q in dict.fromkeys(q for _, _, q in asked):
            started = time.perf_counter()
            hits = mm.find(q, k=k, parse=False, ranking=ranking).hits
            seconds.append(time.perf_counter() - started)
            answers[q] = ranks(hits, where)
        rows = []
        for kind, i, q in asked:
            got = answers[q]
            own = got.index(("text", i)) if ("text", i) in got else None
            twin = got.index(("plain", i)) if ("plain", i) in got else None
            rows.append(
                {
                    "kind": kind,
                    "query": q,
                    "record": i,
                    "first": bool(got)
                    and got[0] is not None
                    and got[0][0] == "text"
                    and got[0][1] in holders[q],
                    "own_first": own == 0,
                    "own_rank": own,
                    "twin_rank": twin,
                    "twin_above": twin is not None and (own is None or twin < own),
                    "read": read[i, q],
                    "top": got[0] if got else None,
                }
            )
        firsts[ranking] = [r["first"] for r in rows]
        result[ranking] = summarise(rows, records, stored, k)
        if ranking == "vector":  # the baseline: its misses are most queries, not listed
            del result[ranking]["misses"]
        result[ranking]["query_latency"] = common.pct(seconds)
        print(
            json.dumps(
                {ranking: {k_: v for k_, v in result[ranking].items() if k_ != "misses"}},
                ensure_ascii=False,
            ),
            flush=True,
        )
    if "fused" in firsts and "lexical" in firsts:
        # The fused misses that words alone rank right: lost to the vector list.
        result["fused_misses_lexical_ranks_first"] = {
            kind: sum(
                not f and lx
                for (kd, *_), f, lx in zip(asked, firsts["fused"], firsts["lexical"], strict=True)
                if kd == kind
            )
            for kind in ("phrase", "zh_word2")
        }
    return result


def summarise(rows: list[dict], records, stored, k: int) -> dict[str, Any]:
    """Shares per kind of query, misses put down to OCR or ranking, and the misses."""
    out: dict[str, Any] = {}
    for kind in ("phrase", "zh_word2"):
        mine = [r for r in rows if r["kind"] == kind]
        missed = [r for r in mine if not r["first"]]
        out[kind] = {
            "n": len(mine),
            "first": share([r["first"] for r in mine]),
            "own_photo_first": share([r["own_first"] for r in mine]),
            f"own_photo_in_top_{k}": share([r["own_rank"] is not None for r in mine]),
            "twin_above": sum(r["twin_above"] for r in mine),
            "first_when_read": share([r["first"] for r in mine if r["read"]]),
            "missed": len(missed),
            "missed_not_read_by_ocr": sum(not r["read"] for r in missed),
            "missed_read_but_ranked_lower": sum(r["read"] for r in missed),
        }
    out["meets_targets"] = {
        "phrase_first>=0.9": (out["phrase"]["first"] or 0) >= TARGETS["phrase_first"],
        "zh_word2_first>=0.8": (out["zh_word2"]["first"] or 0) >= TARGETS["zh_word2_first"],
        "twin_never_above": out["phrase"]["twin_above"] + out["zh_word2"]["twin_above"] == 0,
    }
    out["misses"] = [
        {
            "kind": r["kind"],
            "query": r["query"],
            "own_rank": r["own_rank"],
            "twin_rank": r["twin_rank"],
            "top": list(r["top"]) if r["top"] else None,
            "read": r["read"],
            "ocr_text": stored["text", r["record"]],
            **{f: getattr(records[r["record"]], f) for f in ("font", "size", "angle", "style")},
            "occluded": records[r["record"]].occluded,
        }
        for r in rows
        if not r["first"] or r["twin_above"]
    ]
    return out


# -- 3. sweeps (--sweeps) -----------------------------------------------------------------------


def sweeps(engine: ocr.OcrEngine, records: list[textphotos.TextPhoto]) -> dict[str, Any]:
    """The gate at other sides and areas, then every photo with text (and every twin the
    chosen gate passes) read at full size once, composed at each confidence threshold."""
    from PIL import Image

    def strongest(paths: list[Path], side: int) -> tuple[list[tuple[int, float]], float]:
        gate = ocr.TextGate(engine.gate.detect, side=side)
        images = [Image.open(p).convert("RGB") for p in paths]
        started = time.perf_counter()
        stats = [gate.strongest(im) for im in images]
        return stats, (time.perf_counter() - started) / len(images)

    texts, plains = [r.path for r in records], [r.plain_path for r in records]
    gate: dict[str, Any] = {"seconds_per_image": {}, "by_side": {}}
    chosen: tuple[list, list] = ([], [])
    for side in GATE_SIDES:
        (st, sec), (sp, _) = strongest(texts, side), strongest(plains, side)
        gate["seconds_per_image"][side] = round(sec, 4)
        gate["by_side"][side] = [
            {
                "min_area": a,
                "recall_on_text": share([x >= a for x, _ in st]),
                "pass_on_twins": share([x >= a for x, _ in sp]),
            }
            for a in GATE_AREAS
        ]
        if side == ocr.GATE_SIDE:
            chosen = (
                [x >= ocr.GATE_MIN_AREA for x, _ in st],
                [x >= ocr.GATE_MIN_AREA for x, _ in sp],
            )
    print(json.dumps({"gate": gate}), flush=True)

    def lines(path: Path) -> list[ocr.OcrLine]:
        return engine.read_lines(Image.open(path).convert("RGB"))

    text_lines = [lines(p) for p in texts]
    twin_lines = [lines(p) if ok else [] for p, ok in zip(plains, chosen[1], strict=True)]
    table = []
    for t in THRESHOLDS:
        phrase, phrase_loose, words, twin_hits = [], [], [], []
        for rec, tl, pl, passed in zip(records, text_lines, twin_lines, chosen[0], strict=True):
            got = ocr.compose(tl, t).text if passed else ""
            twin = ocr.compose(pl, t).text
            for p in rec.phrases:
                phrase.append(norm(p) in norm(got))
                phrase_loose.append(loose(p) in loose(got))
                twin_hits.append(bool(twin) and loose(p) in loose(twin))
            words += [norm(w) in norm(got) for w in rec.words]
        table.append(
            {
                "threshold": t,
                "phrase_recall": share(phrase),
                "phrase_recall_ignoring_spaces": share(phrase_loose),
                "zh_word2_recall": share(words),
                "twin_reads_the_phrase": share(twin_hits),
            }
        )
    print(json.dumps({"confidence": table}), flush=True)
    return {"gate": gate, "confidence": table}


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=200, help="photos with text (and as many twins)")
    ap.add_argument("--notext-n", type=int, default=120, help="flickr8k_cn photos as they are")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rankings", default=",".join(RANKINGS))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--sweeps", action="store_true", help="gate and threshold sweeps (slow)")
    ap.add_argument("--tag", default="", help="results as ocr-TAG-*.json (e.g. smoke)")
    args = ap.parse_args()
    rankings = tuple(r for r in args.rankings.split(",") if r)
    common.require(textphotos.FLICKR)
    fonts = textphotos.available_fonts()
    if not any(zh for _, zh, _ in fonts.values()):
        raise SystemExit("no Chinese font: install fonts-wqy-zenhei (see tests/textphotos.py)")
    result: dict[str, Any] = {
        "benchmark": "ocr",
        "engine": ocr.VERSION,
        "settings": {k: getattr(ocr, k) for k in dir(ocr) if k.isupper() and k[0] != "_"},
        "args": vars(args),
        "fonts": sorted(fonts),
        "machine": common.machine_info(),
    }
    name = f"ocr-{args.tag}" if args.tag else "ocr"
    started = time.perf_counter()
    t0 = time.perf_counter()
    engine = ocr.OcrEngine.shared()  # the engine enrich_ocr uses
    result["load_seconds"] = round(time.perf_counter() - t0, 2)
    work = Path(tempfile.mkdtemp(prefix="bench-ocr-", dir="/tmp"))
    try:
        photos = textphotos.dataset_photos(textphotos.FLICKR)
        notext = copy_sample(photos, args.notext_n, args.seed, work / "notext")
        t0 = time.perf_counter()
        records = textphotos.make_corpus(work / "corpus", args.n, seed=args.seed)
        result["corpus"] = {
            "n": args.n,
            "seed": args.seed,
            "generate_seconds": round(time.perf_counter() - t0, 2),
        }
        settings = common.offline_settings(uri=str(work / "bench.db"))
        # Warm up the models and Milvus Lite, in a collection dropped afterwards.
        warm = copy_sample(photos, 8, args.seed + 1, work / "warm")
        with MMSearch(settings=settings.model_copy(update={"collection": "warm"})) as mm:
            mm.index(warm, ocr=True)
            mm.find("热身 warm up", k=3, parse=False)
            mm.store.drop()

        speed: dict[str, Any] = {}
        with MMSearch(settings=settings.model_copy(update={"collection": "notext"})) as mm:
            speed["a_flickr_photos"] = ingest_then_ocr(mm, notext, engine)
            print(json.dumps({"a_flickr_photos": speed["a_flickr_photos"]}), flush=True)
            mm.store.drop()
        with MMSearch(settings=settings.model_copy(update={"collection": "textphotos"})) as mm:
            speed["b_text_photos"] = ingest_then_ocr(mm, work / "corpus" / "text", engine)
            print(json.dumps({"b_text_photos": speed["b_text_photos"]}), flush=True)
            speed["c_text_free_twins"] = ingest_then_ocr(mm, work / "corpus" / "plain", engine)
            print(json.dumps({"c_text_free_twins": speed["c_text_free_twins"]}), flush=True)
            b = speed["b_text_photos"]
            speed["cost_per_text_photo_s"] = b["ocr_pass"]["seconds_per_image"]
            speed["ocr_over_ingest_per_image"] = {
                k: v["ocr_over_ingest_per_image"] for k, v in speed.items() if isinstance(v, dict)
            }
            result["speed"] = speed
            common.save_results(name, result)
            result["quality"] = quality_part(mm, records, rankings, args.k)
            common.save_results(name, result)
        if args.sweeps:
            result["sweeps"] = sweeps(engine, records)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    print(f"wrote {common.save_results(name, result)}")


if __name__ == "__main__":
    main()
