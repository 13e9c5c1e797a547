"""The supervisor: runs one folder's Milvus behind the forwarder, restarts it when it dies,
stops it when told, idle or orphaned (see ``__init__``). Started by ``ensure_server`` as its
own process, outside the mmsearch package."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .forwarder import Forwarder
from .isolation import isolate
from .server import (
    DEFAULT_ROOT_PASSWORD,
    Fatal,
    end_sessions,
    flush_all,
    healthy,
    milvus_client,
    probe,
    root_password,
    share_binaries,
    start_milvus,
    wait_loaded,
)
from .state import (
    FLUSHED_MARK,
    PASSWORD_FILE,
    POLL_SECONDS,
    START_TIMEOUT,
    STATE_FILE,
    ServerInfo,
    live_holders,
    read_raw,
)

log = logging.getLogger(__name__)

#: How long Milvus gets to exit after SIGTERM before it is killed (it has flushed by then).
TERM_GRACE = 15.0
TICK = 0.5  # checks for a dead Milvus, a deleted folder, a stop request
#: More restarts than this within RESTART_WINDOW seconds: give up (something is broken).
MAX_RESTARTS = 5
RESTART_WINDOW = 600.0
#: A health wait longer than this after loading is logged: the old sessions were still there.
SESSION_WAIT_NOTED = 2.0


class _Abort(Exception):
    """Stop now: asked to, or the data folder is gone."""


class _MilvusExited(Exception):
    """Milvus died; the supervisor starts it again."""


class _Supervisor:
    """Runs one folder's Milvus behind the forwarder; see the module docstring."""

    def __init__(
        self, base_dir: Path, listener: socket.socket, isolation: str, idle_timeout: float
    ) -> None:
        self.base_dir = base_dir
        self.isolation = isolation
        self.idle_timeout = idle_timeout
        self.forwarder = Forwarder(listener)
        self.stopping = False
        self.password, self.created = "", False
        self.proc: subprocess.Popen[bytes] | None = None
        self.milvus_port = 0
        self.etcd_port = 0
        self.restarts: list[float] = []
        self.published = False
        self.started_at = time.time()
        st = base_dir.stat()
        self.dir_id = (st.st_dev, st.st_ino)

    @property
    def token(self) -> str:
        return f"root:{self.password}"

    def run(self) -> int:
        """Serve until stopped, idle or orphaned; the exit code of the supervisor."""
        code, flush = 0, True
        try:
            self.password, self.created = root_password(self.base_dir)
            self.forwarder.start()
            self.publish("starting")
            self.serve()
        except _Abort as exc:
            log.info("stopping: %s", exc)
            flush = str(exc) == "stop requested"
        except Fatal as exc:
            log.error("%s", exc)
            code, flush = 1, False
        except Exception as exc:
            log.exception("the supervisor failed")
            log.error("the supervisor failed: %s", exc)
            code, flush = 1, False
        self.shutdown(flush)
        return code

    def serve(self) -> None:
        """Start Milvus, and again whenever it dies, until told to stop or idle."""
        while True:
            try:
                self.launch()
                self.watch()
                return
            except _MilvusExited as exc:
                self.forwarder.set_ready(None)  # hold new connections until it is back
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
                if len(self.restarts) > MAX_RESTARTS:
                    raise Fatal(f"{exc}; {MAX_RESTARTS} restarts in a row failed") from None
                log.error("%s; starting it again", exc)
                self.publish("starting")

    def launch(self) -> None:
        """Start Milvus; publish it once root has our password and the data is loaded."""
        mark = self.base_dir / FLUSHED_MARK
        replay = not mark.exists()
        mark.unlink(missing_ok=True)  # from now on, the data may change again
        self.proc, self.milvus_port, self.etcd_port = start_milvus(self.base_dir, self.isolation)
        where = "inside its namespace" if self.isolation != "off" else "on all interfaces"
        log.info("milvus pid %d starting, port %d %s", self.proc.pid, self.milvus_port, where)
        began = time.monotonic()
        deadline = began + START_TIMEOUT
        self.await_root(deadline)
        answering = time.monotonic() - began
        self.settle(deadline, replay)
        loaded = time.monotonic() - began
        while not healthy(self.milvus_port, self.token):
            self.check()  # writes fail until the dead process's etcd sessions expire
            if time.monotonic() > deadline:
                log.warning("Milvus's health check still fails; serving anyway")
                break
            time.sleep(0.2)
        if (waited := time.monotonic() - began - loaded) > SESSION_WAIT_NOTED:
            log.info("healthy %.1f s after loading: waited for old etcd sessions", waited)
        self.check()
        self.forwarder.set_ready(self.milvus_port)
        self.publish("ready")
        log.info(
            "ready on 127.0.0.1:%d (isolation: %s) after %.1f s (answering %.1f, loaded %.1f)",
            self.forwarder.port,
            self.isolation,
            time.monotonic() - began,
            answering,
            loaded,
        )

    def settle(self, deadline: float, replay: bool) -> None:
        """``wait_loaded``, again after an error (Milvus may still be settling)."""
        while True:
            try:
                wait_loaded(self.milvus_port, self.token, deadline, replay)
                return
            except Exception as exc:  # pymilvus raises several types
                self.check()
                if time.monotonic() > deadline:
                    log.warning("waiting for the collections to load failed: %s", exc)
                    return
                time.sleep(1)

    def await_root(self, deadline: float) -> None:
        """Wait until Milvus answers with the folder's root password, setting it first if
        root still has Milvus's default (a new folder, or one from before authorization)."""
        denied_since = None
        while time.monotonic() < deadline:
            self.check()
            answer = probe(self.milvus_port, self.token)
            if answer == "ok":
                return
            if answer == "denied":
                if probe(self.milvus_port, f"root:{DEFAULT_ROOT_PASSWORD}") == "ok":
                    self.set_root_password()
                    return
                denied_since = denied_since or time.monotonic()
                if time.monotonic() - denied_since > 5:  # not a start-up hiccup
                    self.wrong_password()
            time.sleep(0.2)
        raise Fatal(f"Milvus did not answer within {START_TIMEOUT:.0f} s")

    def set_root_password(self) -> None:
        client = milvus_client(self.milvus_port, f"root:{DEFAULT_ROOT_PASSWORD}")
        try:
            client.update_password("root", DEFAULT_ROOT_PASSWORD, self.password)
        finally:
            client.close()
        self.created = False
        log.info("root password set (kept in %s)", self.base_dir / PASSWORD_FILE)

    def wrong_password(self) -> None:
        path = self.base_dir / PASSWORD_FILE
        if self.created:  # made just now: do not leave a file that looks right
            path.unlink(missing_ok=True)
            raise Fatal(
                f"{path} was missing, and the Milvus data in {self.base_dir} has a root "
                "password other than Milvus's default: restore the file from a backup"
            )
        raise Fatal(f"the password in {path} is not the root password of the data in {path.parent}")

    def watch(self) -> None:
        """Return when idle; raises when Milvus dies, a stop is asked or the folder goes."""
        last_requests, last_active = -1, time.monotonic()
        next_idle_check = time.monotonic() + POLL_SECONDS
        while True:
            time.sleep(TICK)
            self.check()
            if not self.forwarder.alive:
                raise Fatal("the forwarder stopped; see the log above")
            if time.monotonic() < next_idle_check:
                continue
            next_idle_check = time.monotonic() + POLL_SECONDS
            requests = self.forwarder.requests
            if live_holders(self.base_dir) or requests != last_requests:
                last_requests, last_active = requests, time.monotonic()
            elif self.idle_timeout > 0 and time.monotonic() - last_active > self.idle_timeout:
                log.info("idle for %.0f s, stopping", self.idle_timeout)
                return

    def check(self) -> None:
        if self.stopping:
            raise _Abort("stop requested")
        if self.orphaned():
            raise _Abort(f"{self.base_dir} or its state file was deleted")
        if self.proc is not None and self.proc.poll() is not None:
            raise _MilvusExited(f"milvus exited with {self.proc.returncode}")

    def orphaned(self) -> bool:
        try:
            st = self.base_dir.stat()
        except OSError:
            return True
        if (st.st_dev, st.st_ino) != self.dir_id:
            return True
        if not self.published:
            return False
        raw = read_raw(self.base_dir)
        return raw is None or raw.get("supervisor_pid") != os.getpid()

    def publish(self, state: str) -> None:
        """Write the state file (atomically); never recreate it for a deleted folder."""
        info = ServerInfo(
            base_dir=str(self.base_dir),
            supervisor_pid=os.getpid(),
            milvus_pid=self.proc.pid if self.proc is not None else 0,
            port=self.forwarder.port,
            state=state,
            isolation=self.isolation,
            started_at=self.started_at,
            restarts=len(self.restarts),
        )
        path = self.base_dir / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(info)))
            if self.orphaned():
                tmp.unlink()
                raise _Abort(f"{self.base_dir} or its state file was deleted")
            tmp.replace(path)
        except OSError:
            raise _Abort(f"cannot write {path}: the folder was deleted") from None
        self.published = True

    def shutdown(self, flush: bool) -> None:
        """Close the way in, flush (when the data is still there) and stop Milvus."""
        self.forwarder.stop()
        if flush and not self.orphaned():
            with contextlib.suppress(_Abort):
                self.publish("stopping")  # new clients wait for the end, then start anew
        proc = self.proc
        if proc is not None and proc.poll() is None:
            flushed = False
            if flush and not self.orphaned():
                try:
                    flush_all(self.milvus_port, self.token)
                    flushed = True
                except Exception as exc:  # a failed flush must not keep the server running
                    log.warning("flush before stopping failed: %s", exc)
            try:  # else the next start waits for this process's sessions to expire
                log.info("ended %d etcd sessions", end_sessions(self.etcd_port))
            except Exception as exc:
                log.warning("ending Milvus's etcd sessions failed: %s", exc)
            proc.terminate()
            try:
                proc.wait(TERM_GRACE)
            except subprocess.TimeoutExpired:
                flushed = False
                proc.kill()
                proc.wait(30)
            if flushed and not self.orphaned():  # the next start need not wait for a replay
                with contextlib.suppress(OSError):
                    (self.base_dir / FLUSHED_MARK).touch()
        raw = read_raw(self.base_dir)
        if raw is not None and raw.get("supervisor_pid") == os.getpid():
            (self.base_dir / STATE_FILE).unlink(missing_ok=True)
        log.info("stopped")


def run_supervisor(
    base_dir: Path,
    idle_timeout: float,
    bin_cache: Path | None,
    listener: socket.socket,
    isolation: str,
) -> int:
    """Start Milvus in ``base_dir`` behind ``listener``; stop it when told, idle or orphaned."""
    supervisor = _Supervisor(base_dir, listener, isolation, idle_timeout)

    def _on_signal(signum: int, _frame: object) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        importlib.import_module("hpack")
        import milvus

        if bin_cache is not None:
            share_binaries(base_dir, bin_cache)
        elif not (base_dir / "bin").is_symlink():
            milvus._initialize_data_files(str(base_dir))
    except ImportError as exc:
        log.error("the embedded server needs the %r package: pip install %s", exc.name, exc.name)
        listener.close()
        return 1
    return supervisor.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmsearch embedded supervisor")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("base_dir", type=Path)
    parser.add_argument("--idle-timeout", type=float, default=1800.0)
    parser.add_argument("--bin-cache", type=Path, default=None)
    parser.add_argument("--listen-fd", type=int, default=None, help="a socket on 127.0.0.1")
    parser.add_argument("--isolation", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.listen_fd is None:  # run by hand: listen here, before leaving this namespace
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    else:
        listener = socket.socket(fileno=args.listen_fd)
    try:
        isolation = isolate(args.isolation, args.base_dir.resolve())  # first: no threads yet
    except SystemExit as exc:
        log.error("%s", exc.code)
        return 1
    return run_supervisor(
        args.base_dir.resolve(), args.idle_timeout, args.bin_cache, listener, isolation
    )


if __name__ == "__main__":
    sys.exit(main())
