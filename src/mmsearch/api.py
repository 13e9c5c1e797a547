"""HTTP API (FastAPI) and the web page, served by ``mmsearch serve``.

The API parses, validates and presents; searching is ``MMSearch``'s job. ``guard.Guard``
checks the Host, the credentials and adds the security headers before a request gets here.
Images are served only by item id, and only while the file on disk is still the one indexed
(``images.read_indexed``), never from a client-supplied path. Model and store calls go
through one lock on a Milvus Lite file (one client per file). On a server (``embedded:`` or
a URI) searches run side by side, as pymilvus's gRPC client takes concurrent calls, and
their model calls meet in a ``batching.BatchingEmbedder`` (many queries, one model call);
writers (uploads, folders, the watcher) still take the lock, one at a time. ``serve
--workers N`` runs N processes of this app (``app_from_env``). Work per request is
bounded: body sizes per route, query images by a pixel budget, a few image decodes at a
time, and one duplicates scan at a time, whose report is kept until the collection changes
(``Service.duplicates``).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import SecretStr

from mmsearch import __version__
from mmsearch import duplicates as dup
from mmsearch.api_models import (
    API,
    DuplicatesOut,
    FolderIn,
    HitOut,
    IndexOut,
    ItemOut,
    SearchOut,
    StatsOut,
)
from mmsearch.batching import BatchingEmbedder, batching
from mmsearch.config import Metric, Settings, load_settings
from mmsearch.engine import MMSearch
from mmsearch.filters import FilterError, Filters
from mmsearch.filters import as_dict as filters_dict
from mmsearch.filters import build as build_filters
from mmsearch.guard import COOKIE, COOKIE_DAYS, Access, Guard, is_loopback
from mmsearch.images import ImageError, decode_image, media_type, read_indexed
from mmsearch.ingest import IngestReport
from mmsearch.providers import Embedder, ProviderError
from mmsearch.search import MAX_K, Mode, QueryError, Results, Searcher, check_query
from mmsearch.sources import SourceError
from mmsearch.store import InvalidFilterError, Item, StoreError

log = logging.getLogger(__name__)

THUMBNAIL_SIZES = (128, 256, 512)
MAX_QUERY_CHARS = 1000
#: Room for multipart boundaries and form fields around an uploaded file.
FORM_OVERHEAD = 64 * 1024
#: Bodies of requests that carry no file (JSON, the login form).
SMALL_BODY = 64 * 1024
#: Originals read (and hashed) at once: each is held in memory until it is checked.
ORIGINALS_AT_ONCE = 4
#: Seconds a duplicates report is served again while the collection's count is unchanged.
#: This server's own writes (uploads, folders, the watcher) make it stale at once; another
#: process's writes that keep the count (``mmsearch index`` of a changed file into the same
#: embedded server) show after this at most.
DUPLICATES_TTL = 300.0
#: The environment variable that carries ``serve``'s options to each of its worker
#: processes (``serve_options``, ``app_from_env``).
SERVE_OPTIONS_ENV = "MMSEARCH_SERVE_OPTIONS"


# -- helpers ---------------------------------------------------------------------------------

_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class CachedReport:
    """The last duplicates report, and the state of the collection it was made from."""

    key: tuple[Any, ...]
    made_at: float
    report: dup.DuplicateReport


class WriteLock:
    """The service's lock, for writers (the watcher): each use counts as a change to the
    collection, so that a cached duplicates report made before it is not served after it."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def __enter__(self) -> WriteLock:
        self.svc.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.svc.writes += 1
        self.svc.lock.release()


class ServedSearch(MMSearch):
    """``MMSearch`` as the server uses it: queries are embedded through a
    ``BatchingEmbedder``, so that concurrent requests share model calls; ingest (uploads,
    folders, the watcher) and OCR use the embedder as it is, in their own batches. Not on
    a Milvus Lite file: there searches run one at a time under the lock, and a batch would
    only ever hold one query, after waiting for others."""

    @cached_property
    def query_embedder(self) -> Embedder:
        s = self.settings
        if s.is_lite:
            return self.embedder
        return batching(self.embedder, wait_ms=s.query_batch_wait_ms, max_batch=s.query_batch_max)

    @cached_property
    def searcher(self) -> Searcher:
        return Searcher(self.settings, store=self.store, embedder=self.query_embedder)

    def close(self) -> None:
        batcher = self.__dict__.pop("query_embedder", None)
        self.__dict__.pop("searcher", None)
        if isinstance(batcher, BatchingEmbedder):
            batcher.close()
        super().close()


class Service:
    """What the app holds: one MMSearch, the locks around its use, and the bounds on image
    decoding and reading.

    ``lock`` serialises writers (``WriteLock``). ``reading`` is what a read takes: the same
    lock on a Milvus Lite file, whose one client must not be used from two threads at
    once; nothing on a server, whose gRPC client is thread-safe, so that searches overlap
    (each other, and the Milvus calls of a writer)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mm = ServedSearch(settings=settings)
        self.lock = threading.Lock()
        self.reading: AbstractContextManager[Any] = self.lock if settings.is_lite else nullcontext()
        self.decodes = threading.BoundedSemaphore(settings.max_concurrent_decodes)
        self.originals = threading.BoundedSemaphore(ORIGINALS_AT_ONCE)
        self.thumb_dir = settings.cache_dir / "thumbnails"
        #: Writes this server made (``WriteLock``): part of a cached report's key.
        self.writes = 0
        #: One duplicates scan at a time; requests that wait hold no thread, and find the
        #: report the scan before them left (``duplicates``).
        self.duplicates_turn = asyncio.Lock()
        self.duplicates_cache: CachedReport | None = None

    def item(self, item_id: str) -> Item:
        if not _ID_RE.match(item_id):
            raise HTTPException(404, "no such item")
        exists = self.exists()
        with self.reading:
            item = self.mm.get(item_id) if exists else None
        if item is None:
            raise HTTPException(404, "no such item")
        return item

    def search(
        self, query: Any, mode: Mode | None, k: int, params: SearchParams
    ) -> tuple[Results, list[int]]:
        """Run a search (or browse, with no query) with the request's filters; with
        ``collapse``, each set of duplicates once. Returns the results and, per hit, how many
        copies of it were collapsed into it."""
        if params.min_score is not None and self.settings.metric is Metric.L2:
            raise HTTPException(400, "min_score is for COSINE and IP metrics, not L2")
        if params.label is not None and _CONTROL_RE.search(params.label):
            raise HTTPException(400, "label must not contain control characters")
        if not self.exists():
            return Results([], mode, ""), []
        filters = params.filters(self.settings)

        def run(n: int) -> Results:
            with self.reading:
                return self.mm.find(
                    query,
                    mode=mode,
                    k=n,
                    filters=filters,
                    sort=params.sort,
                    parse=not params.literal,
                    ranking=params.ranking,
                    cutoff=params.cutoff,
                    min_score=params.min_score,
                )

        if params.collapse:
            return dup.collapsed_search(self.mm.store, run, k, lock=self.reading)
        results = run(k)
        return results, [0] * len(results.hits)

    def duplicates(self, threshold: float) -> CachedReport:
        """The collection's duplicate groups at ``threshold``: the cached report while the
        collection has not changed (same count, no write by this server, younger than
        ``DUPLICATES_TTL``), else a new scan, which takes the lock a page of reads at a time
        so that searches go on beside it. Callers take ``duplicates_turn`` first."""
        if not self.exists():
            return CachedReport((), time.time(), dup.DuplicateReport([], threshold, items=0))
        with self.reading:
            key = (self.settings.collection, threshold, self.mm.store.count(), self.writes)
        cached = self.duplicates_cache
        if cached and cached.key == key and time.time() - cached.made_at < DUPLICATES_TTL:
            return cached
        report = dup.find_duplicates(self.mm.store, threshold, lock=self.reading)
        self.duplicates_cache = CachedReport(key, time.time(), report)
        return self.duplicates_cache

    def exists(self) -> bool:
        """Whether the collection exists. The first call connects under the lock, so that
        threads arriving together make one client, not one each."""
        with self.reading if self.mm.store.backend.connected else self.lock:
            return self.mm.store.exists()

    def decode(self, data: bytes, *, query: bool) -> Image.Image:
        """Decode an upload, a few at a time; query images within the query pixel budget."""
        budget = self.settings.max_query_pixels if query else None
        with self.decodes:
            try:
                image, _, _ = decode_image(
                    data, max_pixels=self.settings.max_image_pixels, max_decoded_pixels=budget
                )
            except ImageError as exc:
                raise HTTPException(415, f"not a usable image: {exc}") from None
        return image

    def original(self, item: Item) -> tuple[bytes, str]:
        """The indexed file's bytes and media type, if it is still the file indexed."""
        with self.originals:
            try:
                data = read_indexed(Path(item.origin), item.content_hash)
                return data, media_type(data)
            except ImageError as exc:
                raise HTTPException(410, f"the indexed file is not available: {exc}") from None

    def thumbnail(self, item: Item, size: int) -> Path:
        """A cached JPEG thumbnail, made from the checked original the first time."""
        key = hashlib.blake2b(f"{item.id}:{item.content_hash}:{size}".encode(), digest_size=12)
        cached = self.thumb_dir / f"{key.hexdigest()}.jpg"
        if cached.exists():
            return cached
        data, _ = self.original(item)
        img = self.decode(data, query=False)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        self.thumb_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(cached)
        return cached


@dataclass
class SearchParams:
    """Filters and options every search endpoint takes (query parameters)."""

    after: Annotated[str | None, Query(description="Taken on or after: 2023-07-01.")] = None
    before: Annotated[str | None, Query(description="Taken before: 2023-08-01.")] = None
    place: Annotated[
        str | None, Query(max_length=200, description="City, region or country: Paris, 巴黎.")
    ] = None
    near: Annotated[str | None, Query(description="LAT,LON,RADIUS: 48.85,2.35,5km.")] = None
    camera: Annotated[str | None, Query(max_length=128, description="Make or model.")] = None
    label: Annotated[str | None, Query(max_length=512)] = None
    orientation: Annotated[str | None, Query(description="landscape, portrait, square.")] = None
    sort: Annotated[str, Query(description="relevance or date (newest first).")] = "relevance"
    literal: Annotated[
        bool, Query(description="Take the text as it is: no dates or places read out of it.")
    ] = False
    ranking: Annotated[
        Literal["fused", "vector", "lexical"],
        Query(description="Text queries: words and vectors fused, or either alone."),
    ] = "fused"
    cutoff: Annotated[
        Literal["none", "auto"],
        Query(description="auto: results past the bend of the score curve go to `more`."),
    ] = "none"
    min_score: Annotated[
        float | None,
        Query(description="Least vector similarity a result needs (the rest go to `more`)."),
    ] = None
    collapse: Annotated[
        bool,
        Query(
            description="Show each set of duplicate photos once, at its best rank; `copies` "
            "says how many of its copies the results held."
        ),
    ] = False

    def filters(self, settings: Settings) -> Filters:
        try:
            return build_filters(
                after=self.after,
                before=self.before,
                place=self.place,
                near=self.near,
                camera=self.camera,
                label=self.label,
                orientation=self.orientation,
                find_place=lambda name: _gazetteer(settings).find(name),
            )
        except FilterError as exc:
            raise HTTPException(400, str(exc)) from None


def _gazetteer(settings: Settings) -> Any:
    from mmsearch.places import Gazetteer

    return Gazetteer.shared(settings.cache_dir)


def _service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]
ParamsDep = Annotated[SearchParams, Depends()]


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"upload larger than {limit:,} bytes")
    if not data:
        raise HTTPException(400, "empty upload")
    return data


def _save_upload(upload_dir: Path, data: bytes) -> tuple[Path, bool]:
    """Keep an uploaded image under a name made from its content and decoded format.

    The client's file name is never used (no path tricks, no ``.html``), and the same image
    uploaded twice is one file, so one row. Returns the path and whether it is new.
    """
    ext = media_type(data).split("/")[1].replace("jpeg", "jpg")
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    target = upload_dir / digest[:2] / f"{digest}.{ext}"
    if target.exists():
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target, True


def access_for(
    settings: Settings, *, listen_host: str = "127.0.0.1", public: bool = False
) -> Access:
    """Who may read: anyone on a loopback-only server without a read token, or anyone at all
    with ``public``; else only holders of the read (or API) token."""
    read_token = _secret(settings.read_token)
    return Access(
        api_token=_secret(settings.api_token),
        read_token=read_token,
        reads_open=read_token is None and (public or is_loopback(listen_host)),
        allowed_hosts=frozenset(h.lower() for h in settings.allowed_hosts),
    )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


# -- the app ---------------------------------------------------------------------------------


def create_app(
    settings: Settings | None = None,
    *,
    listen_host: str = "127.0.0.1",
    public: bool = False,
    watch: Sequence[Path] = (),
    watch_election: Path | None = None,
) -> FastAPI:
    """The ASGI app; ``mmsearch serve`` runs it with uvicorn on ``listen_host``, keeping the
    ``watch`` folders in sync beside it. With ``watch_election`` (``serve --workers N``),
    only the worker that holds that file's lock watches: N watchers of the same folders
    would index each change N times over."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = service = Service(settings)
        with _elected(watch_election) as elected, _watching(service, watch if elected else ()):
            yield
        service.mm.close()

    app = FastAPI(
        title="mmsearch",
        version=__version__,
        description="Search images by text and by image. Modes: text2image, text2text, "
        "image2image, image2text.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        max_body_size=SMALL_BODY,
    )
    app.add_middleware(Guard, access=access_for(settings, listen_host=listen_host, public=public))
    _add_error_handlers(app)
    _add_search_routes(app, settings)
    _add_item_routes(app)
    _add_index_routes(app, settings)
    _add_page_routes(app)
    return app


def serve_options(
    overrides: dict[str, Any],
    *,
    listen_host: str,
    public: bool,
    watch: Sequence[Path],
    watch_election: Path | None,
) -> str:
    """``serve``'s options for its worker processes, as JSON for ``SERVE_OPTIONS_ENV``.

    uvicorn starts each worker from an import string, so nothing but the environment
    reaches it. It carries the command line's overrides of the settings, not the settings:
    each worker reads the same environment and mmsearch.toml again, so secrets stay where
    the user put them, and the guard's rules (``access_for``) come out the same in every
    worker."""
    return json.dumps(
        {
            "overrides": {k: v for k, v in overrides.items() if v is not None},
            "listen_host": listen_host,
            "public": public,
            "watch": [str(p) for p in watch],
            "watch_election": str(watch_election) if watch_election else None,
        }
    )


def app_from_env() -> FastAPI:
    """The app of one ``serve --workers N`` process (uvicorn's factory), built from
    ``SERVE_OPTIONS_ENV`` (``serve_options``)."""
    options = json.loads(os.environ[SERVE_OPTIONS_ENV])
    election = options.get("watch_election")
    return create_app(
        load_settings(**options["overrides"]),
        listen_host=options["listen_host"],
        public=options["public"],
        watch=[Path(p) for p in options["watch"]],
        watch_election=Path(election) if election else None,
    )


@contextmanager
def _elected(lock_file: Path | None) -> Iterator[bool]:
    """Whether this process is the one to run the watcher: always without ``lock_file``,
    else while it holds the file's lock (a worker that dies releases it, and the worker
    uvicorn starts in its place can take it)."""
    if lock_file is None:
        yield True
        return
    with open(lock_file, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        log.warning("worker %d keeps the watched folders in sync", os.getpid())
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _add_error_handlers(app: FastAPI) -> None:
    errors = ((QueryError, 400), (InvalidFilterError, 400), (StoreError, 503), (ProviderError, 502))
    for exc_type, status in errors:
        app.add_exception_handler(exc_type, _json_error(status))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server's log"}, status_code=500)


def _json_error(status: int) -> Any:
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handler


def _add_search_routes(app: FastAPI, settings: Settings) -> None:
    @app.get(f"{API}/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(f"{API}/stats", response_model=StatsOut, tags=["meta"])
    def stats(svc: ServiceDep) -> StatsOut:
        with svc.reading:
            info = svc.mm.stats()
        return StatsOut(**info, indexing_enabled=svc.settings.api_token is not None)

    @app.get(f"{API}/search", response_model=SearchOut, tags=["search"])
    def search_text(
        svc: ServiceDep,
        params: ParamsDep,
        q: Annotated[str, Query(max_length=MAX_QUERY_CHARS, description="Text query.")],
        mode: Annotated[Mode, Query()] = Mode.text2image,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
    ) -> SearchOut:
        """Search by text: ``text2image`` (images) or ``text2text`` (descriptions). Words
        naming a time or a place become filters ("海边 2023年7月") unless ``literal``."""
        if mode.takes_image:
            raise HTTPException(400, f"mode {mode.value} takes an image: POST {API}/search/image")
        check_query(q, mode, k)
        started = time.perf_counter()
        return _search_out(q, k, started, *svc.search(q, mode, k, params))

    @app.get(f"{API}/browse", response_model=SearchOut, tags=["search"])
    def browse(
        svc: ServiceDep, params: ParamsDep, k: Annotated[int, Query(ge=1, le=MAX_K)] = 50
    ) -> SearchOut:
        """Photos by filters alone (every photo without any), newest first."""
        started = time.perf_counter()
        return _search_out("", k, started, *svc.search(None, None, k, params))

    _add_image_search_route(app, settings)
    _add_duplicates_route(app)


def _add_image_search_route(app: FastAPI, settings: Settings) -> None:
    # The upload's size is checked while it streams in, before it is spooled anywhere.
    @app.post(
        f"{API}/search/image",
        response_model=SearchOut,
        tags=["search"],
        max_body_size=settings.max_upload_bytes + FORM_OVERHEAD,
    )
    async def search_image(
        request: Request,
        params: ParamsDep,
        file: Annotated[UploadFile, File(description="The query image.")],
        mode: Annotated[Mode, Form()] = Mode.image2image,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 20,
        label: Annotated[str | None, Form(max_length=512)] = None,
    ) -> SearchOut:
        """Search by an uploaded image: ``image2image`` or ``image2text``, with filters."""
        svc: Service = request.app.state.service
        if not mode.takes_image:
            raise HTTPException(400, f"mode {mode.value} takes text: GET {API}/search?q=...")
        data = await _read_upload(file, svc.settings.max_upload_bytes)
        image = await _in_thread(lambda: svc.decode(data, query=True))
        check_query(image, mode, k)
        if label is not None:
            params.label = label
        started = time.perf_counter()
        results, copies = await _in_thread(svc.search, image, mode, k, params)
        return _search_out(file.filename or "upload", k, started, results, copies)


def _add_duplicates_route(app: FastAPI) -> None:
    @app.get(f"{API}/duplicates", response_model=DuplicatesOut, tags=["items"])
    async def duplicates(
        request: Request,
        threshold: Annotated[
            float,
            Query(
                gt=0,
                le=1,
                description="Copy similarity at which two photos are near duplicates "
                "(higher: fewer, closer copies).",
            ),
        ] = dup.DEFAULT_THRESHOLD,
    ) -> DuplicatesOut:
        """Photos stored more than once: groups of exact copies (same bytes) and near
        copies (re-encoded, resized, cropped a little, rotated, another format), each with
        the copy to keep first. Made once per change of the collection; one at a time."""
        svc: Service = request.app.state.service
        async with svc.duplicates_turn:
            cached = await _in_thread(svc.duplicates, threshold)
        return DuplicatesOut.of(cached.report, cached.made_at)


def _search_out(
    query: str, k: int, started: float, results: Results, copies: list[int] | None = None
) -> SearchOut:
    copies = copies or [0] * len(results.hits)
    return SearchOut(
        mode=results.mode,
        query=query,
        text=results.text,
        filters=filters_dict(results.filters),
        ranking=results.ranking,
        k=k,
        took_ms=_ms(started),
        hits=[HitOut.of(h, n) for h, n in zip(results.hits, copies, strict=True)],
        more=[HitOut.of(h) for h in results.more],
    )


def _add_item_routes(app: FastAPI) -> None:
    @app.get(f"{API}/items/{{item_id}}", response_model=ItemOut, tags=["items"])
    def item(svc: ServiceDep, item_id: str) -> ItemOut:
        return ItemOut.of(svc.item(item_id))

    @app.get(f"{API}/items/{{item_id}}/similar", response_model=SearchOut, tags=["search"])
    def similar(
        svc: ServiceDep, item_id: str, k: Annotated[int, Query(ge=1, le=MAX_K)] = 20
    ) -> SearchOut:
        """More like this: images similar to an indexed item (by its stored vector)."""
        svc.item(item_id)
        started = time.perf_counter()
        with svc.reading:
            hits = svc.mm.more_like_this(item_id, k=k)
        return _search_out(item_id, k, started, Results(hits, Mode.image2image, ""))

    @app.get(f"{API}/items/{{item_id}}/image", tags=["items"], response_class=Response)
    def image(svc: ServiceDep, item_id: str) -> Response:
        """The original file of an indexed item, while it is still the file indexed."""
        data, kind = svc.original(svc.item(item_id))
        return Response(data, media_type=kind, headers={"Cache-Control": "private, max-age=3600"})

    @app.get(f"{API}/items/{{item_id}}/thumbnail", tags=["items"], response_class=Response)
    def thumbnail(svc: ServiceDep, item_id: str, size: Annotated[int, Query()] = 256) -> Response:
        """A JPEG thumbnail (128, 256 or 512 px), made once and cached."""
        if size not in THUMBNAIL_SIZES:
            raise HTTPException(400, f"size must be one of {THUMBNAIL_SIZES}")
        cached = svc.thumbnail(svc.item(item_id), size)
        return FileResponse(
            cached, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
        )


def _add_index_routes(app: FastAPI, settings: Settings) -> None:
    @app.post(
        f"{API}/index/upload",
        response_model=IndexOut,
        tags=["indexing"],
        max_body_size=settings.max_upload_files * (settings.max_upload_bytes + FORM_OVERHEAD),
    )
    async def index_upload(
        request: Request, files: Annotated[list[UploadFile], File(description="Images.")]
    ) -> IndexOut:
        """Upload and index images (needs the API token, checked before the upload is read)."""
        svc: Service = request.app.state.service
        if len(files) > svc.settings.max_upload_files:
            raise HTTPException(413, f"at most {svc.settings.max_upload_files} files per request")
        uploads = [await _read_upload(f, svc.settings.max_upload_bytes) for f in files]
        for data in uploads:
            await _in_thread(lambda d=data: svc.decode(d, query=False))
        return IndexOut.of(await _in_thread(_index_uploads, svc, uploads))

    @app.post(f"{API}/index/folder", response_model=IndexOut, tags=["indexing"])
    async def index_folder(request: Request, body: FolderIn) -> IndexOut:
        """Index a folder or CSV on the server (needs the API token)."""
        svc: Service = request.app.state.service
        try:
            report = await _in_thread(_index_source, svc, Path(body.path), body.limit)
        except SourceError as exc:
            raise HTTPException(400, str(exc)) from None
        return IndexOut.of(report)


def _add_page_routes(app: FastAPI) -> None:
    web = resources.files("mmsearch") / "web"
    app.mount("/static", StaticFiles(directory=str(web)), name="static")
    docs_assets = resources.files("fastapi_offline") / "static"
    app.mount("/docs-assets", StaticFiles(directory=str(docs_assets)), name="docs-assets")

    @app.get("/", include_in_schema=False)
    def index_page() -> Response:
        return FileResponse(str(web / "index.html"), media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs_page() -> Response:
        return FileResponse(str(web / "docs.html"), media_type="text/html")

    @app.get("/login", include_in_schema=False)
    def login_page() -> Response:
        return FileResponse(str(web / "login.html"), media_type="text/html")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token") or "")
        guard: Guard = _guard_of(request.app)
        cookie = guard.access.login(token)
        if cookie is None:
            await asyncio.sleep(1.0)  # slows guessing; tokens should be long anyway
            return RedirectResponse("/login?failed=1", status_code=303)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=COOKIE_DAYS * 86400,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return response

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return RedirectResponse("/static/favicon.svg")


def _guard_of(app: FastAPI) -> Guard:
    """The Guard in the built middleware stack (it holds the access rules)."""
    layer: Any = app.middleware_stack
    while layer is not None and not isinstance(layer, Guard):
        layer = getattr(layer, "app", None)
    assert layer is not None, "the Guard middleware is not installed"
    return layer


@contextmanager
def _watching(svc: Service, folders: Sequence[Path]) -> Iterator[None]:
    """A thread that keeps ``folders`` in sync while the app runs (through the service's
    lock, as requests use the same store and models)."""
    if not folders:
        yield
        return
    from mmsearch.watch import FolderWatcher

    watcher = FolderWatcher(
        svc.mm, folders, lock=WriteLock(svc), follow_symlinks=svc.settings.follow_symlinks
    )
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), name="watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def _in_thread(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _index_uploads(svc: Service, uploads: list[bytes]) -> IngestReport:
    """Save and index uploaded images; a file that fails to index is not kept."""
    from mmsearch.sources import SourceItem

    upload_dir = svc.settings.upload_dir.resolve()
    saved = [_save_upload(upload_dir, data) for data in uploads]
    report = _index_then_read(svc, [SourceItem(path, "upload") for path, _ in saved])
    failed = {path for path, _ in report.failed}
    for path, new in saved:
        if new and str(path) in failed:
            path.unlink(missing_ok=True)
    return report


def _index_source(svc: Service, source: Path, limit: int | None) -> IngestReport:
    return _index_then_read(svc, source, limit=limit)


def _index_then_read(svc: Service, source: Any, limit: int | None = None) -> IngestReport:
    """Index under the lock, then (with the ``ocr`` setting) read the new photos' text with
    the lock held only around the store's calls: searches go on while OCR reads."""
    with WriteLock(svc):
        report = svc.mm.index(source, limit=limit, ocr=False)
    if svc.settings.ocr:
        report.ocr = svc.mm.enrich_ocr(lock=WriteLock(svc))
    return report
