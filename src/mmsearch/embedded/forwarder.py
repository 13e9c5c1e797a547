"""The one way in: the supervisor's forwarder on 127.0.0.1, which passes each client's
HTTP/2 (gRPC) connection to Milvus after checking every header block.

Milvus 2.3 skips the password check for requests carrying ``sourceid`` (meant for its own
components); the forwarder refuses them. While Milvus starts or restarts, new connections
wait here instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading

from .state import START_TIMEOUT

log = logging.getLogger(__name__)


class Refused(Exception):
    """A client sent something the forwarder does not pass to Milvus."""


class H2Guard:
    """Reads the client-to-Milvus half of one HTTP/2 (gRPC) connection frame by frame and
    decodes every header block, to refuse the ``sourceid`` header.

    Why: Milvus 2.3's proxy skips the password check for requests carrying ``sourceid``
    (meant for its own components) and takes the user from ``authorization`` unchecked:
    with it anyone is root whatever the password (tried on 2.3.5). Header names are HPACK
    compressed (and may refer to earlier requests), so every block is decoded in order with
    the state Milvus's decoder has. A block is passed on only once it is whole and clean.
    """

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    #: An empty SETTINGS frame: what a server sends first. The forwarder sends it itself to
    #: a client that has to wait for Milvus, so that gRPC does not give up on the connection
    #: (it waits 20 s for the server's first SETTINGS; a restart after a crash takes ~30 s).
    EARLY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
    HEADERS, SETTINGS, CONTINUATION = 1, 4, 9
    ACK = 0x1
    #: The frame types a client may send (RFC 9113); anything else closes the connection.
    CLIENT_TYPES = frozenset({0, 1, 2, 3, 4, 6, 7, 8, 9})
    END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20
    MAX_FRAME = 1 << 24
    MAX_BLOCK = 1 << 20

    def __init__(self) -> None:
        from hpack import Decoder

        self._decoder = Decoder(max_header_list_size=self.MAX_BLOCK)
        # Milvus refuses table sizes above its own limit; accepting more here is harmless.
        self._decoder.max_allowed_table_size = 1 << 16
        self._buf = bytearray()
        self._preface = False
        self._held = bytearray()  # the frames of a header block still incomplete
        self._block = bytearray()
        self._block_stream = 0
        self.requests = 0
        #: The client's acknowledgement of EARLY_SETTINGS is for the forwarder, not Milvus.
        self.own_acks = 0

    def feed(self, data: bytes) -> bytes:
        """The bytes that may go to Milvus now (whole frames); raises ``Refused``."""
        buf = self._buf
        buf += data
        out = bytearray()
        pos = 0
        if not self._preface:
            if len(buf) < len(self.PREFACE):
                if not self.PREFACE.startswith(bytes(buf)):
                    raise Refused("not an HTTP/2 (gRPC) connection")
                return b""
            if buf[: len(self.PREFACE)] != self.PREFACE:
                raise Refused("not an HTTP/2 (gRPC) connection")
            out += self.PREFACE
            pos = len(self.PREFACE)
            self._preface = True
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            end = pos + 9 + length
            if length > self.MAX_FRAME:
                raise Refused("frame too large")
            if len(buf) < end:
                break
            self._frame(memoryview(buf)[pos:end], out)
            pos = end
        del buf[:pos]
        return bytes(out)

    def _frame(self, frame: memoryview, out: bytearray) -> None:
        kind, flags = frame[3], frame[4]
        stream = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
        if self._block_stream:  # inside a header block: only its CONTINUATION frames
            if kind != self.CONTINUATION or stream != self._block_stream:
                raise Refused("header block interrupted")
            self._add_fragment(frame, bytes(frame[9:]), flags, out)
        elif kind not in self.CLIENT_TYPES or kind == self.CONTINUATION:
            raise Refused(f"unexpected frame type {kind}")
        elif kind == self.HEADERS:
            self.requests += 1
            self._add_fragment(frame, self._fragment(bytes(frame[9:]), flags), flags, out)
        elif kind == self.SETTINGS and flags & self.ACK and self.own_acks:
            self.own_acks -= 1
        else:
            out += frame

    def _fragment(self, payload: bytes, flags: int) -> bytes:
        """The header block fragment of a HEADERS frame (without padding and priority)."""
        if flags & self.PADDED:
            if not payload or payload[0] >= len(payload):
                raise Refused("bad padding")
            payload = payload[1 : len(payload) - payload[0]]
        if flags & self.PRIORITY:
            if len(payload) < 5:
                raise Refused("bad priority")
            payload = payload[5:]
        return payload

    def _add_fragment(self, frame: memoryview, fragment: bytes, flags: int, out: bytearray) -> None:
        self._held += frame
        self._block += fragment
        self._block_stream = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF or -1
        if len(self._block) > self.MAX_BLOCK:
            raise Refused("header block too large")
        if not flags & self.END_HEADERS:
            return
        self._check_headers(bytes(self._block))
        out += self._held
        self._held.clear()
        self._block.clear()
        self._block_stream = 0

    def _check_headers(self, block: bytes) -> None:
        from hpack import HPACKError

        try:
            headers = self._decoder.decode(block, raw=True)
        except HPACKError as exc:
            raise Refused(f"bad header block: {exc}") from None
        for name, _ in headers:
            if bytes(name).lower().startswith(b"sourceid"):
                raise Refused("a request carried the sourceid header (Milvus's auth bypass)")


class Forwarder:
    """Serves the listening socket that the launcher made on 127.0.0.1: pipes each client
    connection to Milvus, through ``H2Guard``, in an asyncio loop on its own thread.

    New connections wait while Milvus is not ready (starting, restarting after a crash),
    so clients see it come back with its data instead of errors or a half-loaded store.
    """

    def __init__(self, listener: socket.socket) -> None:
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._loop = asyncio.new_event_loop()
        self._ready = asyncio.Event()
        self._upstream = 0
        self._stop: asyncio.Future[None] | None = None
        self._conns: set[_Client] = set()
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self.requests = 0  # requests passed on so far: the idle check's measure of use

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def set_ready(self, upstream_port: int | None) -> None:
        """Send new connections to Milvus at ``upstream_port``; None: hold them."""
        self._loop.call_soon_threadsafe(self._set_ready, upstream_port)

    def _set_ready(self, upstream_port: int | None) -> None:
        if upstream_port is None:
            self._ready.clear()
        else:
            self._upstream = upstream_port
            self._ready.set()

    def stop(self) -> None:
        """Close the listening socket and every connection."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                self._loop.call_soon_threadsafe(self._finish)
            self._thread.join(10)
        self._listener.close()

    def _finish(self) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except Exception:
            log.exception("the forwarder failed")
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        server = await self._loop.create_server(
            lambda: _Client(self), sock=self._listener, backlog=128
        )
        try:
            await self._stop
        finally:
            server.close()
            for conn in list(self._conns):
                conn.close()
            await asyncio.sleep(0)

    async def connect(self, client: _Client) -> asyncio.Transport | None:
        """A connection to Milvus for ``client``, once Milvus is ready (None: give up)."""
        deadline = self._loop.time() + START_TIMEOUT
        while self._loop.time() < deadline:
            try:
                if not self._ready.is_set():
                    client.waiting()
                await asyncio.wait_for(self._ready.wait(), deadline - self._loop.time())
                transport, _ = await self._loop.create_connection(
                    lambda: _Upstream(client), "127.0.0.1", self._upstream
                )
                return transport  # type: ignore[return-value]
            except TimeoutError:  # (a subclass of OSError)
                break
            except OSError:  # Milvus just died; the supervisor will notice and restart it
                client.waiting()
                await asyncio.sleep(0.2)
        return None


class _Client(asyncio.Protocol):
    """One client connection: checked and passed on to Milvus, answers passed back."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.guard = H2Guard()
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self._pending = bytearray()
        self._closed = False
        self._greeted = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.forwarder._conns.add(self)
        self._task = asyncio.get_running_loop().create_task(self._connect())

    def waiting(self) -> None:
        """The client has to wait for Milvus: greet it (once) so that it waits too."""
        if not self._greeted and self.transport is not None:
            self._greeted = True
            self.transport.write(self.guard.EARLY_SETTINGS)
            self.guard.own_acks += 1

    async def _connect(self) -> None:
        upstream = await self.forwarder.connect(self)
        if upstream is None or self._closed:
            if upstream is not None:
                upstream.close()
            self.close()
            return
        self.upstream = upstream
        if self._pending:
            upstream.write(bytes(self._pending))
            self._pending.clear()
        if self.transport is not None and not self.transport.is_reading():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        seen = self.guard.requests
        try:
            out = self.guard.feed(data)
        except Refused as exc:
            log.warning("closed a client connection: %s", exc)
            self.close()
            return
        self.forwarder.requests += self.guard.requests - seen
        if not out:
            return
        if self.upstream is not None:
            self.upstream.write(out)
            return
        self._pending += out
        if len(self._pending) > 1 << 20 and self.transport is not None:
            self.transport.pause_reading()  # until Milvus is there to take it

    def pause_writing(self) -> None:  # the client reads slower than Milvus answers
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self.forwarder._conns.discard(self)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()  # still waiting for Milvus
        for transport in (self.transport, self.upstream):
            if transport is not None:
                transport.close()


class _Upstream(asyncio.Protocol):
    """The connection to Milvus of one ``_Client``: answers go back unchanged."""

    def __init__(self, client: _Client) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None:
            self.client.transport.write(data)

    def pause_writing(self) -> None:  # Milvus reads slower than the client sends
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()  # Milvus stopped or died: the client reconnects and waits
