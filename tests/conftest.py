"""Shared fixtures: real Milvus Lite files in temp dirs, real images from ../shared/datasets."""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from mmsearch import MMSearch, Settings

from .photos import taken_photo

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
REVERSE = DATASETS / "reverse_image_search"
REVERSE_CSV = REVERSE / "reverse_image_search.csv"
LION = REVERSE / "test" / "lion" / "n02129165_13728.JPEG"

# Reading the text in photos after each index run costs ~0.2 s a photo: only the tests of
# OCR turn it on (``Settings(ocr=True)``, or MMSEARCH_OCR=1 for a CLI run of their own).
os.environ["MMSEARCH_OCR"] = "0"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not REVERSE_CSV.exists():
        skip = pytest.mark.skip(reason=f"data sets not found at {DATASETS}")
        for item in items:
            if "datasets" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry backoff of milliseconds: tests check retry behaviour, not the wait."""
    from mmsearch.providers import caller

    monkeypatch.setattr(caller, "BACKOFF_INITIAL", 0.01)
    monkeypatch.setattr(caller, "BACKOFF_MAX", 0.05)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session: class-name embeddings are computed once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def settings(tmp_path: Path, cache_dir: Path) -> Settings:
    return Settings(uri=str(tmp_path / "test.db"), cache_dir=cache_dir, batch_size=16)


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """One embedded Milvus 2.3 server for the session (its data folder); tests sharing it
    use collections of their own. Skipped where the milvus wheel does not exist."""
    from mmsearch import embedded

    if not embedded.available():
        pytest.skip("the milvus package (Linux x86_64) is not installed")
    base = tmp_path_factory.mktemp("milvus")
    embedded.ensure_server(base, idle_timeout=0, bin_cache=cache_dir)
    yield base
    embedded.stop_server(base)


@pytest.fixture(scope="session")
def reverse_index(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    """The 100 reference test images indexed once from the reference CSV."""
    db = tmp_path_factory.mktemp("reverse") / "reverse.db"
    mm = MMSearch(settings=Settings(uri=str(db), cache_dir=cache_dir))
    report = mm.index(REVERSE_CSV)
    assert report.indexed == 100 and not report.failed, report
    yield mm
    mm.close()


IMAGENET = DATASETS / "imagenet_sample" / "images"
#: A trip's photos: (imagenet_sample file, where, when) -> EXIF written by ``trip_photos``.
TRIP = [
    ("n02099601_golden_retriever.JPEG", (48.8584, 2.2945), datetime(2023, 7, 14, 18, 30)),
    ("n02088364_beagle.JPEG", (48.8606, 2.3376), datetime(2023, 7, 15, 10, 5)),
    ("n03877845_palace.JPEG", (48.8049, 2.1204), datetime(2023, 7, 16, 11, 0)),
    ("n07873807_pizza.JPEG", (48.8530, 2.3499), datetime(2023, 7, 16, 20, 15)),
    ("n02123045_tabby.JPEG", (35.6586, 139.7454), datetime(2019, 4, 2, 9, 0)),
    ("n02980441_castle.JPEG", (35.6852, 139.7528), datetime(2019, 4, 3, 14, 30)),
]


def trip_photos(folder: Path) -> Path:
    """``TRIP`` written into ``folder`` with the EXIF a phone would have given them."""
    for name, position, taken in TRIP:
        taken_photo(IMAGENET / name, folder / name, taken=taken, position=position)
    return folder


def reverse_labels() -> dict[str, str]:
    """origin path (resolved) -> label, from the reference CSV."""
    with REVERSE_CSV.open() as fh:
        return {str((REVERSE / r["path"]).resolve()): r["label"] for r in csv.DictReader(fh)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(request, tmp_path_factory, cache_dir):
    """`mmsearch serve` in a subprocess on loopback over the 100 reference images and a
    trip's photos with EXIF (``TRIP``: where and when they were taken), on the default
    store."""
    root = tmp_path_factory.mktemp("e2e")
    from mmsearch import embedded

    # The default store where it exists: the embedded server, shared with the indexing
    # process here (with a Lite file the two processes could not share the data).
    if embedded.available():
        uri = f"embedded:{request.getfixturevalue('embedded_server')}"
    else:
        uri = str(root / "web.db")
    with MMSearch(settings=Settings(uri=uri, collection="web", cache_dir=cache_dir)) as mm:
        assert mm.index(REVERSE_CSV).indexed == 100
        assert mm.index(trip_photos(root / "trip")).indexed == len(TRIP)
    env = {"MMSEARCH_URI": uri, "MMSEARCH_COLLECTION": "web", "MMSEARCH_CACHE_DIR": str(cache_dir)}
    with serving(env, root) as (base, _):
        yield base


@contextlib.contextmanager
def serving(env: dict[str, str], cwd: Path, args: Sequence[str] = ()) -> Iterator[tuple[str, int]]:
    """`mmsearch serve ARGS` in a subprocess on a free loopback port, with ``env`` added to
    this process's environment; yields (base URL, pid) once it answers, stops it afterwards.
    Its output goes to ``serve_log(cwd, base)``."""
    port = _free_port()
    log = serve_log(cwd, f"http://127.0.0.1:{port}")
    with log.open("wb") as out:  # a file, not a pipe nobody reads (it would fill up)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmsearch.cli", "serve", "--port", str(port), *args],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # --workers starts several processes
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"server died: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        else:
            raise TimeoutError(f"server did not start: {log.read_text(errors='replace')[-3000:]}")
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def serve_log(cwd: Path, base: str) -> Path:
    """Where ``serving`` writes the output of the server at ``base``."""
    return cwd / f"serve-{base.rsplit(':', 1)[1]}.log"
