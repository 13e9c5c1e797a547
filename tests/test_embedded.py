"""The embedded Milvus server behind ``embedded:DIR`` URIs, the default store: started on
first use, shared by processes, stopped when told or when idle, data kept across restarts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mmsearch import MMSearch, Settings, embedded

from .conftest import LION, REVERSE_CSV, serving

pytestmark = pytest.mark.skipif(
    not embedded.available(), reason="the milvus package (Linux x86_64) is not installed"
)


def _cli(cwd: Path, env: dict[str, str], *args: str, timeout: float = 600):
    return subprocess.run(
        [sys.executable, "-m", "mmsearch.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(cache_dir: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSEARCH_")}
    return {**env, "MMSEARCH_CACHE_DIR": str(cache_dir), **more}


@contextlib.contextmanager
def _own_server(base: Path, cache_dir: Path, idle_timeout: float = 0):
    """A server started for the test in ``base``, stopped at the end whatever happens."""
    try:
        yield embedded.ensure_server(base, idle_timeout=idle_timeout, bin_cache=cache_dir)
    finally:
        embedded.stop_server(base)


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not embedded.pid_alive(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.datasets
def test_default_store_from_first_index_to_restart(tmp_path, cache_dir):
    """What a user does in an empty folder with no configuration at all."""
    env = _env(cache_dir)
    base = tmp_path / "mmsearch-milvus"
    try:
        assert _cli(tmp_path, env, "server", "status").returncode == 3

        done = _cli(tmp_path, env, "index", str(REVERSE_CSV), "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["indexed"] == 100
        status = _cli(tmp_path, env, "server", "status", "--json")
        assert status.returncode == 0, status.stdout
        info = json.loads(status.stdout)
        assert Path(info["base_dir"]) == base.resolve()
        # The 246 MB of server binaries are unpacked once per machine, not per folder.
        assert (base / "bin").is_symlink()
        assert (base / "bin").resolve().is_relative_to(cache_dir.resolve())

        # Another process attaches to the same server, and several may write at once
        # (with a Milvus Lite file the second one is refused).
        settings = Settings(uri=f"embedded:{base}", cache_dir=cache_dir)
        with MMSearch(settings=settings) as mm:
            assert mm.store.count() == 100
            more = _cli(tmp_path, env, "index", str(LION.parent), "--json")
            assert more.returncode == 0, more.stderr
            assert json.loads(more.stdout)["unchanged"] == 1  # the lion is already there
            hits = mm.search("狮子", k=3)
            assert "lion" in [h.label for h in hits]
        found = _cli(tmp_path, env, "search", "lion", "--json", "-k", "3")
        assert found.returncode == 0, found.stderr
        assert "lion" in [h["label"] for h in json.loads(found.stdout)["hits"]]
        assert embedded.status(base).supervisor_pid == info["supervisor_pid"]

        stopped = _cli(tmp_path, env, "server", "stop")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        assert _wait_gone(info["milvus_pid"], 10) and _wait_gone(info["supervisor_pid"], 10)
        assert _cli(tmp_path, env, "server", "status").returncode == 3
        log = base / "logs" / "supervisor.log"
        stop_log = log.read_text()
        assert re.search(r"ended [1-9]\d* etcd sessions", stop_log), stop_log[-2000:]

        # The next command starts it again; everything indexed is still there, and the
        # first query does not wait for the cluster clock (Session consistency).
        again = _cli(tmp_path, env, "search", "--image", str(LION), "--json", "-k", "1")
        assert again.returncode == 0, again.stderr
        first = json.loads(again.stdout)["hits"][0]
        assert first["label"] == "lion" and first["score"] > 0.99
        stats = json.loads(_cli(tmp_path, env, "stats", "--json").stdout)
        assert stats["count"] == 100 and stats["uri"] == "embedded:./mmsearch-milvus"
        # Its sessions ended with it: the new start did not wait for them to expire.
        assert "waited for old etcd sessions" not in log.read_text()[len(stop_log) :]
    finally:
        embedded.stop_server(base)


def test_idle_server_stops_unless_a_process_holds_it(tmp_path, cache_dir):
    base = tmp_path / "idle"
    with _own_server(base, cache_dir, idle_timeout=2) as (info, started):
        assert started
        # A second caller attaches instead of starting another server.
        again, started_again = embedded.ensure_server(base, idle_timeout=2, bin_cache=cache_dir)
        assert not started_again and again == info

        holder = embedded.add_holder(base)
        time.sleep(2 * embedded.POLL_SECONDS + 2)
        assert embedded.status(base) == info, "stopped while a process held it"

        embedded.remove_holder(holder)
        assert _wait_gone(info.supervisor_pid, 4 * embedded.POLL_SECONDS + 20)
        assert not embedded.pid_alive(info.milvus_pid)
        assert not (base / embedded.STATE_FILE).exists()
        assert embedded.status(base) is None


def test_a_killed_server_is_replaced_on_next_use(tmp_path, cache_dir):
    """After a crash (or reboot) the stale state file must not block the next command. A
    killed supervisor takes its Milvus with it: a Milvus left running on the folder's data
    would be corrupted by the next one."""
    base = tmp_path / "crash"
    with _own_server(base, cache_dir) as (info, _):
        os.kill(info.supervisor_pid, signal.SIGKILL)
        assert _wait_gone(info.milvus_pid, 10)
        assert embedded.status(base) is None
        fresh, started = embedded.ensure_server(base, idle_timeout=0, bin_cache=cache_dir)
        assert started and fresh.milvus_pid != info.milvus_pid


def test_a_leftover_milvus_on_the_folder_is_named_at_once(tmp_path, cache_dir):
    """Each folder has its own server now (see test_embedded_security); what can still
    block a start is a Milvus left running on the same data (by an older mmsearch): the
    error names it, instead of a second Milvus corrupting the data or a long timeout."""
    base = tmp_path / "taken"
    base.mkdir()
    fake = str(base / "bin" / "milvus")
    leftover = subprocess.Popen(  # looks like `milvus run standalone` running in base
        [fake, "-c", "import time; time.sleep(60)", "run", "standalone"],
        executable=sys.executable,
        cwd=base,
    )
    try:
        while not Path(f"/proc/{leftover.pid}/cmdline").read_bytes().startswith(fake.encode()):
            time.sleep(0.01)  # until it has exec'd
        started = time.monotonic()
        with pytest.raises(embedded.EmbeddedServerError, match=f"process {leftover.pid}"):
            embedded.ensure_server(base, idle_timeout=0, bin_cache=cache_dir)
        assert time.monotonic() - started < 5
    finally:
        leftover.kill()
        leftover.wait()
        embedded.stop_server(base)


def test_server_commands_refuse_other_uris(tmp_path, cache_dir):
    env = _env(cache_dir, MMSEARCH_URI=str(tmp_path / "x.db"))
    out = _cli(tmp_path, env, "server", "status")
    assert out.returncode == 1 and "not an embedded:DIR URI" in " ".join(out.stderr.split())


def test_after_kill_9_no_command_sees_fewer_rows_and_nothing_is_embedded_twice(tmp_path, cache_dir):
    """Issue 10: after the Milvus process was killed, `mmsearch stats` said 0 for 10-20 s and
    an index run embedded 64 of 100 images again; `serve` answered 500 until someone else
    restarted the server. Rows here are not flushed, so the restart must replay them."""
    from mmsearch.demo import sample_photos

    photos = tmp_path / "photos"
    photos.mkdir()
    for item in sample_photos()[:6]:
        shutil.copy(item.path, photos / item.path.name)
    base = tmp_path / "store"
    env = _env(cache_dir, MMSEARCH_URI=f"embedded:{base}")
    try:
        first = _cli(tmp_path, env, "index", str(photos), "--json")
        assert first.returncode == 0 and json.loads(first.stdout)["indexed"] == 6, first.stderr
        with serving(env, tmp_path) as (url, _):
            assert httpx.get(f"{url}/api/v1/stats", timeout=60).json()["count"] == 6
            info = embedded.status(base)
            os.kill(info.milvus_pid, signal.SIGKILL)
            with ThreadPoolExecutor(2) as pool:
                stats = pool.submit(_cli, tmp_path, env, "stats", "--json")
                again = pool.submit(_cli, tmp_path, env, "index", str(photos), "--json")
                stats, again = stats.result(), again.result()
            assert stats.returncode == 0, stats.stderr
            assert json.loads(stats.stdout)["count"] == 6
            assert again.returncode == 0, again.stderr
            report = json.loads(again.stdout)
            assert (report["indexed"], report["unchanged"]) == (0, 6)
            # The running server reconnects by itself: no 500, the full count.
            res = httpx.get(f"{url}/api/v1/stats", timeout=60)
            assert res.status_code == 200 and res.json()["count"] == 6
        assert embedded.status(base).restarts == 1
    finally:
        embedded.stop_server(base)


def test_milvus_killed_in_the_middle_of_an_index_run(tmp_path, cache_dir):
    """Issue 10 (low): killing Milvus mid-ingest ended `mmsearch index` in a traceback. The
    run now waits for the restarted server and finishes, every image indexed once."""
    from mmsearch.demo import sample_photos

    photos = tmp_path / "photos"
    photos.mkdir()
    for item in sample_photos()[:10]:
        shutil.copy(item.path, photos / item.path.name)
    base = tmp_path / "store"
    env = _env(cache_dir, MMSEARCH_URI=f"embedded:{base}", MMSEARCH_BATCH_SIZE="2")
    try:
        embedded.ensure_server(base, idle_timeout=0, bin_cache=cache_dir)
        run = subprocess.Popen(
            [sys.executable, "-m", "mmsearch.cli", "index", str(photos), "--json"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        settings = Settings(uri=f"embedded:{base}", cache_dir=cache_dir)
        with MMSearch(settings=settings) as mm:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not (mm.store.exists() and mm.store.count()):
                time.sleep(0.2)
        os.kill(embedded.status(base).milvus_pid, signal.SIGKILL)
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0 and "Traceback" not in err, err
        report = json.loads(out)
        assert report["indexed"] + report["unchanged"] == 10 and not report["failed"]
        with MMSearch(settings=settings) as mm:
            assert mm.store.count() == 10
    finally:
        embedded.stop_server(base)


def _until(predicate, seconds: float) -> float:
    """Seconds until ``predicate()`` held (fails after ``seconds``)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, "not visible in time"
        time.sleep(0.3)
    return time.monotonic() - started


def test_watch_keeps_a_folder_in_sync_and_catches_up_after_kill_9(tmp_path, cache_dir):
    """Issue 12: new, changed, renamed and deleted files show in search within 10 s while
    `mmsearch watch` runs beside the default store; killed and restarted, it catches up
    and indexes nothing twice."""
    from mmsearch.demo import sample_photos

    photos = tmp_path / "photos"
    (photos / "a").mkdir(parents=True)
    samples = [item.path for item in sample_photos()]
    for src in samples[:3]:
        shutil.copy(src, photos / "a" / src.name)
    base = tmp_path / "store"
    env = _env(cache_dir, MMSEARCH_URI=f"embedded:{base}")
    settings = Settings(uri=f"embedded:{base}", cache_dir=cache_dir)

    def names() -> set[str]:
        with MMSearch(settings=settings) as mm:
            return (
                {Path(it.origin).name for it in mm.store.iter_items()}
                if mm.store.exists()
                else set()
            )

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmsearch.cli", "watch", str(photos), "--json"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _until(lambda: len(names()) >= 3, 300)
        return proc

    try:
        watcher = start()
        shutil.copy(samples[3], photos / "a" / samples[3].name)  # added
        seen = [_until(lambda: samples[3].name in names(), 10)]
        (photos / "a" / samples[0].name).rename(photos / "renamed.png")  # renamed
        seen.append(_until(lambda: "renamed.png" in names() and samples[0].name not in names(), 10))
        (photos / "a" / samples[1].name).unlink()  # deleted
        seen.append(_until(lambda: samples[1].name not in names(), 10))
        os.kill(watcher.pid, signal.SIGKILL)
        watcher.wait()
        shutil.copy(samples[4], photos / samples[4].name)  # while nobody watches
        (photos / "a" / samples[2].name).unlink()
        watcher = start()
        _until(lambda: names() == {"renamed.png", samples[3].name, samples[4].name}, 60)
        with MMSearch(settings=settings) as mm:
            assert mm.store.count() == 3  # exactly one row each
        assert max(seen) < 10, seen
    finally:
        with contextlib.suppress(Exception):
            watcher.kill()
        embedded.stop_server(base)
