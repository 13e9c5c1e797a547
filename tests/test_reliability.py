"""Hostile files, killed ingests and store problems: nothing crashes, nothing is lost or doubled.

The hostile corpus is generated here (never downloaded). The kill test runs the real
`mmsearch index` in a subprocess and SIGKILLs it at random moments.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsearch import MMSearch, Mode, Settings
from mmsearch.sources import item_id

from .conftest import DATASETS, LION

pytestmark = pytest.mark.datasets

IMAGENET = DATASETS / "imagenet_sample" / "images"


def _save(path: Path, img: Image.Image, fmt: str, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)


def _hostile_corpus(root: Path) -> tuple[dict[str, str], set[str]]:
    """Build the corpus; return {name: expected reason fragment} for the files that must be
    skipped, and the names that must be indexed."""
    photo = Image.open(LION).convert("RGB")
    rng = np.random.default_rng(1)
    ok: set[str] = set()
    bad: dict[str, str] = {}

    (root / "zero.jpg").write_bytes(b"")
    bad["zero.jpg"] = "empty file"
    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[:5000])
    bad["truncated.jpg"] = "cannot decode"
    (root / "text.jpg").write_text("just some text\n")
    bad["text.jpg"] = "not an image"

    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    _save(root / "alpha.png", rgba, "PNG")
    arr16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    _save(root / "sixteen_bit.png", Image.fromarray(arr16), "PNG")
    _save(root / "cmyk.jpg", photo.convert("CMYK"), "JPEG")
    _save(root / "palette.gif", photo.convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    frames = [photo.convert("P"), photo.rotate(10).convert("P")]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    _save(root / "photo.webp", photo, "WEBP")
    # EXIF-rotated: pixels stored turned 90° counter-clockwise, tag 6 turns them back.
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(root / "rotated.jpg", photo.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif)
    _save(root / "tiny.png", Image.new("RGB", (1, 1), "orange"), "PNG")
    ok |= {
        "alpha.png",
        "sixteen_bit.png",
        "cmyk.jpg",
        "palette.gif",
        "animated.gif",
        "photo.webp",
        "rotated.jpg",
        "tiny.png",
    }

    _save(root / "huge.png", Image.new("1", (20000, 20000)), "PNG")
    bad["huge.png"] = "decompression bomb"
    _save(root / "bomb.png", Image.new("L", (40000, 40000)), "PNG")
    bad["bomb.png"] = "decompression bomb"

    noise = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    _save(root / "sub dir" / "狮子 photo (1).jpg", photo, "JPEG")
    _save(root / "sub dir" / "noise 噪声.png", noise, "PNG")
    ok |= {"狮子 photo (1).jpg", "noise 噪声.png"}

    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    bad["dangling.jpg"] = "no such file"
    os.mkfifo(root / "pipe.jpg")
    bad["pipe.jpg"] = "not a regular file"
    (root / "folder.jpg").mkdir()  # a folder named like an image is walked, not read

    locked = root / "locked.jpg"
    shutil.copy(LION, locked)
    locked.chmod(0)
    bad["locked.jpg"] = "permission denied"
    return bad, ok


def _without_root_file_access() -> list[str]:
    """Root reads any file whatever its mode; drop the two capabilities that allow that, so
    the unreadable file is unreadable for the ingest too (util-linux's setpriv)."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_hostile_files_are_indexed_or_skipped_with_a_reason(tmp_path, cache_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    bad, ok = _hostile_corpus(corpus)
    db = tmp_path / "hostile.db"
    env = {**os.environ, "MMSEARCH_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(
        [
            *_without_root_file_access(),
            sys.executable,
            "-m",
            "mmsearch.cli",
            "--uri",
            str(db),
            "index",
            str(corpus),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    failed = {Path(f["path"]).name: f["reason"] for f in report["failed"]}
    assert set(failed) == set(bad), failed
    for name, fragment in bad.items():
        assert fragment in failed[name], (name, failed[name])
        assert "\n" not in failed[name]
    assert report["indexed"] == len(ok)
    assert report["total"] == len(ok) + len(bad)

    with MMSearch(settings=Settings(uri=str(db), cache_dir=cache_dir)) as mm:
        assert mm.stats()["count"] == len(ok)
        rotated = mm.get(item_id(corpus / "rotated.jpg"))
        lion = Image.open(LION)
        assert rotated is not None and (rotated.width, rotated.height) == lion.size
        # Indexed upright: the upright photo finds the rotated file as (nearly) itself.
        hits = {h.origin: h.score for h in mm.search(LION, mode=Mode.image2image, k=15)}
        assert hits[str(corpus / "rotated.jpg")] > 0.98
        unicode_name = corpus / "sub dir" / "狮子 photo (1).jpg"
        assert mm.get(item_id(unicode_name)).origin == str(unicode_name)


def _count(db: Path, cache: Path) -> int:
    with MMSearch(settings=Settings(uri=str(db), cache_dir=cache)) as mm:
        return mm.stats()["count"] if mm.store.exists() else 0


@pytest.mark.slow
def test_sigkill_mid_ingest_loses_and_doubles_nothing(tmp_path, cache_dir):
    images = sorted(IMAGENET.iterdir())[:80]
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in images:
        shutil.copy(src, folder / src.name)
    db = tmp_path / "kill.db"
    cmd = [sys.executable, "-m", "mmsearch.cli", "--uri", str(db), "--debug", "index", str(folder)]
    env = {**os.environ, "MMSEARCH_CACHE_DIR": str(cache_dir), "MMSEARCH_BATCH_SIZE": "4"}
    _count(db, cache_dir)  # the class-name cache is warm before the first run
    rng = random.Random(7)
    counts: list[int] = []
    while len(counts) < 10:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.2, 4.0))  # during start-up
        else:  # after 1-2 batches were written, at a random moment of the next one
            seen = 0
            target = rng.randint(1, 2)
            while seen < target:
                line = proc.stderr.readline()
                if not line:
                    break
                seen += "batch written" in line
            time.sleep(rng.uniform(0.0, 1.5))
        assert proc.poll() is None, f"ingest finished before kill {len(counts) + 1}: {counts}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts.append(_count(db, cache_dir))
    assert counts == sorted(counts), f"rows lost after a kill: {counts}"
    assert 0 < counts[-1] < len(images), counts
    final = subprocess.run(
        [*cmd[:5], "index", str(folder), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr[-2000:]
    report = json.loads(final.stdout)
    assert report["indexed"] + report["unchanged"] == len(images)
    assert report["unchanged"] >= counts[-1]
    with MMSearch(settings=Settings(uri=str(db), cache_dir=cache_dir)) as mm:
        assert mm.stats()["count"] == len(images)
        ids = {h.id for h in mm.search("animal", k=200)}
        assert ids == {item_id(folder / p.name) for p in images}


def test_unreachable_server_is_a_clear_error_without_traceback():
    env = {**os.environ}
    cmd = [sys.executable, "-m", "mmsearch.cli", "--uri", "http://127.0.0.1:9", "stats"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "http://127.0.0.1:9" in res.stderr and "running and reachable" in res.stderr
    assert "Traceback" not in res.stderr
    debug = subprocess.run(
        [*cmd[:3], "--debug", *cmd[3:]], env=env, capture_output=True, text=True, timeout=120
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_lite_file_in_use_by_another_process_is_a_clear_error(tmp_path, cache_dir):
    db = tmp_path / "busy.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mmsearch.store import Store; from mmsearch import Settings;"
            f"s = Store(Settings(uri={str(db)!r})); s.open(embedder='x', dim=4);"
            "print('ready', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        res = subprocess.run(
            [sys.executable, "-m", "mmsearch.cli", "--uri", str(db), "stats"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "MMSEARCH_CACHE_DIR": str(cache_dir)},
        )
        assert res.returncode == 1
        assert str(db) in res.stderr and "one process per file" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        holder.kill()
        holder.wait()


def test_flaky_service_loses_nothing_and_rerun_takes_only_the_failed(
    tmp_path, cache_dir, fast_backoff
):
    """DashScope failing 30 % of calls at random (429, 500, timeouts): every image ends up
    indexed or listed as failed with its reason, and a rerun sends only the failed ones."""
    from .fake_dashscope import FakeServer
    from .test_dashscope import KEY, TIMEOUT, ds_settings

    folder = tmp_path / "photos"
    folder.mkdir()
    for src in sorted(IMAGENET.iterdir())[100:150]:
        shutil.copy(src, folder / src.name)
    base = Settings(uri=str(tmp_path / "flaky.db"), cache_dir=cache_dir)
    with FakeServer(api_key=KEY, hang=TIMEOUT + 0.5) as srv:
        srv.random_faults(0.3, seed=11)
        settings = ds_settings(base, srv, max_retries=2, max_concurrency=4)
        with MMSearch(settings=settings) as mm:
            first = mm.index(folder)
        faults = sum(1 for r in srv.log if r.fault)
        assert first.indexed + len(first.failed) == 50, first
        assert all("provider error" in reason for _, reason in first.failed), first.failed
        assert faults > 30, faults
        srv.random_faults(0.0)
        sent_before = len(srv.log)
        with MMSearch(settings=settings) as mm:
            second = mm.index(folder)
            assert second.unchanged == first.indexed
            assert second.indexed == len(first.failed) and not second.failed
            assert mm.stats()["count"] == 50
        # Only the failed images travel again: one embedding and one description each.
        image_calls = [r for r in srv.log[sent_before:] if r.kind in ("image", "describe")]
        assert len(image_calls) == 2 * len(first.failed), [r.kind for r in image_calls]
    print(
        f"flaky: {faults} faults injected in {sent_before} requests; "
        f"{first.indexed} indexed, {len(first.failed)} failed then recovered on rerun"
    )
