"""Measure the gazetteer's costs: start-up (each in a fresh process), per-call times and the
memory it adds. ``.venv/bin/python tools/places_bench.py``; prints one JSON object.

Cold numbers are the first call in a new process (page cache warm, as for a CLI run after
the first); "rss_added_mb" is resident memory after minus before, numpy and the mmsearch
package already imported (the CLI and the server import them anyway).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

CHILD = """
import json, time, numpy, mmsearch, mmsearch.filters
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
before = rss()
t0 = time.perf_counter()
from mmsearch.places import Gazetteer
imported = time.perf_counter()
g = Gazetteer.shared(None)
{call}
done = time.perf_counter()
print(json.dumps({{"import_ms": (imported - t0) * 1e3, "call_ms": (done - imported) * 1e3,
                  "rss_added_mb": rss() - before}}))
"""

CALLS = {
    "mentions_no_place": 'g.mentions("a brown dog on the grass")',
    "mentions_place": 'g.mentions("sunset in Paris")',
    "locate": "g.locate(48.8584, 2.2945)",
}


def cold() -> dict[str, dict[str, float]]:
    out = {}
    for name, call in CALLS.items():
        runs = []
        for _ in range(3):
            code = CHILD.format(call=call)
            text = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
            runs.append(json.loads(text))
        out[name] = {k: round(min(r[k] for r in runs), 1) for k in runs[0]}
    return out


def per_call(fn, args_list, repeat: int = 2000) -> float:
    """Microseconds per call, the best of three rounds."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for i in range(repeat):
            fn(*args_list[i % len(args_list)])
        best = min(best, (time.perf_counter() - started) / repeat * 1e6)
    return round(best, 1)


def warm() -> dict[str, float]:
    from mmsearch.places import Gazetteer

    g = Gazetteer()
    g.locate(0, 0)
    points = [(48.8584 + i * 0.01, 2.2945 - i * 0.01) for i in range(50)] + [(35.66, 139.73)]
    return {
        "locate_us": per_call(g.locate, points),
        "locate_mid_ocean_us": per_call(g.locate, [(0.0, -30.0)]),
        "find_us": per_call(g.find, [("Paris",), ("纽约",), ("California",)]),
        "mentions_en_us": per_call(g.mentions, [("sunset in Paris with the family",)], 500),
        "mentions_zh_us": per_call(g.mentions, [("我在巴黎圣母院门前拍的照片",)], 500),
        "mentions_no_place_us": per_call(g.mentions, [("a brown dog on the grass",)], 500),
    }


if __name__ == "__main__":
    print(json.dumps({"cold": cold(), "warm": warm()}, indent=2))
