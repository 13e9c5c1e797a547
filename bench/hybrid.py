"""Words and vectors in one ranking, and where relevance ends, measured through the product's
public API (``Searcher.find``/``fuse``, ``eval.evaluate_*``, ``LexicalIndex``, ``rank``).

Parts (``--parts``, all by default):

- ``quality``: the README's quality table (``mmsearch eval`` on imagenet_sample with the
  reference query images, and flickr8k_cn's captions), indexed with the offline provider
  by ``MMSearch.index`` (as ``mmsearch eval`` does) into an embedded server in ``--work``.
  Each row scored with ``ranking="vector"`` (before), ``"fused"`` (the default) and
  ``"fused"`` with labels and file names left out of the lexical side (``LexicalIndex(store,
  weights={"label": 0, "file_name": 0})`` assigned to ``searcher.lexical``: imagenet_sample's
  file names and labels name the class, a user's photos won't). Then the cutoff: class
  names (en, zh) and the held-out val captions, k=50, ``Searcher.fuse(...).cut(50,
  cutoff="auto")``: results shown (median) and the share of queries whose relevant image,
  when in the top 10, is shown; and variants of the cutoff (``rank.cutoff``'s window,
  ``rank.autocut``'s jumps) on the same score lists;
- ``lion``: 狮子 over the 100 reference test images (a collection of their own);
- ``build`` / ``latency``: ``--n`` rows (``common.mixed``: real vectors and descriptions)
  in an embedded server in ``--work``, built once (``build``; kept for later runs); then
  ``Searcher.find`` end to end for text queries, ``ranking="vector"`` next to ``"fused"``
  (interleaved, same queries) in text2image and text2text, and recall@10 of the vector
  search (the vectors the searcher sent, captured) against exact search in all four
  modes, for the configured ``ef`` and ``--efs``.

    python bench/hybrid.py --parts build              # 100k rows: ~26 min on 2 loaded cores
    python bench/hybrid.py                            # quality, lion, latency
    python bench/hybrid.py --parts quality lion --captions-split val --skip-sources zh_baidu_mt
    python bench/hybrid.py --parts latency --queries 100
    python bench/hybrid.py --parts --merge RUN1.json RUN2.json --stop   # one file of both

Parts run in separate processes are joined with ``--merge`` (each keeps its machine info).

OCR is off while indexing unless ``--ocr`` (it would add ~0.6 s per image here).
Writes ``bench/results/hybrid-<time>.json`` and ``hybrid-latest.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/common.py

from mmsearch import embedded, rank  # noqa: E402
from mmsearch import eval as ev  # noqa: E402
from mmsearch.engine import MMSearch  # noqa: E402
from mmsearch.images import load_image  # noqa: E402
from mmsearch.lexical import LexicalIndex  # noqa: E402
from mmsearch.providers import get_embedder  # noqa: E402
from mmsearch.search import CUTOFF_WINDOW, Mode, Searcher  # noqa: E402
from mmsearch.sources import SourceItem, item_id  # noqa: E402
from mmsearch.store import FEATURE_FIELD, IMAGE_FIELD, TEXT_FIELD, Store  # noqa: E402

DEEP = 50  # results per query for the cutoff
IDLE_TIMEOUT = 1800.0
LABELS = common.DATASETS / "imagenet_sample" / "labels.csv"
QUERIES = common.DATASETS / "reverse_image_search" / "reverse_image_search.csv"
CAPTIONS = common.DATASETS / "flickr8k_cn" / "captions.tsv"
REFERENCE = common.DATASETS / "reverse_image_search" / "test"
#: Eval variants: (ranking, lexical weights or None for the default index).
VARIANTS = {
    "vector": ("vector", None),
    "fused": ("fused", None),
    "fused, no label/file name": ("fused", {"label": 0.0, "file_name": 0.0}),
}
#: Cutoff variants tried on the same score lists: (window, jumps).
CUT_VARIANTS = [(w, j) for w in (10, 20, 30, 50) for j in (1, 2, 3)]


def settings_for(work: Path, server: str, collection: str, ocr: bool):
    return common.offline_settings(
        uri=f"embedded:{work / server}",
        collection=collection,
        ocr=ocr,
        embedded_idle_timeout=IDLE_TIMEOUT,
    )


def indexed(mm: MMSearch, items: list[SourceItem] | Path) -> dict:
    """Index (unchanged files already in the collection are skipped by the product)."""
    t0 = time.perf_counter()
    report = mm.index(items).as_dict()
    return {k: report.get(k) for k in ("indexed", "skipped", "failed")} | {
        "seconds": round(time.perf_counter() - t0, 1)
    }


def with_lexical(mm: MMSearch, weights: dict | None) -> None:
    """The product's lexical index (None), or it with ``weights`` changed."""
    mm.searcher.__dict__.pop("lexical", None)  # a cached_property: back to the default
    if weights is not None:
        default = mm.searcher.lexical.weights
        mm.searcher.lexical = LexicalIndex(mm.store, weights={**default, **weights})


def table(scores: list[ev.Score]) -> dict[str, dict]:
    out = {}
    for s in scores:
        d = s.as_dict()
        out[f"{d['mode']}: {d['queries']}"] = {
            "n": d["n"],
            **{f"R@{k}": d[f"recall@{k}"] for k in ev.KS},
            "MRR": d["mrr"],
        }
    return out


# -- the cutoff ---------------------------------------------------------------------------


def cut_runs(mm: MMSearch, texts: list[str], relevant: list[set[str]], ranking: str) -> list[dict]:
    """Each text at k=50 through ``search_vectors`` (batched, as eval) and ``fuse``, cut by
    the product (``Ranked.cut``, cutoff="auto"); what the variants need is kept."""
    searcher, out = mm.searcher, []
    for s in range(0, len(texts), 256):
        chunk = texts[s : s + 256]
        vectors = mm.embedder.embed_texts(chunk, query=True)
        rows = searcher.search_vectors(vectors, mode=Mode.text2image, k=DEEP, texts=chunk)
        for text, row, rel in zip(chunk, rows, relevant[s : s + 256], strict=True):
            ranked = searcher.fuse(text, row, k=DEEP, ranking=ranking)
            shown, _ = ranked.cut(DEEP, cutoff="auto", min_score=None, keep_above=None)
            hits = ranked.hits
            first = next((i for i, h in enumerate(hits[:10]) if h.id in rel), None)
            out.append(
                {
                    "ranks": [(h.why.get("vector_rank"), h.why.get("lexical_rank")) for h in hits],
                    "v": ranked.vector_scores,
                    "l": ranked.lexical_scores,
                    "fused": ranked.fused,
                    "first": first,
                    "shown": len(shown),
                    "kept": first is not None and hits[first].id in {h.id for h in shown},
                }
            )
    return out


def keep_fn(window: int, jumps: int) -> Callable[[list[float]], int]:
    if jumps == 1:
        return lambda s: rank.cutoff(s, method="auto", window=window)
    return lambda s: rank.autocut(list(s[:window]), jumps=jumps)


def shown_by(run: dict, keep: Callable[[list[float]], int]) -> list[int]:
    """Positions shown under a cutoff variant (as ``Ranked.cut`` decides them)."""
    if not run["fused"]:
        return list(range(keep(run["v"][: len(run["ranks"])])))
    v = keep(run["v"]) if run["v"] else 0
    lx = keep(run["l"]) if run["l"] else 0
    return [
        i
        for i, (vr, lr) in enumerate(run["ranks"])
        if (vr is not None and vr <= v) or (lr is not None and lr <= lx)
    ]


def summary(runs: list[dict], keep: Callable | None = None) -> dict:
    shown, kept = [], []
    for r in runs:
        pos = shown_by(r, keep) if keep else None
        shown.append(len(pos) if keep else r["shown"])
        if r["first"] is not None:
            kept.append((r["first"] in pos) if keep else r["kept"])
    return {
        "queries": len(runs),
        "median_shown": statistics.median(shown),
        "mean_shown": round(statistics.mean(shown), 2),
        "relevant_in_top10": len(kept),
        "kept_share": round(sum(kept) / len(kept), 4) if kept else None,
    }


def cutoff_sets(mm_labels: MMSearch, items, mm_captions: MMSearch, folder: Path, rows) -> list:
    """(name, searcher, texts, relevant ids): class names en/zh, val captions by group."""
    by_label: dict[str, set[str]] = {}
    for it in items:
        by_label.setdefault(it.label, set()).add(item_id(it.path))
    sets = []
    for lang in ("en", "zh"):
        q = ev.label_queries(set(by_label), lang)
        labels = sorted(q)
        sets.append(
            (
                f"class names ({lang})",
                mm_labels,
                [q[x] for x in labels],
                [by_label[x] for x in labels],
            )
        )
    groups: dict[str, list] = {}
    for image, group, caption in rows:
        if group.endswith("val only"):
            groups.setdefault(group, []).append((caption, item_id(folder / image)))
    for group, pairs in sorted(groups.items()):
        sets.append(
            (f"captions ({group})", mm_captions, [c for c, _ in pairs], [{r} for _, r in pairs])
        )
    return sets


def quality(args, result: dict) -> None:
    common.require(LABELS, QUERIES, CAPTIONS)
    out = result.setdefault("quality", {"ocr": args.ocr})
    labels = settings_for(args.work, "eval-milvus", "hybrid", args.ocr)
    captions = labels.model_copy(update={"collection": "hybrid_captions"})
    with MMSearch(settings=labels) as mm, MMSearch(settings=captions) as mc:
        items = ev.list_items(LABELS)
        rows = ev.read_captions(CAPTIONS)
        if args.captions_split:  # fewer caption queries; still ranked among all 866 images
            rows = [r for r in rows if r[1].endswith(f"{args.captions_split} only")]
            rows = [r for r in rows if not any(s in r[1] for s in args.skip_sources)]
            out["captions_queried"] = f"{args.captions_split} split only, not {args.skip_sources}"
        folder = CAPTIONS.parent / "images"
        all_rows = ev.read_captions(CAPTIONS)
        cap_items = [SourceItem(folder / n) for n in sorted({r[0] for r in all_rows})]
        out["ingest"] = {"labels": indexed(mm, items), "captions": indexed(mc, cap_items)}
        print(f"[quality] ingest {out['ingest']}", flush=True)
        query_items = ev.list_items(QUERIES)
        out["eval"] = {}
        for name, (ranking, weights) in VARIANTS.items():
            t0 = time.perf_counter()
            for m in (mm, mc):
                with_lexical(m, weights)
            scores = ev.evaluate_labels(
                mm, items, query_items if ranking == "vector" else None, k=10, ranking=ranking
            )
            scores += ev.evaluate_captions(mc, rows, folder, k=10, ranking=ranking)
            out["eval"][name] = table(scores)
            out.setdefault("eval_seconds", {})[name] = round(time.perf_counter() - t0, 1)
            print(
                f"[quality] {name}: {json.dumps(out['eval'][name], ensure_ascii=False)}", flush=True
            )
            common.save_results("hybrid", result)
        for m in (mm, mc):
            with_lexical(m, None)
        out["cutoff"] = cutoffs(cutoff_sets(mm, items, mc, folder, rows))
        common.save_results("hybrid", result)


def cutoffs(sets: list) -> dict:
    out: dict[str, Any] = {"k": DEEP, "window": CUTOFF_WINDOW, "product": {}, "variants": {}}
    runs: dict[str, dict[str, list]] = {}
    for ranking in ("fused", "vector"):
        for name, mm, texts, rel in sets:
            t0 = time.perf_counter()
            runs.setdefault(ranking, {})[name] = r = cut_runs(mm, texts, rel, ranking)
            s = summary(r)
            s["seconds"] = round(time.perf_counter() - t0, 1)
            out["product"].setdefault(ranking, {})[name] = s
            print(f"[cutoff] {ranking} {name}: {json.dumps(s)}", flush=True)
    for ranking, by_set in runs.items():
        for window, jumps in CUT_VARIANTS:
            keep = keep_fn(window, jumps)
            res = {name: summary(r, keep) for name, r in by_set.items()}
            if (window, jumps) == (CUTOFF_WINDOW, 1):  # the product's own cut, recomputed
                for name, s in res.items():
                    assert s["median_shown"] == out["product"][ranking][name]["median_shown"], name
            allruns = [x for r in by_set.values() for x in r]
            res["all"] = summary(allruns, keep)
            res["meets_targets"] = all(
                s["median_shown"] <= 5 and (s["kept_share"] or 0) >= 0.9
                for n, s in res.items()
                if isinstance(s, dict)
            )
            out["variants"].setdefault(ranking, {})[f"window={window}, jumps={jumps}"] = res
    return out


def lion(args, result: dict) -> None:
    common.require(REFERENCE)
    settings = settings_for(args.work, "eval-milvus", "hybrid_lion", args.ocr)
    out: dict[str, Any] = {"query": "狮子"}
    with MMSearch(settings=settings) as mm:
        out["ingest"] = indexed(mm, REFERENCE)
        for ranking in ("fused", "vector"):
            for k in (10, DEEP):
                res = mm.searcher.find("狮子", k=k, cutoff="auto", ranking=ranking)
                names = [Path(h.origin).parent.name for h in res.hits + res.more]
                out[f"{ranking}, k={k}"] = {
                    "shown": len(res.hits),
                    "more": len(res.more),
                    "lion_rank": names.index("lion") + 1 if "lion" in names else None,
                    "lion_shown": "lion" in names[: len(res.hits)],
                    "shown_folders": names[: len(res.hits)],
                }
    result["lion"] = out
    print(f"[lion] {json.dumps(out, ensure_ascii=False)}", flush=True)
    common.save_results("hybrid", result)


# -- 100k ---------------------------------------------------------------------------------


def scale_settings(args):
    return settings_for(args.work, f"scale-{args.n}-milvus", "bench", False)


def build(args, result: dict) -> None:
    """Fill a collection of ``--n`` mixed rows once; later runs find it complete."""
    settings = scale_settings(args)
    emb = get_embedder(settings)
    real = common.real_vectors(settings, args.cache)
    store = Store(settings)
    store.open(embedder=emb.name, dim=emb.dim, feature_dim=emb.feature_dim)
    done = store.count()
    marker = args.work / f"scale-{args.n}.json"
    if done == args.n and marker.exists():
        print(f"[build] {args.n} rows already there", flush=True)
        return
    data = common.mixed(args.n, real, args.seed)
    info: dict[str, Any] = {"fill": common.fill(store, data, real)}
    info["fill"].update(common.wait_indexed(store, args.n))
    info["built_at"] = common.machine_info()["date"]
    marker.write_text(json.dumps(info))
    print(f"[build] {json.dumps(info)}", flush=True)
    store.close()


def latency(args, result: dict) -> None:
    settings = scale_settings(args)
    marker = args.work / f"scale-{args.n}.json"
    if not marker.exists():
        raise SystemExit(f"no {args.n}-row collection in {args.work}: run --parts build first")
    out: dict[str, Any] = {"n": args.n, "build": json.loads(marker.read_text())}
    embedder = get_embedder(settings)
    real = common.real_vectors(settings, args.cache)
    data = common.mixed(args.n, real, args.seed)
    searcher = Searcher(settings, embedder=embedder)
    store = searcher.store
    if store.count() != args.n:
        raise SystemExit(f"{settings.uri}: {store.count()} rows, expected {args.n}")
    out["search_params"] = settings.effective_search_params
    texts = common.text_queries(args.queries, args.seed)
    for t in texts[:5]:  # warm-up: models, gazetteer, document frequencies of a few terms
        searcher.find(t, k=10)
    for mode in (Mode.text2image, Mode.text2text):
        times: dict[str, list[float]] = {"vector": [], "fused": []}
        for i, t in enumerate(texts):
            order = ("vector", "fused") if i % 2 == 0 else ("fused", "vector")
            for ranking in order:
                t0 = time.perf_counter()
                searcher.find(t, mode=mode, k=10, ranking=ranking)
                times[ranking].append(time.perf_counter() - t0)
        out[f"find {mode.value}"] = {r: common.pct(v) for r, v in times.items()}
        print(f"[latency] {mode.value}: {json.dumps(out[f'find {mode.value}'])}", flush=True)
    # The vector search each mode sends (captured), then recall@10 per ef.
    sent: dict[str, list[tuple[np.ndarray, str]]] = {}
    inner = store.search

    def recording(vectors, *, field, k, filter=""):
        for v in np.atleast_2d(np.asarray(vectors, np.float32)):
            sent[current].append((v, field))
        return inner(vectors, field=field, k=k, filter=filter)

    result["latency"] = out
    common.save_results("hybrid", result)
    max_pixels = settings.max_image_pixels
    paths = common.query_image_paths(args.image_queries)
    images = [load_image(p, max_pixels=max_pixels).image for p in paths]
    store.search = recording  # type: ignore[method-assign]
    try:
        for mode in Mode:
            current = mode.value
            sent[current] = []
            if mode.takes_image:
                searcher.search_images(images, mode=mode, k=10)
            else:
                searcher.search_texts(texts, mode=mode, k=10)
    finally:
        store.search = inner  # type: ignore[method-assign]
    matrix = {IMAGE_FIELD: data["image"], TEXT_FIELD: data["text"], FEATURE_FIELD: data["feature"]}
    exact = {}
    for mode, pairs in sent.items():
        field = pairs[0][1]
        q = np.stack([v for v, _ in pairs])
        exact[mode] = (field, q, *common.exact_topk(matrix[field], q))
    out["recall"] = {}
    for ef in sorted({settings.effective_search_params.get("ef", 0), *args.efs}):
        store.settings = settings.model_copy(update={"search_params": {"ef": ef}})
        row: dict[str, Any] = {}
        for mode, (field, q, ex_i, ex_s) in exact.items():
            lat, ids, scores = [], [], []
            for v in q:
                t0 = time.perf_counter()
                hits = store.search(v, field=field, k=10)[0]
                lat.append(time.perf_counter() - t0)
                ids.append([common.row_number(h.id) for h in hits])
                scores.append([h.score for h in hits])
            row[mode] = {
                "field": field,
                **common.recall(ids, scores, ex_i, ex_s),
                **common.pct(lat),
            }
        out["recall"][f"ef={ef}"] = row
        print(f"[recall] ef={ef}: {json.dumps(row)}", flush=True)
        result["latency"] = out
        common.save_results("hybrid", result)
    store.settings = settings
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parts = ("quality", "lion", "build", "latency")
    ap.add_argument("--parts", nargs="*", default=["quality", "lion", "latency"], choices=parts)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-hybrid"), help="kept")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200, help="text queries at scale")
    ap.add_argument("--image-queries", type=int, default=100)
    ap.add_argument("--efs", type=int, nargs="*", default=[2048, 4096])
    ap.add_argument("--ocr", action="store_true", help="read text in photos when indexing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/bench-cache"), help="real vectors")
    ap.add_argument("--stop", action="store_true", help="stop the servers in --work at the end")
    ap.add_argument("--captions-split", help="query only this split's captions (e.g. val)")
    ap.add_argument("--skip-sources", nargs="*", default=[], help="caption sources left out")
    ap.add_argument("--vector-full", type=Path, help="an earlier run's vector-only eval")
    ap.add_argument(
        "--merge", type=Path, nargs="*", default=[], help="earlier hybrid-*.json: their other parts"
    )
    args = ap.parse_args()
    if not embedded.available():
        raise SystemExit("the embedded server needs the 'milvus' package (pip install milvus)")
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "hybrid",
        "machine": common.machine_info(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    earlier = common.RESULTS / "hybrid-20261201T035522.json"
    if earlier.exists():  # the old script's tokeniser comparison (jieba etc.), not rerun
        result["tokenisers (earlier run)"] = json.loads(earlier.read_text("utf-8"))["tokenisers"]
    if args.vector_full:  # the full caption set, vector ranking, from a run cut short
        old = json.loads(args.vector_full.read_text("utf-8"))
        result["quality, vector, all captions (earlier process)"] = {
            "run": args.vector_full.name,
            "machine": old["machine"],
            **old["quality"],
        }
    for earlier_run in args.merge:  # parts measured by other runs (processes), with their machine
        old = json.loads(earlier_run.read_text("utf-8"))
        for key in ("quality", "lion", "latency"):
            if key in old and key not in args.parts and "run" not in old[key]:
                result[key] = old[key] | {"run": earlier_run.name, "machine": old["machine"]}
    try:
        for part in ("build", "quality", "lion", "latency"):
            if part in args.parts:
                globals()[part](args, result)
    finally:
        if args.stop:
            for folder in args.work.glob("*-milvus"):
                embedded.stop_server(folder)
    if set(args.parts) != {"build"}:
        print(f"wrote {common.save_results('hybrid', result)}")


if __name__ == "__main__":
    main()
