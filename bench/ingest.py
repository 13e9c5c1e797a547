"""Ingest throughput, two ratios, each measured side by side in one run.

1. Pipeline / bare models: how much of the models' speed survives reading, decoding,
   resizing, describing and writing to Milvus. The bare figure runs the offline provider's
   own steps (``lite_forward`` on pre-decoded, pre-resized tensors, the ConSE mix, the
   ``image_feature`` vector, the describer, e5 on the descriptions) with nothing around
   them; the pipeline is ``MMSearch.index`` on the same images into a fresh collection.
   Interleaved, so drift hits both alike. Besides wall time, CPU seconds per image (this
   process, plus the Milvus server for the pipeline), which other jobs disturb less.
2. Re-indexing an unchanged folder (all of ``imagenet_sample``): the default run skips each
   file by its stored size and modification time without reading it; the forced run first
   clears the stored size/mtime (``Store.set_file_facts``), so every file is read and
   hashed again (then found unchanged, and its size/mtime written back). Interleaved.

The store is the default one, the embedded Milvus server, started before timing (it runs
across commands); ``--store lite`` uses a Milvus Lite file.

    python bench/ingest.py --n 300 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/common.py

from mmsearch import MMSearch, Settings, embedded  # noqa: E402
from mmsearch.images import load_image  # noqa: E402
from mmsearch.providers import get_describer, get_embedder  # noqa: E402
from mmsearch.providers.base import ImageBatch  # noqa: E402
from mmsearch.providers.offline import (  # noqa: E402
    CLASSIFIED,
    CONSE_TEMPERATURE,
    OfflineModels,
    lite_forward,
    preprocess,
)
from mmsearch.sources import SourceItem  # noqa: E402

IMAGES = common.DATASETS / "imagenet_sample" / "images"


def bare(settings: Settings, paths: list[Path], batch_size: int) -> tuple[float, float]:
    """images/s of the models alone (tensors ready, no I/O, no store), and CPU s/image."""
    models = OfflineModels.shared(settings.cache_dir)
    embedder, describer = get_embedder(settings), get_describer(settings)
    images = [load_image(p, max_pixels=settings.max_image_pixels).image for p in paths]
    batches = [
        np.stack([preprocess(im) for im in images[i : i + batch_size]])
        for i in range(0, len(images), batch_size)
    ]
    started, cpu = time.perf_counter(), common.cpu_seconds()
    with torch.inference_mode():
        for batch in batches:
            logits, pooled = lite_forward(models.classifier, torch.from_numpy(batch))
            probs = torch.softmax(logits / CONSE_TEMPERATURE, -1).numpy()
            pooled = pooled.numpy()
            models.conse(probs)
            models.image_features(probs, pooled)
            # The describer takes the classification from the batch, as in ingest.
            descriptions = describer.describe(ImageBatch([], {CLASSIFIED: (probs, pooled)}))
            embedder.embed_texts([d.text for d in descriptions], query=False)
    wall, cpu = time.perf_counter() - started, common.cpu_seconds() - cpu
    return len(paths) / wall, cpu / len(paths)


def server_cpu(settings: Settings) -> float:
    """CPU seconds of the embedded Milvus so far (0 for Lite, which runs in this process)."""
    info = embedded.status(embedded.base_dir_of(settings.uri)) if settings.is_embedded else None
    return common.cpu_seconds(info.milvus_pid) if info else 0.0


def pipeline(settings: Settings, paths: list[Path]) -> dict:
    """``MMSearch.index`` on the images, into a fresh collection (dropped afterwards);
    CPU time of this process and of the Milvus server."""
    with MMSearch(settings=settings) as mm:
        mm.store.exists()  # connect (and load the models) before timing
        mm.embedder.embed_texts(["warm"], query=False)
        cpu, milvus = common.cpu_seconds(), server_cpu(settings)
        report = mm.index([SourceItem(p, "") for p in paths])
        cpu, milvus = common.cpu_seconds() - cpu, server_cpu(settings) - milvus
        mm.store.drop()
    return {
        "images_per_second": round(report.indexed / report.seconds, 2),
        "cpu_s_per_image": round((cpu + milvus) / report.indexed, 4),
        "milvus_cpu_s": round(milvus, 2),
        "seconds": round(report.seconds, 2),
        "stage_seconds": {k: round(v, 2) for k, v in report.stages.items()},
    }


def reindex(settings: Settings, repeats: int) -> dict:
    """Index the folder once, then time re-indexing it unchanged: skipped by size+mtime,
    and forced to re-read and re-hash every file. Interleaved."""
    runs = []
    with MMSearch(settings=settings) as mm:
        first = mm.index(IMAGES)
        ids = [it.id for it in mm.store.iter_items()]
        known_s = [0.0]  # time in Store.known_files (ingest asks it once per batch)
        inner = mm.store.known_files

        def timed_known(batch_ids):
            t0 = time.perf_counter()
            try:
                return inner(batch_ids)
            finally:
                known_s[0] += time.perf_counter() - t0

        mm.store.known_files = timed_known  # type: ignore[method-assign]
        for _ in range(repeats):
            known_s[0] = 0.0
            skip = mm.index(IMAGES)
            skip_known = known_s[0]
            mm.store.set_file_facts({i: (0, 0) for i in ids})  # forget size and mtime
            known_s[0] = 0.0
            forced = mm.index(IMAGES)
            for r in (skip, forced):
                if r.unchanged != len(ids) or r.indexed or r.failed:
                    raise SystemExit(f"the folder did not re-index as unchanged: {r.as_dict()}")
            runs.append(
                {
                    "skip_s": round(skip.seconds, 3),
                    "skip_known_files_s": round(skip_known, 3),
                    "forced_rehash_s": round(forced.seconds, 3),
                    "forced_known_files_s": round(known_s[0], 3),
                    "forced_stage_seconds": {k: round(v, 3) for k, v in forced.stages.items()},
                    "loadavg": common.loadavg(),
                    "ratio_forced_over_skip": round(forced.seconds / skip.seconds, 1),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
        mm.store.drop()
    return {
        "images": len(ids),
        "first_index": {
            "seconds": round(first.seconds, 1),
            "images_per_second": round(first.images_per_second, 2),
        },
        "runs": runs,
        "ratio_median": float(np.median([r["ratio_forced_over_skip"] for r in runs])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store", choices=["embedded", "lite"], default="embedded")
    args = ap.parse_args()
    if args.store == "embedded" and not embedded.available():
        raise SystemExit("--store embedded needs the 'milvus' package; or use --store lite")
    common.require(IMAGES)
    paths = sorted(IMAGES.iterdir())[: args.n]
    if len(paths) < args.n:
        raise SystemExit(f"{IMAGES} has {len(paths)} images, fewer than --n {args.n}")

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir="/tmp"))
    base = work / "milvus"
    uri = f"embedded:{base}" if args.store == "embedded" else str(work / "bench.db")
    settings = common.offline_settings(
        uri=uri, batch_size=args.batch_size, workers=args.workers, embedded_idle_timeout=300
    )
    result = {
        "benchmark": "ingest",
        "images": len(paths),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "store": args.store,
        "machine": {**common.machine_info(), "torch_threads": torch.get_num_threads()},
    }
    try:
        if args.store == "embedded":
            t0 = time.perf_counter()
            embedded.ensure_server(base, idle_timeout=300, bin_cache=settings.cache_dir)
            result["server_start_s"] = round(time.perf_counter() - t0, 1)
        bare(settings, paths[:32], args.batch_size)  # warm-up: models and prototypes loaded
        runs = []
        for r in range(args.repeats):
            b, b_cpu = bare(settings, paths, args.batch_size)
            p = pipeline(settings.model_copy(update={"collection": f"run{r}"}), paths)
            runs.append(
                {
                    "bare_images_per_second": round(b, 2),
                    "bare_cpu_s_per_image": round(b_cpu, 4),
                    **p,
                }
            )
            runs[-1]["ratio"] = round(p["images_per_second"] / b, 3)
            runs[-1]["cpu_ratio"] = round(b_cpu / p["cpu_s_per_image"], 3)
            runs[-1]["loadavg"] = common.loadavg()
            print(json.dumps(runs[-1]), flush=True)
        result["runs"] = runs
        result["ratio_median"] = float(np.median([r["ratio"] for r in runs]))
        result["cpu_ratio_median"] = float(np.median([r["cpu_ratio"] for r in runs]))
        folder = settings.model_copy(update={"collection": "folder"})
        result["reindex_unchanged"] = reindex(folder, args.repeats)
    finally:
        if args.store == "embedded":
            embedded.stop_server(base)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    print(f"wrote {common.save_results('ingest', result)}")


if __name__ == "__main__":
    main()
