"""Indexing 1,000 images through DashScope: the tutorial's one-item requests vs batched ones.

Both runs index the same 1,000 ``imagenet_sample`` images with ``MMSearch.index`` and the
``dashscope`` provider (embeddings and descriptions) into a fresh Milvus Lite file, against
the DashScope protocol server of the tests (``tests/fake_dashscope.py``), which enforces
each model's documented limits (contents and images per request) and answers after a
fixed per-request latency. Only the embedding model differs:

- ``tutorial``: multimodal-embedding-v1, one image or one text per request (the reference
  tutorial's settings);
- ``batched``: tongyi-embedding-vision-plus, up to 8 images or 20 texts per request;

both with qwen-vl-plus describing each image (one per request: a chat model answers one
image at a time), ``requests_per_minute`` = 120 and ``max_concurrency`` = 4.

At 120 requests a minute the tutorial's run (about 3,000 requests) takes 25 minutes, so
the bench compresses time by ``--scale`` (20 by default): the rate limit is multiplied and
the latency divided by it (2,400 requests/min, 300 ms / 20 = 15 ms), which keeps every
request's share of the minute as it is. Local work (decoding, encoding the JPEG sent,
writing to Milvus) is not compressed; the JSON gives the measured seconds, the seconds
the requests alone need at the real rate (requests / 2 per second), a projection to the
real rate (the measured time with the waits for the rate limit stretched back by the
scale, local work left as measured), and the ratios of the two runs' times. The server's
log is checked: requests per model, items per request, and that the rate limit held (no
window carried more than the token bucket allows, with 0.15 s of arrival jitter).

    python bench/dashscope.py                 # ~3 minutes on 2 cores
    python bench/dashscope.py --n 300 --scale 40
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# This file is named like the SDK: keep its folder behind site-packages, so that the
# provider's ``import dashscope`` finds the SDK, and ``import common`` still finds ours.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH] + [str(BENCH)]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402 - bench/common.py

from mmsearch import MMSearch, Settings  # noqa: E402
from mmsearch.estimate import estimate_index  # noqa: E402
from tests.fake_dashscope import EMBEDDING_PATH, FakeDashScope, max_excess  # noqa: E402

KEY = "sk-bench-0123456789"
RPM = 120  # the tutorial's rate limit (multimodal-embedding-v1's documented RPM)
LATENCY = 0.3  # seconds a DashScope request takes, a realistic figure for small requests
#: Seconds of arrival jitter allowed when checking the rate (as tests/test_dashscope.py).
SLACK = 0.15
RUNS = {
    "tutorial": "multimodal-embedding-v1",
    "batched": "tongyi-embedding-vision-plus",
}


def catalog(n: int) -> Path:
    """imagenet_sample's CSV (id,path,label), which lists at least ``n`` images."""
    labels = common.DATASETS / "imagenet_sample" / "labels.csv"
    common.require(labels)
    with labels.open(newline="", encoding="utf-8") as f:
        listed = sum(1 for _ in csv.DictReader(f))
    if listed < n:
        raise SystemExit(f"{labels} lists {listed} images, fewer than --n {n}")
    return labels


def one_run(name: str, model: str, csv_path: Path, n: int, scale: float, tmp: Path) -> dict:
    """Index ``n`` images with ``model`` at the compressed rate; what the server saw."""
    rpm = RPM * scale
    with FakeDashScope(api_key=KEY, latency=LATENCY / scale) as srv:
        settings = Settings(
            uri=str(tmp / f"{name}.db"),
            cache_dir=tmp / "cache",
            provider="dashscope",
            dashscope_base_url=srv.url + "/api/v1",
            dashscope_api_key=KEY,
            dashscope_embedding_model=model,
            requests_per_minute=rpm,
            index_type="FLAT",
            ocr=False,
        )
        estimate = estimate_index(n, settings)
        started = time.perf_counter()
        with MMSearch(settings=settings) as mm:
            report = mm.index(csv_path, limit=n)
        seconds = time.perf_counter() - started
        log = srv.requests()
    if report.indexed != n or report.failed:
        raise SystemExit(f"{name}: indexed {report.indexed} of {n}; failed {report.failed[:3]}")
    return summarize(name, model, log, seconds, rpm, scale, estimate.requests, report)


def summarize(
    name: str, model: str, log: list, seconds: float, rpm: float, scale: float, est: int, report
) -> dict[str, Any]:
    times = [r.t for r in log]
    embeds = [r for r in log if r.path == EMBEDDING_PATH]
    per_request = Counter(r.items for r in embeds)
    return {
        "embedding_model": model,
        "indexed": report.indexed,
        "requests": len(log),
        "requests_estimated": est,
        "requests_by_model": dict(Counter(r.model for r in log)),
        "embedding_items_per_request": {str(k): v for k, v in sorted(per_request.items())},
        "statuses": dict(Counter(r.status for r in log)),
        "seconds_measured": round(seconds, 2),
        # The waits for the rate limit stretched back to 120/min; local work left as it was.
        "seconds_projected_real_time": round(seconds + len(log) / (RPM / 60) * (1 - 1 / scale), 1),
        "seconds_real_time_requests_only": round(len(log) / (RPM / 60), 1),
        # Requests beyond what the token bucket allows in the worst window, counted on
        # arrival with SLACK seconds of jitter (threads on a busy machine): <= 0 held.
        "rate_excess_requests": round(max_excess(times, rate=rpm / 60, burst=1, slack=SLACK), 2),
        "rate_limit_held": max_excess(times, rate=rpm / 60, burst=1, slack=SLACK) <= 0,
        "requests_per_minute_compressed": rpm,
        "requests_per_minute_achieved": round(60 * (len(times) - 1) / (max(times) - min(times)), 1),
        "stage_seconds": {k: round(v, 2) for k, v in report.stages.items()},
        "name": name,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images to index")
    parser.add_argument("--scale", type=float, default=20.0, help="time compression")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "machine": common.machine_info(),
        "n": args.n,
        "scale": args.scale,
        "real_requests_per_minute": RPM,
        "real_latency_s": LATENCY,
        "compressed": {"requests_per_minute": RPM * args.scale, "latency_s": LATENCY / args.scale},
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        csv_path = catalog(args.n)
        for name, model in RUNS.items():
            run = one_run(name, model, csv_path, args.n, args.scale, tmp)
            result["runs"][name] = run
            print(f"{name}: {run['requests']} requests, {run['seconds_measured']} s", flush=True)
    tutorial, batched = result["runs"]["tutorial"], result["runs"]["batched"]
    result["ratio_measured"] = round(tutorial["seconds_measured"] / batched["seconds_measured"], 2)
    result["ratio_projected_real_time"] = round(
        tutorial["seconds_projected_real_time"] / batched["seconds_projected_real_time"], 2
    )
    result["ratio_requests"] = round(tutorial["requests"] / batched["requests"], 2)
    path = common.save_results("dashscope", result)
    print(
        f"tutorial {tutorial['seconds_measured']} s vs batched {batched['seconds_measured']} s: "
        f"{result['ratio_measured']}x faster ({result['ratio_requests']}x fewer requests); "
        f"at the real 120/min: {tutorial['seconds_projected_real_time'] / 60:.1f} min vs "
        f"{batched['seconds_projected_real_time'] / 60:.1f} min "
        f"({result['ratio_projected_real_time']}x). {path}"
    )


if __name__ == "__main__":
    main()
