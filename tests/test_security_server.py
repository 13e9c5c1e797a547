"""The served app under attack over a real socket (`mmsearch serve` in a subprocess).

What a test client cannot show: how many bytes the server takes in before it refuses a
request, and how much memory parallel hostile images cost the server process.
"""

from __future__ import annotations

import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from mmsearch import MMSearch, Settings
from mmsearch.demo import sample_photos

from .conftest import serving

TOKEN = "write-token-for-tests"
CHUNK = 65536
MAX_UPLOAD = 2_000_000
#: Issue 10: 8 parallel 9459x9459 PNGs took the server from 0.27 GB to 6.0 GB.
PEAK_RSS_LIMIT = 1.5 * 2**30


@pytest.fixture(scope="module")
def served(tmp_path_factory, cache_dir):
    """`mmsearch serve` on loopback over two real photos in a Lite file; (url, pid)."""
    root = tmp_path_factory.mktemp("served")
    uri = str(root / "served.db")
    with MMSearch(settings=Settings(uri=uri, cache_dir=cache_dir)) as mm:
        assert mm.index(sample_photos()[:2]).indexed == 2
    env = {
        "MMSEARCH_URI": uri,
        "MMSEARCH_CACHE_DIR": str(cache_dir),
        "MMSEARCH_API_TOKEN": TOKEN,
        "MMSEARCH_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "MMSEARCH_UPLOAD_DIR": str(root / "uploads"),
    }
    with serving(env, root) as served:
        yield served


def _stream_post(url: str, path: str, total_chunks: int, headers: str = "") -> tuple[int, int]:
    """POST a chunked multipart body of ``total_chunks`` x 64 KB as long as the server takes
    it; returns (status, bytes the server let us send before it answered)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\n{headers}\r\n".encode()
    )
    part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
    sent = 0
    sock.setblocking(False)
    try:
        for _ in range(total_chunks):
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server has answered
            except BlockingIOError:
                pass
            sock.setblocking(True)
            sock.sendall(b"%x\r\n" % CHUNK + b"\0" * CHUNK + b"\r\n")
            sock.setblocking(False)
            sent += CHUNK
            time.sleep(0.002)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.setblocking(True)
    status_line = sock.makefile("rb").readline().decode()
    sock.close()
    return int(status_line.split()[1]), sent


def test_uploads_are_cut_off_at_the_limit_while_streaming(served):
    url, _ = served
    status, sent = _stream_post(url, "/api/v1/search/image", 400)  # 25 MB offered
    assert status == 413
    assert sent <= MAX_UPLOAD + 64 * 1024 + 8 * CHUNK, f"took {sent:,} bytes before refusing"


def test_the_token_is_checked_before_the_upload_is_read(served):
    url, _ = served
    status, sent = _stream_post(url, "/api/v1/index/upload", 400)
    assert status == 401
    assert sent <= 8 * CHUNK, f"took {sent:,} bytes before refusing"


def _bomb_png() -> bytes:
    """A 9459x9459 PNG, just under the default pixel limit, of a few hundred KB."""
    buf = io.BytesIO()
    Image.new("L", (9459, 9459)).convert("RGB").save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_parallel_huge_query_images_stay_within_memory(served):
    url, pid = served
    photo = sample_photos()[0].path.read_bytes()
    warm = httpx.post(f"{url}/api/v1/search/image", files={"file": ("q.png", photo)}, timeout=120)
    assert warm.status_code == 200  # models loaded: their memory is in the baseline
    bomb = _bomb_png()
    assert len(bomb) < MAX_UPLOAD

    def post(_: int) -> int:
        files = {"file": ("bomb.png", bomb, "image/png")}
        return httpx.post(f"{url}/api/v1/search/image", files=files, timeout=120).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, range(8)))
    assert statuses == [415] * 8
    peak = _peak_rss(pid)
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**30:.2f} GB"
    # Still serving after the attack.
    again = httpx.post(f"{url}/api/v1/search/image", files={"file": ("q.png", photo)}, timeout=60)
    assert again.status_code == 200
