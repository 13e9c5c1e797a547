"""The default configuration at scale, end to end: what a user gets with no settings.

``Settings()`` as shipped (``embedded:DIR``, HNSW with the default parameters), a collection
with the real schema (all three vector fields, side collections on Milvus 2.3) filled with
N synthetic rows shaped like the offline provider's, then real queries through
``Searcher.search`` with the real offline models:

- text queries (English and Chinese class names and short phrases) in text2image and
  text2text: latency end to end (embedding + search), and recall@10 of the search against
  exact numpy search over the same field with the same query vector;
- image queries (held-out synthetic items, by vector) in image2image: search latency and
  recall@10;
- cold start: a fresh process that attaches to the running server and answers one query;
  and the first query after a server restart.

    python bench/default_store.py --n 100000      # ~10 min on 2 cores

Writes ``bench/results/default-store-<time>.json`` and ``default-store-latest.json``.
Synthetic rows come from ``bench/search.py``'s generator (real e5 class prototypes mixed as
the classifier's top-10 probabilities); ``image_feature`` is the matching 1000-d probability
vector, L2-normalised, as the offline embedder stores it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search as sb  # noqa: E402 - bench/search.py: data generator, machine info, percentiles

from mmsearch import Settings, embedded  # noqa: E402
from mmsearch.providers import get_embedder  # noqa: E402
from mmsearch.search import Mode, Searcher  # noqa: E402
from mmsearch.store import FEATURE_FIELD, IMAGE_FIELD, TEXT_FIELD, Item, Row, Store  # noqa: E402

K = 10
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
RESULTS = Path(__file__).resolve().parent / "results"


def real_vectors(settings: Settings, cache: Path) -> dict[str, np.ndarray]:
    """The real embedder's vectors for every image in ../shared/datasets (cached)."""
    from mmsearch.images import load_image
    from mmsearch.providers import get_describer

    embedder = get_embedder(settings)
    path = cache / f"real-{embedder.name}.npz"
    if path.exists():
        return dict(np.load(path))
    describer = get_describer(settings)
    files = sorted((DATASETS / "imagenet_sample" / "images").glob("*"))
    files += sorted((DATASETS / "flickr8k_cn" / "images").glob("*"))
    out: dict[str, list[np.ndarray]] = {"image": [], "text": [], "feature": []}
    for s in range(0, len(files), 32):
        images = [
            load_image(f, max_pixels=settings.max_image_pixels).image for f in files[s : s + 32]
        ]
        vec = embedder.embed_images(images)
        texts = [d.text for d in describer.describe(images)]
        out["image"].append(vec.shared)
        out["feature"].append(vec.features)
        out["text"].append(embedder.embed_texts(texts, query=False))
        print(f"[real] {s + len(images)}/{len(files)}", flush=True)
    arrays = {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def make_rows(n: int, real: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """n items, each a mix a*x_i + (1-a)*x_j of two real images' vectors (a in [0.6, 1]),
    the same mix in every field: convex mixes stay where the embedder's outputs live, and
    many near-duplicates make the collection as clustered as real photo libraries."""
    rng = np.random.default_rng(seed)
    m = len(real["image"])
    i, j = rng.integers(0, m, n), rng.integers(0, m, n)
    a = rng.uniform(0.6, 1.0, n).astype(np.float32)[:, None]
    rows = {k: sb.l2n(a * v[i] + (1 - a) * v[j]) for k, v in real.items()}
    rows["labels"] = i
    return rows


def fill(store: Store, data: dict[str, np.ndarray], batch: int = 1000) -> dict:
    n = len(data["image"])
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        rows = []
        for i in range(s, min(n, s + batch)):
            base = int(data["labels"][i])
            item = Item(
                id=f"img{i:08d}",
                origin=f"/photos/{i % 97:02d}/IMG_{i:07d}.jpg",
                label=f"real{base}",
                description=f"synthetic item mixing real image {base}",
                keywords=["synthetic"],
                content_hash=f"{i:064x}",
                width=640,
                height=480,
                indexed_at=1_700_000_000 + i,
            )
            rows.append(Row(item, data["image"][i], data["text"][i], data["feature"][i]))
        store.upsert(rows)
    insert_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    store.flush()
    flush_s = time.perf_counter() - t1
    # Wait until every field's index covers every row (a growing segment is searched by
    # brute force, which is not what a user sees once the index is built).
    t2 = time.perf_counter()
    client = store.client
    for field in (IMAGE_FIELD, TEXT_FIELD, FEATURE_FIELD):
        name = store._collection_of(field)
        while True:
            info = client.describe_index(name, field)
            if int(info.get("indexed_rows", 0)) >= n and not int(info.get("pending_index_rows", 0)):
                break
            time.sleep(1)
    return {
        "insert_rows_per_s": round(n / insert_s, 1),
        "insert_s": round(insert_s, 1),
        "flush_s": round(flush_s, 1),
        "index_wait_s": round(time.perf_counter() - t2, 1),
    }


def recall_at_k(got: list[list[str]], exact: np.ndarray, scores: np.ndarray, got_scores) -> dict:
    """recall@10 by ids, and counting score ties with the exact 10th as hits."""
    ids, ties = [], []
    for g, ex, sc, gs in zip(got, exact, scores, got_scores, strict=True):
        want = {f"img{int(i):08d}" for i in ex}
        ids.append(len(want & set(g)) / K)
        ties.append(min(K, sum(1 for s in gs if s >= sc[-1] - 1e-5)) / K)
    return {
        "recall_ids": round(float(np.mean(ids)), 4),
        "recall_ties": round(float(np.mean(ties)), 4),
    }


def exact(matrix: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return sb.exact_topk(matrix, queries.astype(np.float32), K)


def run_mode(searcher: Searcher, mode: Mode, queries: list, data: dict) -> dict:
    """Each query through Searcher.search, timed end to end (embedding included); the
    vector and field it searched, and the raw hits, are captured for recall."""
    captured: list[tuple[np.ndarray, str, list]] = []
    store_s: list[float] = []
    inner = searcher.store.search

    def recording(vectors, *, field, k, filter=""):
        t0 = time.perf_counter()
        hits = inner(vectors, field=field, k=k, filter=filter)
        store_s.append(time.perf_counter() - t0)
        captured.append((np.atleast_2d(np.asarray(vectors, np.float32)), field, hits))
        return hits

    searcher.store.search = recording  # type: ignore[method-assign]
    lat = []
    try:
        for q in queries[:3]:  # warm-up
            searcher.search(q, mode=mode, k=K)
        captured.clear()
        store_s.clear()
        for q in queries:
            t0 = time.perf_counter()
            searcher.search(q, mode=mode, k=K)
            lat.append(time.perf_counter() - t0)
    finally:
        searcher.store.search = inner  # type: ignore[method-assign]
    fields = {f for _, f, _ in captured}
    assert len(fields) == 1 and len(captured) == len(queries), (fields, len(captured))
    field = fields.pop()
    matrix = {IMAGE_FIELD: data["image"], TEXT_FIELD: data["text"], FEATURE_FIELD: data["feature"]}
    qv = np.concatenate([v for v, _, _ in captured])
    ex_i, ex_s = exact(matrix[field], qv)
    got = [[h.id for h in hits[0]] for _, _, hits in captured]
    got_scores = [[h.score for h in hits[0]] for _, _, hits in captured]
    return {
        "mode": mode.value,
        "field": field,
        "dim": int(qv.shape[1]),
        "queries": len(queries),
        "latency": sb.pct(lat),
        "store_search": sb.pct(store_s),  # the Milvus call alone; the rest is the models
        **recall_at_k(got, ex_i, ex_s, got_scores),
    }


def text_queries(n: int, seed: int) -> list[str]:
    """Class names in English and Chinese, and flickr8k captions in both languages."""
    import csv

    from mmsearch.providers.offline import load_classes

    rng = np.random.default_rng(seed)
    classes = load_classes()
    picks = rng.choice(len(classes), n // 2, replace=False)
    names = [
        classes[int(c)].en_name if k % 2 else classes[int(c)].zh_name for k, c in enumerate(picks)
    ]
    with open(DATASETS / "flickr8k_cn" / "captions.tsv", encoding="utf-8") as fh:
        caps = [r["caption"] for r in csv.DictReader(fh, delimiter="\t")]
    captions = [caps[int(i)] for i in rng.choice(len(caps), n - len(names), replace=False)]
    return names + captions


def cold_start(uri: str, collection: str, cache_dir: str) -> float:
    settings = f"uri={uri!r}, collection={collection!r}, cache_dir={cache_dir!r}"
    code = (
        "import time; t=time.perf_counter();"
        "from mmsearch import MMSearch, Settings;"
        f"mm=MMSearch(settings=Settings({settings}));"
        "mm.search('lion', k=10); print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 2)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200, help="per mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-name", default="default-store")
    ap.add_argument("--cache", default="/tmp/mmsearch-bench-cache", help="real-image vectors")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mmsearch-bench-"))
    defaults = Settings()
    settings = defaults.model_copy(
        update={"uri": f"embedded:{work / 'milvus'}", "collection": "bench"}
    )
    assert settings.is_embedded, "this bench measures the embedded default store"
    result: dict = {
        "machine": sb.machine_info(),
        "n": args.n,
        "uri_default": defaults.uri,
        "index_type": settings.index_type.value,
        "index_params": settings.effective_index_params,
        "search_params": settings.effective_search_params,
    }
    embedder = get_embedder(settings)
    real = real_vectors(settings, Path(args.cache))
    t = time.perf_counter()
    data = make_rows(args.n, real, args.seed)
    result["data"] = {
        "real_images": len(real["image"]),
        "dims": {k: int(v.shape[1]) for k, v in real.items()},
        "gen_s": round(time.perf_counter() - t, 1),
    }
    texts = text_queries(args.queries, args.seed)
    from mmsearch.images import load_image

    query_images = [
        load_image(p, max_pixels=settings.max_image_pixels).image
        for p in sorted((DATASETS / "reverse_image_search" / "test").glob("*/*"))[: args.queries]
    ]

    t = time.perf_counter()
    store = Store(settings)
    store.open(embedder=embedder.name, dim=embedder.dim, feature_dim=embedder.feature_dim)
    result["server_start_s"] = round(time.perf_counter() - t, 1)
    result["fill"] = fill(store, data)
    print(json.dumps(result["fill"]), flush=True)

    searcher = Searcher(settings, store=store, embedder=embedder)
    result["modes"] = [
        run_mode(searcher, Mode.text2image, texts, data),
        run_mode(searcher, Mode.text2text, texts, data),
        run_mode(searcher, Mode.image2image, query_images, data),
    ]
    for m in result["modes"]:
        print(json.dumps(m), flush=True)
    store.close()

    base = embedded.base_dir_of(settings.uri)
    info = embedded.status(base)
    result["server_rss"] = sb.rss_mb(info.milvus_pid) if info else None
    result["cold_start_attach_s"] = cold_start(settings.uri, "bench", str(settings.cache_dir))
    t = time.perf_counter()
    embedded.stop_server(base)
    result["server_stop_s"] = round(time.perf_counter() - t, 1)
    result["cold_start_after_restart_s"] = cold_start(
        settings.uri, "bench", str(settings.cache_dir)
    )  # includes starting the server again
    embedded.stop_server(base)
    result["machine"]["loadavg_end"] = sb.loadavg()

    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    text = json.dumps(result, indent=1, ensure_ascii=False)
    (RESULTS / f"{args.out_name}-{stamp}.json").write_text(text)
    (RESULTS / f"{args.out_name}-latest.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
