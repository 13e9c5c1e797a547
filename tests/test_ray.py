"""`mmsearch index --ray` (issue 14): a local Ray cluster of 2 CPUs and the embedded server.

The Ray run must store what the local runner stores, and faults (a model actor killed
with SIGKILL mid-run, the driver killed and the run started again) must end with every
image stored exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmsearch import MMSearch, Settings, embedded
from mmsearch.distributed import RayOptions
from mmsearch.store import FEATURE_FIELD, IMAGE_FIELD, TEXT_FIELD, StoreError

from .conftest import REVERSE_CSV, _free_port

ray = pytest.importorskip("ray")

pytestmark = [
    pytest.mark.datasets,
    pytest.mark.skipif(not embedded.available(), reason="the embedded server is not installed"),
]

VECTORS = (IMAGE_FIELD, TEXT_FIELD, FEATURE_FIELD)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray of 2 CPUs, as the issue measured it (whole-CPU actors hung it), started
    by ``ray start`` in a session of its own, and this process connected to it.

    Why not ``ray.init(num_cpus=2)`` here: it forks Ray's daemons from this process, which
    by now runs many gRPC threads (earlier tests' Milvus clients), and in one CI run the
    raylet never started ("timed out during startup", no raylet log). ``ray start`` forks
    them from a fresh process; its reaper stops them all when it ends.
    """
    port = _free_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block"]
        + ["--port", str(port), "--num-cpus", "2", "--include-dashboard", "false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # `ray start` turns on token auth, whose token the test's clients would need.
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    address = f"127.0.0.1:{port}"
    try:
        _connect(address, head)
        yield address
    finally:
        ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(60)


def _connect(address: str, head: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            ray.init(address=address, log_to_driver=False)
            return
        except ConnectionError:
            assert head.poll() is None, "ray start ended"
            assert time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(1)


def _settings(server: Path, cache_dir: Path, collection: str, **more) -> Settings:
    return Settings(uri=f"embedded:{server}", collection=collection, cache_dir=cache_dir, **more)


@pytest.fixture(scope="module")
def local_rows(reverse_index):
    """The 100 reference images as the local runner indexed them (the session's Lite
    copy, which the search tests use too): what Ray must reproduce."""
    return _rows(reverse_index)


def _rows(mm: MMSearch) -> dict[str, dict]:
    ids = [item.id for item in mm.store.iter_items()]
    assert len(ids) == len(set(ids)) == mm.store.count()
    return {r["id"]: r for r in mm.store.get(ids, with_vectors=True)}


def test_ray_stores_what_the_local_runner_stores(cluster, embedded_server, cache_dir, local_rows):
    with MMSearch(settings=_settings(embedded_server, cache_dir, "ray100")) as mm:
        report = mm.index(REVERSE_CSV, ray=RayOptions(actors=2))
        assert (report.indexed, report.total, report.failed) == (100, 100, [])
        assert {"read_decode", "embed_images", "describe", "store"} <= set(report.stages)
        ray_rows = _rows(mm)
        again = mm.index(REVERSE_CSV, ray=RayOptions())
        assert (again.indexed, again.unchanged) == (0, 100)
    assert ray_rows.keys() == local_rows.keys()
    for id_, mine in ray_rows.items():
        theirs = local_rows[id_]
        for name, value in theirs.items():
            if name in VECTORS:
                np.testing.assert_allclose(mine[name], value, atol=1e-4, err_msg=name)
            elif name != "indexed_at":
                assert mine[name] == value, (id_, name)


def _actor_pids(stage: str) -> set[int]:
    """Processes of Ray Data's actors for ``stage`` (their titles name the class)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if stage.encode() in title and b"MapWorker" in title:
                pids.add(int(entry.name))
    return pids


def test_a_model_actor_killed_mid_run_costs_nothing(
    cluster, embedded_server, cache_dir, local_rows, monkeypatch
):
    """Also the bulk-import path: from bulkload's crossover on (here lowered to 50 files),
    rows come back to the driver and go in by Milvus's bulk import."""
    from mmsearch import bulkload

    monkeypatch.setattr(bulkload, "BULK_IMPORT_MIN_ROWS", 50)
    writes: list[bulkload.BulkReport] = []
    real_write = bulkload.write
    monkeypatch.setattr(
        bulkload, "write", lambda *a, **kw: writes.append(real_write(*a, **kw)) or writes[-1]
    )
    settings = _settings(embedded_server, cache_dir, "raykill", batch_size=8)
    killed: list[int] = []

    def kill_once(done: int, total: int) -> None:
        if done >= 24 and not killed:
            pids = _actor_pids("_ModelStage")
            assert pids, "no model actor found to kill"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)

    with MMSearch(settings=settings) as mm:
        report = mm.index(REVERSE_CSV, ray=RayOptions(actors=1), progress=kill_once)
        assert killed, "the run ended before the kill"
        assert (report.indexed, report.failed) == (100, [])
        assert [(w.method, w.imported) for w in writes] == [("import", 100)]
        assert _rows(mm).keys() == local_rows.keys()  # exactly 100 rows, none twice


def _index_cli(settings: Settings, address: str, *more: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSEARCH_")}
    env |= {
        "MMSEARCH_URI": settings.uri,
        "MMSEARCH_COLLECTION": settings.collection,
        "MMSEARCH_CACHE_DIR": str(settings.cache_dir),
        "MMSEARCH_BATCH_SIZE": str(settings.batch_size),
        "MMSEARCH_OCR": "0",
    }
    cmd = [sys.executable, "-m", "mmsearch.cli", "index", str(REVERSE_CSV), "--json"]
    return subprocess.Popen(
        [*cmd, "--ray-address", address, *more],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_driver_killed_and_run_again_indexes_each_image_once(
    cluster, embedded_server, cache_dir, local_rows
):
    settings = _settings(embedded_server, cache_dir, "raydriver", batch_size=8)
    first = _index_cli(settings, cluster)
    with MMSearch(settings=settings) as mm:
        deadline = time.monotonic() + 300
        while not (mm.store.exists() and mm.store.count() >= 16):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "nothing written in 300 s"
            time.sleep(0.2)
        first.kill()
        first.wait()
        written = mm.store.count()
        assert written < 100, "the run ended before the kill"
        second = _index_cli(settings, cluster)
        out, err = second.communicate(timeout=600)
        assert second.returncode == 0 and "Traceback" not in err, err
        report = json.loads(out)
        assert report["indexed"] + report["unchanged"] == 100 and not report["failed"]
        assert report["unchanged"] >= written  # what was stored is not embedded again
        assert _rows(mm).keys() == local_rows.keys()


def test_a_lite_file_is_refused_with_the_reason(tmp_path, cache_dir):
    settings = Settings(uri=str(tmp_path / "lite.db"), cache_dir=cache_dir)
    with MMSearch(settings=settings) as mm, pytest.raises(StoreError, match="Lite file"):
        mm.index(REVERSE_CSV, ray=RayOptions())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSEARCH_")}
    env |= {"MMSEARCH_URI": settings.uri, "MMSEARCH_CACHE_DIR": str(cache_dir)}
    run = subprocess.run(
        [sys.executable, "-m", "mmsearch.cli", "index", str(REVERSE_CSV), "--ray"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "Lite file" in run.stderr + run.stdout
    assert not (tmp_path / "lite.db").exists()  # refused before anything was written


def test_the_ocr_pass_runs_on_the_actors_and_reads_what_a_local_pass_reads(
    cluster, embedded_server, cache_dir, tmp_path
):
    from mmsearch import enrich
    from mmsearch.ocr import VERSION, OcrEngine

    from . import textphotos

    if not any(zh for _, zh, _ in textphotos.available_fonts().values()):
        pytest.skip("no Chinese font installed (Debian: fonts-wqy-zenhei)")
    truth = textphotos.make_corpus(tmp_path, 4, seed=5)
    settings = _settings(embedded_server, cache_dir, "rayocr", ocr=True)
    with MMSearch(settings=settings) as mm:
        report = mm.index(tmp_path, ray=RayOptions(actors=1))
        assert report.indexed == 8 and report.ocr is not None
        assert (report.ocr.pending, report.ocr.read, report.ocr.failed) == (8, 8, [])
        items = {Path(it.origin).name: it for it in mm.store.iter_items()}
    assert {it.ocr_version for it in items.values()} == {VERSION}
    local = enrich.EnrichReport()
    ordered = list(items.values())
    read_here = enrich.read_batch(OcrEngine.shared(), ordered, settings.max_image_pixels, local)
    assert {i: c["ocr_text"] for i, c in read_here.items()} == {
        it.id: it.ocr_text for it in ordered
    }
    assert report.ocr.with_text >= len(truth) - 1  # a text photo or two may read nothing


def test_an_address_nothing_answers_on_is_refused_at_once():
    """`ray.init` retried a closed port for minutes, printing warnings; mmsearch says so
    in one line instead (the CLI's user error)."""
    from mmsearch.distributed import RayError, check_reachable

    started = time.monotonic()
    for address in (f"127.0.0.1:{_free_port()}", f"ray://127.0.0.1:{_free_port()}"):
        with pytest.raises(RayError, match="cannot reach the Ray cluster"):
            check_reachable(address)
    with pytest.raises(RayError, match="bad Ray address"):
        check_reachable("127.0.0.1")
    assert time.monotonic() - started < 30
    check_reachable("auto")


def test_the_cli_refuses_a_dead_address_in_one_line_before_anything_starts(
    tmp_path, cache_dir, monkeypatch
):
    from typer.testing import CliRunner

    from mmsearch.cli import app

    monkeypatch.setenv("MMSEARCH_URI", f"embedded:{tmp_path / 'server'}")
    monkeypatch.setenv("MMSEARCH_CACHE_DIR", str(cache_dir))
    address = f"127.0.0.1:{_free_port()}"
    res = CliRunner().invoke(app, ["index", str(REVERSE_CSV), "--ray-address", address])
    assert res.exit_code == 1
    # The error alone (wrapped to the terminal), with no progress bar drawn before it.
    assert res.output.lstrip().startswith("error: cannot reach the Ray cluster"), res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "server").exists()  # no server started, no store opened
