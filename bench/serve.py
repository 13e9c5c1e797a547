"""Serving under load: the previous release's single-process server against today's
``serve --workers 2`` (batched query embeddings), side by side in one run.

Both servers run on the same embedded Milvus server and answer from the same collection:
``imagenet_sample``'s first ``--n`` images, indexed here first with the offline provider
(OCR off). The previous release is a git commit (``--prev``, default 9819593, the last
release before ``--workers``), checked out into a worktree and run with this venv's
Python and ``PYTHONPATH`` pointing at its ``src``. Each server gets its own port.

Load: rounds of ``--clients`` concurrent clients for ``--seconds``, one server at a time,
in ``--order`` (default prev, new, new, prev: drift in the machine's other work hits both
alike), every client a loop of requests on one keep-alive connection: 2 in 3 text
queries (class names and flickr8k captions in English and Chinese, ``text2image`` or
``text2text``), 1 in 3 image queries (the 100 ``reverse_image_search`` test photos, none
of them indexed, as 320-px JPEGs, ``image2image`` or ``image2text``), the same seeded
sequence in every round. Both servers are started and warmed up first (models loaded in
every worker). Measured per server, over its rounds and per round: completed requests per
second, latency p50/p95/p99 (all, and per kind), errors (any answer but 200, or a failed
request), the CPU seconds of the server's processes (per process: how evenly the
connections were spread) and of Milvus; then the ratios new / previous.

    python bench/serve.py                      # 150 images, 4 rounds of 50 clients x 60 s
    python bench/serve.py --seconds 20 --order new,prev

Writes bench/results/serve-<time>.json and serve-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/common.py

from mmsearch import MMSearch, embedded  # noqa: E402
from mmsearch.sources import SourceItem  # noqa: E402

PREV_COMMIT = "9819593"
COLLECTION = "bench_serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prev_worktree(commit: str) -> Path:
    """A worktree of ``commit`` in /tmp (made once, reused while it is at that commit)."""
    path = Path(tempfile.gettempdir()) / f"mmsearch-prev-{commit}"
    if not (path / "src" / "mmsearch").is_dir():
        subprocess.run(
            ["git", "-C", str(common.ROOT), "worktree", "add", "--detach", str(path), commit],
            check=True,
        )
    return path


def check_prev(src: Path) -> None:
    """The previous release's server must run the previous release's code, not this one."""
    code = "import mmsearch; print(mmsearch.__file__)"
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if not out.stdout.strip().startswith(str(src)):
        raise SystemExit(f"PYTHONPATH={src} imports mmsearch from {out.stdout or out.stderr}")


def index_collection(uri: str, n: int, cache_dir: Path) -> dict[str, Any]:
    """The first ``n`` images of imagenet_sample in a fresh collection, by today's code."""
    folder = common.DATASETS / "imagenet_sample" / "images"
    common.require(folder)
    files = sorted(folder.iterdir())[:n]
    settings = common.offline_settings(
        uri=uri, collection=COLLECTION, cache_dir=cache_dir, ocr=False
    )
    with MMSearch(settings=settings) as mm:
        if mm.store.exists():
            mm.store.drop()
        started = time.perf_counter()
        report = mm.index([SourceItem(p, p.stem.split("_", 1)[1]) for p in files])
        if report.indexed != n or report.failed:
            raise SystemExit(f"indexing failed: {report.as_dict()}")
        mm.store.flush()
        return {"images": n, "index_s": round(time.perf_counter() - started, 1)}


def query_images() -> list[bytes]:
    out = []
    for path in common.query_image_paths(100):
        img = Image.open(path).convert("RGB")
        img.thumbnail((320, 320))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    if len(out) < 100:
        raise SystemExit(f"expected 100 query images, found {len(out)}")
    return out


@contextlib.contextmanager
def server(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> Iterator[dict]:
    """A server process on a free port; yields its base URL and pid once healthy."""
    port = free_port()
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "serve", "--port", str(port)] + (["--workers", "2"] if name == "new" else []),
            env={**os.environ, **env},
            cwd=logs,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield {"base": base, "pid": proc.pid, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of a process and of each of its descendants (live ones), by pid."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            out[p] = common.cpu_seconds(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


async def one_request(
    http: httpx.AsyncClient, rng: random.Random, texts: list[str], images: list[bytes]
) -> tuple[str, int]:
    if rng.random() < 2 / 3:
        mode = rng.choice(["text2image", "text2text"])
        params = {"q": rng.choice(texts), "mode": mode, "k": 10}
        return "text", (await http.get("/api/v1/search", params=params)).status_code
    mode = rng.choice(["image2image", "image2text"])
    files = {"file": ("q.jpg", rng.choice(images), "image/jpeg")}
    res = await http.post("/api/v1/search/image", files=files, data={"mode": mode, "k": "10"})
    return "image", res.status_code


async def load(
    base: str, clients: int, seconds: float, texts: list[str], images: list[bytes]
) -> tuple[list[tuple[str, int, float]], float]:
    """``clients`` loops of requests for ``seconds``; (kind, status, latency) and wall."""
    log: list[tuple[str, int, float]] = []
    deadline = time.monotonic() + seconds

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    kind, status = await one_request(http, rng, texts, images)
                except httpx.HTTPError:
                    kind, status = "failed", 0
                log.append((kind, status, time.perf_counter() - started))

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return log, time.monotonic() - started


def figures(log: list[tuple[str, int, float]], wall: float) -> dict[str, Any]:
    def lat(rows: list[tuple[str, int, float]]) -> dict[str, float]:
        a = np.array([t for _, _, t in rows]) * 1000
        if not len(a):
            return {}
        return {f"p{q}_ms": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)}

    ok = [r for r in log if r[1] == 200]
    return {
        "requests": len(log),
        "errors": len(log) - len(ok),
        "error_statuses": sorted({s for _, s, _ in log if s != 200}),
        "seconds": round(wall, 1),
        "requests_per_s": round(len(ok) / wall, 2),
        **lat(ok),
        "text": {
            "n": sum(1 for r in ok if r[0] == "text"),
            **lat([r for r in ok if r[0] == "text"]),
        },
        "image": {
            "n": sum(1 for r in ok if r[0] == "image"),
            **lat([r for r in ok if r[0] == "image"]),
        },
    }


def one_round(
    srv: dict, milvus_pid: int, args: argparse.Namespace, texts: list[str], images: list[bytes]
) -> dict[str, Any]:
    """One timed round of load on a server: its log, wall time, CPU and load average."""
    cpu0, mil0, load0 = tree_cpu(srv["pid"]), common.cpu_seconds(milvus_pid), common.loadavg()
    log, wall = asyncio.run(load(srv["base"], args.clients, args.seconds, texts, images))
    cpu1 = tree_cpu(srv["pid"])
    spent = {p: cpu1[p] - cpu0.get(p, 0.0) for p in cpu1}
    out = {
        "log": log,
        "wall": wall,
        "server_cpu_s": sum(spent.values()),
        # how evenly the kernel spread the clients' connections over the processes
        "cpu_s_per_process": sorted((round(v, 1) for v in spent.values() if v > 1), reverse=True),
        "milvus_cpu_s": common.cpu_seconds(milvus_pid) - mil0,
        "loadavg": [load0, common.loadavg()],
    }
    shown = {k: v for k, v in figures(log, wall).items() if k not in ("text", "image")}
    print(f"[{srv['name']}] {shown} loadavg {out['loadavg']}", flush=True)
    return out


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A server's figures over all its rounds, and each round's own."""
    log = [r for rnd in rounds for r in rnd["log"]]
    out = figures(log, sum(rnd["wall"] for rnd in rounds))
    out["server_cpu_s"] = round(sum(rnd["server_cpu_s"] for rnd in rounds), 1)
    out["cpu_ms_per_request"] = round(1000 * out["server_cpu_s"] / max(1, len(log)), 1)
    out["milvus_cpu_s"] = round(sum(rnd["milvus_cpu_s"] for rnd in rounds), 1)
    out["rounds"] = [
        {
            **{k: v for k, v in figures(rnd["log"], rnd["wall"]).items() if k in ROUND_KEYS},
            "server_cpu_s": round(rnd["server_cpu_s"], 1),
            "cpu_s_per_process": rnd["cpu_s_per_process"],
            "loadavg": rnd["loadavg"],
        }
        for rnd in rounds
    ]
    return out


ROUND_KEYS = ("requests", "errors", "requests_per_s", "p50_ms", "p95_ms", "p99_ms")


def run_servers(
    args: argparse.Namespace, texts: list[str], images: list[bytes], prev_src: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Index the collection on a fresh embedded server, start both servers on it, warm
    both up (every worker loads its models), then load them in turn, round by round in
    ``--order``; the collection's figures and each server's, pooled over its rounds."""
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    cache_dir = common.offline_settings().cache_dir  # class-name vectors, Milvus binaries
    base_dir = work / "milvus"
    try:
        info, _ = embedded.ensure_server(base_dir, idle_timeout=600, bin_cache=cache_dir)
        uri = f"embedded:{base_dir}"
        collection = index_collection(uri, args.n, cache_dir)
        env = {
            "MMSEARCH_URI": uri,
            "MMSEARCH_COLLECTION": COLLECTION,
            "MMSEARCH_CACHE_DIR": str(cache_dir),
            "MMSEARCH_PROVIDER": "offline",
            "MMSEARCH_OCR": "0",
        }
        envs = {"prev": {**env, "PYTHONPATH": str(prev_src)}, "new": env}
        rounds: dict[str, list[dict[str, Any]]] = {"prev": [], "new": []}
        with contextlib.ExitStack() as stack:
            servers = {}
            for name in ("prev", "new"):
                cmd = [sys.executable, "-m", "mmsearch.cli"]
                servers[name] = stack.enter_context(server(name, cmd, envs[name], work))
                servers[name]["name"] = name
                asyncio.run(load(servers[name]["base"], args.clients, args.warmup, texts, images))
            for name in args.order.split(","):
                rounds[name].append(one_round(servers[name], info.milvus_pid, args, texts, images))
    finally:
        embedded.stop_server(base_dir)
        shutil.rmtree(work, ignore_errors=True)
    return collection, {name: pooled(r) for name, r in rounds.items()}


def compare(prev: dict[str, Any], new: dict[str, Any]) -> tuple[dict, dict]:
    """The ratios new / previous, and whether the issue's target is met."""
    ratios = {
        "throughput_new_over_prev": round(new["requests_per_s"] / prev["requests_per_s"], 2),
        "p50_new_over_prev": round(new["p50_ms"] / prev["p50_ms"], 3),
        "p95_new_over_prev": round(new["p95_ms"] / prev["p95_ms"], 3),
        "p99_new_over_prev": round(new["p99_ms"] / prev["p99_ms"], 3),
    }
    target = {
        "zero_errors": prev["errors"] == 0 and new["errors"] == 0,
        "throughput_at_least_2x": ratios["throughput_new_over_prev"] >= 2.0,
        "p95_at_most_half": ratios["p95_new_over_prev"] <= 0.5,
    }
    return ratios, target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=150, help="images indexed")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per round")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of load before each")
    ap.add_argument("--prev", default=PREV_COMMIT, help="commit of the previous release")
    ap.add_argument(
        "--order", default="prev,new,new,prev", help="rounds, in order (ABBA: drift hits both)"
    )
    args = ap.parse_args()
    machine = common.machine_info()
    texts, images = common.text_queries(200), query_images()
    prev_src = prev_worktree(args.prev) / "src"
    check_prev(prev_src)
    collection, results = run_servers(args, texts, images, prev_src)
    ratios, target = compare(results["prev"], results["new"])
    result = {
        "bench": "serve",
        "machine": machine,
        "setup": {
            "prev_commit": args.prev,
            "new": "serve --workers 2, query batching (defaults: 5 ms, 32)",
            "clients": args.clients,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "collection": collection,
            "order": args.order,
            "query_texts": len(texts),
            "query_images": len(images),
        },
        "prev": results["prev"],
        "new": results["new"],
        "ratios": ratios,
        "target_met": target,
    }
    path = common.save_results("serve", result)
    print(f"ratios {ratios} target {target}\nwrote {path}")


if __name__ == "__main__":
    main()
