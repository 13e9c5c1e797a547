"""Ingest on Ray (``mmsearch index --ray``) against the local runner, side by side in one run.

Three ways to index the same images into a fresh collection of the embedded Milvus server,
interleaved (the order rotating each repeat, so drift hits all alike):

- ``local``: ``MMSearch.index`` as shipped (threads decode one batch ahead of the models);
- ``ray1``: ``MMSearch.index(ray=RayOptions(actors=1))``: read tasks, one model actor,
  one writer actor;
- ``ray2``: the same with two model actors, sharing the machine's CPUs.

The Ray cluster is started once before timing (``ray.init``; its start time is reported
apart), as a cluster is up before jobs come to it; each Ray run still starts its actors,
which load the models: that cost is in its time, as it is in a real run. Models in this
process are loaded before timing. OCR is off (a pass of its own after ingest).

Reported per way: images/s (median over repeats), the time until the first batch was
written (for Ray: actors starting and loading their models), the steady rate after it,
and the ratios to ``local``. On a
2-core machine two actors share the cores one actor's threads already use, so the
ratio says what Ray costs here, not what a cluster gains; the cluster's gain is the
actor count times this per-actor rate, as long as the Milvus server keeps up (one
writer wrote 100 rows a batch in ~0.1 s here, bench/ingest.py's ``store`` stage).

    python bench/ray_ingest.py --n 200 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/common.py

from mmsearch import MMSearch, embedded  # noqa: E402
from mmsearch.distributed import RayOptions  # noqa: E402
from mmsearch.sources import SourceItem  # noqa: E402

IMAGES = common.DATASETS / "imagenet_sample" / "images"
WAYS = {"local": None, "ray1": RayOptions(actors=1), "ray2": RayOptions(actors=2)}


def one_run(settings, paths: list[Path], options: RayOptions | None) -> dict:
    """Index ``paths`` into a fresh collection one way; the collection is dropped after."""
    with MMSearch(settings=settings) as mm:
        mm.store.exists()  # connected before timing
        mm.embedder.embed_texts(["warm"], query=False)
        marks: list[tuple[float, int]] = []
        started = time.perf_counter()
        report = mm.index(
            [SourceItem(p, "") for p in paths],
            ray=options,
            progress=lambda done, _: marks.append((time.perf_counter(), done)),
        )
        wall = time.perf_counter() - started
        count = mm.store.count()
        mm.store.drop()
    if report.failed or report.indexed != len(paths) or count != len(paths):
        raise SystemExit(f"run lost images: {report.as_dict()} (rows {count})")
    (first_at, first_done), (last_at, last_done) = marks[0], marks[-1]
    return {
        "images_per_second": round(len(paths) / wall, 2),
        "seconds": round(wall, 2),
        # Until the first batch was written: for Ray, actors starting and loading models.
        "first_batch_s": round(first_at - started, 2),
        # After it: the rate a long run settles at.
        "steady_images_per_second": (
            round((last_done - first_done) / (last_at - first_at), 2) if last_at > first_at else 0.0
        ),
        "stage_seconds": {k: round(v, 2) for k, v in report.stages.items()},
        "loadavg": common.loadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if not embedded.available():
        raise SystemExit("this bench needs the embedded server (the 'milvus' package)")
    common.require(IMAGES)
    paths = sorted(IMAGES.iterdir())[: args.n]
    if len(paths) < args.n:
        raise SystemExit(f"{IMAGES} has {len(paths)} images, fewer than --n {args.n}")
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"))
    base = work / "milvus"
    settings = common.offline_settings(
        uri=f"embedded:{base}", batch_size=args.batch_size, embedded_idle_timeout=300, ocr=False
    )
    result = {
        "benchmark": "ray_ingest",
        "images": len(paths),
        "batch_size": args.batch_size,
        "machine": common.machine_info(),
        "ray": ray.__version__,
    }
    try:
        embedded.ensure_server(base, idle_timeout=300, bin_cache=settings.cache_dir)
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        result["ray_start_s"] = round(time.perf_counter() - started, 2)
        one_run(settings.model_copy(update={"collection": "warm"}), paths[:32], None)
        runs: dict[str, list[dict]] = {way: [] for way in WAYS}
        for r in range(args.repeats):
            order = list(WAYS)[r % len(WAYS) :] + list(WAYS)[: r % len(WAYS)]
            for way in order:
                collection = f"{way}_{r}"
                run = one_run(
                    settings.model_copy(update={"collection": collection}), paths, WAYS[way]
                )
                runs[way].append(run)
                print(way, json.dumps(run), flush=True)
        result["runs"] = runs
        rate = {w: float(np.median([x["images_per_second"] for x in rs])) for w, rs in runs.items()}
        result["images_per_second_median"] = rate
        result["ratio_to_local"] = {w: round(v / rate["local"], 3) for w, v in rate.items()}
        result["ray2_over_ray1"] = round(rate["ray2"] / rate["ray1"], 3)
        steady = {
            w: float(np.median([x["steady_images_per_second"] for x in rs]))
            for w, rs in runs.items()
        }
        result["steady_images_per_second_median"] = steady
        result["steady_ratio_to_local"] = {
            w: round(v / steady["local"], 3) for w, v in steady.items()
        }
    finally:
        ray.shutdown()
        embedded.stop_server(base)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    print(f"wrote {common.save_results('ray_ingest', result)}")


if __name__ == "__main__":
    main()
