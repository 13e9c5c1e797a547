"""HTTP API (FastAPI) and the web page, served by ``mmsearch serve``.

The API parses, validates and presents; searching is ``MMSearch``'s job. Images are served
only by item id, from the path stored at indexing time, never from a client-supplied path.
Model and Milvus Lite calls go through one lock: Milvus Lite is one client per file, and
serialising the (CPU-bound) model calls costs nothing on a small machine.
"""

from __future__ import annotations

import hashlib
import io
import re
import secrets
import threading
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field

from mmsearch import __version__
from mmsearch.config import Metric, Settings
from mmsearch.engine import MMSearch
from mmsearch.images import ImageError, decode_image
from mmsearch.ingest import IngestReport, SourceError
from mmsearch.providers import ProviderError
from mmsearch.search import MAX_K, Mode, QueryError
from mmsearch.store import Hit, Item, StoreError

API = "/api/v1"
THUMBNAIL_SIZES = (128, 256, 512)
MAX_QUERY_CHARS = 1000


# -- response models (the OpenAPI document is the contract) -----------------------------------


class ItemOut(BaseModel):
    id: str
    label: str
    description: str
    keywords: list[str]
    width: int
    height: int
    indexed_at: int
    filename: str = Field(description="The file's name (its folder is not disclosed).")
    image_url: str
    thumbnail_url: str

    @classmethod
    def of(cls, item: Item) -> ItemOut:
        return cls(
            id=item.id,
            label=item.label,
            description=item.description,
            keywords=item.keywords,
            width=item.width,
            height=item.height,
            indexed_at=item.indexed_at,
            filename=Path(item.origin).name,
            image_url=f"{API}/items/{item.id}/image",
            thumbnail_url=f"{API}/items/{item.id}/thumbnail",
        )


class HitOut(ItemOut):
    score: float

    @classmethod
    def of(cls, item: Item) -> HitOut:  # type: ignore[override]
        assert isinstance(item, Hit)
        return cls(**ItemOut.of(item).model_dump(), score=item.score)


class SearchOut(BaseModel):
    mode: Mode
    query: str
    k: int
    took_ms: float
    hits: list[HitOut]


class StatsOut(BaseModel):
    count: int
    collection: str
    exists: bool
    embedder: str | None = None
    describer: str | None = None
    dim: int | None = None
    index_type: str | None = None
    metric: str | None = None
    indexing_enabled: bool
    version: str = __version__


class IndexOut(BaseModel):
    total: int
    indexed: int
    unchanged: int
    failed: list[dict[str, str]]
    seconds: float

    @classmethod
    def of(cls, report: IngestReport) -> IndexOut:
        return cls(
            total=report.total,
            indexed=report.indexed,
            unchanged=report.unchanged,
            failed=[{"path": Path(p).name, "reason": r} for p, r in report.failed],
            seconds=round(report.seconds, 3),
        )


class FolderIn(BaseModel):
    path: str = Field(description="A folder or CSV on the server.")
    limit: int | None = Field(None, ge=1)


# -- helpers ---------------------------------------------------------------------------------

_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")


def _label_filter(label: str | None) -> str:
    if not label:
        return ""
    escaped = label.replace("\\", "\\\\").replace('"', '\\"')
    return f'label == "{escaped}"'


class Service:
    """What the app holds: one MMSearch and the lock that serialises its use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mm = MMSearch(settings=settings)
        self.lock = threading.Lock()
        self.thumb_dir = settings.cache_dir / "thumbnails"

    def item(self, item_id: str) -> Item:
        if not _ID_RE.match(item_id):
            raise HTTPException(404, "no such item")
        with self.lock:
            item = self.mm.get(item_id) if self.mm.store.exists() else None
        if item is None:
            raise HTTPException(404, "no such item")
        return item

    def search(self, query: Any, mode: Mode, k: int, min_score: float | None, label: str | None):
        if min_score is not None and self.settings.metric is Metric.L2:
            raise HTTPException(400, "min_score is for COSINE and IP metrics, not L2")
        with self.lock:
            if not self.mm.store.exists():
                return []
            hits = self.mm.search(query, mode=mode, k=k, filter=_label_filter(label))
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        return hits


def _service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"upload larger than {limit:,} bytes")
    if not data:
        raise HTTPException(400, "empty upload")
    return data


def _decode_upload(data: bytes, settings: Settings) -> Image.Image:
    try:
        image, _, _ = decode_image(data, max_pixels=settings.max_image_pixels)
    except ImageError as exc:
        raise HTTPException(415, f"not a usable image: {exc}") from None
    return image


def _require_token(request: Request, settings: Settings) -> None:
    if settings.api_token is None:
        raise HTTPException(403, "indexing over HTTP is disabled: set MMSEARCH_API_TOKEN")
    header = request.headers.get("authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    if not secrets.compare_digest(given.encode(), settings.api_token.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong API token", {"WWW-Authenticate": "Bearer"})


# -- the app ---------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; ``mmsearch serve`` runs it with uvicorn."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = Service(settings)
        yield
        app.state.service.mm.close()

    app = FastAPI(
        title="mmsearch",
        version=__version__,
        description="Search images by text and by image. Modes: text2image, text2text, "
        "image2image, image2text.",
        lifespan=lifespan,
    )

    @app.exception_handler(QueryError)
    async def _query_error(_: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(ProviderError)
    async def _provider_error(_: Request, exc: ProviderError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=502)

    @app.get(f"{API}/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(f"{API}/stats", response_model=StatsOut, tags=["meta"])
    def stats(svc: ServiceDep) -> StatsOut:
        with svc.lock:
            info = svc.mm.stats()
        return StatsOut(**info, indexing_enabled=svc.settings.api_token is not None)

    @app.get(f"{API}/search", response_model=SearchOut, tags=["search"])
    def search_text(
        svc: ServiceDep,
        q: Annotated[str, Query(max_length=MAX_QUERY_CHARS, description="Text query.")],
        mode: Annotated[Mode, Query()] = Mode.text2image,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
        min_score: float | None = None,
        label: str | None = None,
    ) -> SearchOut:
        """Search by text: ``text2image`` (images) or ``text2text`` (descriptions)."""
        if mode.takes_image:
            raise HTTPException(400, f"mode {mode.value} takes an image: POST {API}/search/image")
        if not q.strip():
            raise HTTPException(400, "the text query is empty")
        started = time.perf_counter()
        hits = svc.search(q, mode, k, min_score, label)
        return SearchOut(
            mode=mode, query=q, k=k, took_ms=_ms(started), hits=[HitOut.of(h) for h in hits]
        )

    @app.post(f"{API}/search/image", response_model=SearchOut, tags=["search"])
    async def search_image(
        request: Request,
        file: Annotated[UploadFile, File(description="The query image.")],
        mode: Annotated[Mode, Form()] = Mode.image2image,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 20,
        min_score: Annotated[float | None, Form()] = None,
        label: Annotated[str | None, Form()] = None,
    ) -> SearchOut:
        """Search by an uploaded image: ``image2image`` or ``image2text``."""
        svc: Service = request.app.state.service
        if not mode.takes_image:
            raise HTTPException(400, f"mode {mode.value} takes text: GET {API}/search?q=...")
        data = await _read_upload(file, svc.settings.max_upload_bytes)
        image = _decode_upload(data, svc.settings)
        started = time.perf_counter()
        hits = await _in_thread(svc.search, image, mode, k, min_score, label)
        return SearchOut(
            mode=mode,
            query=file.filename or "upload",
            k=k,
            took_ms=_ms(started),
            hits=[HitOut.of(h) for h in hits],
        )

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
        with svc.lock:
            hits = svc.mm.more_like_this(item_id, k=k)
        return SearchOut(
            mode=Mode.image2image,
            query=item_id,
            k=k,
            took_ms=_ms(started),
            hits=[HitOut.of(h) for h in hits],
        )

    @app.get(f"{API}/items/{{item_id}}/image", tags=["items"], response_class=FileResponse)
    def image(svc: ServiceDep, item_id: str) -> FileResponse:
        """The original file of an indexed item."""
        path = Path(svc.item(item_id).origin)
        if not path.is_file():
            raise HTTPException(410, "the indexed file is no longer on disk")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @app.get(f"{API}/items/{{item_id}}/thumbnail", tags=["items"], response_class=Response)
    def thumbnail(svc: ServiceDep, item_id: str, size: Annotated[int, Query()] = 256) -> Response:
        """A JPEG thumbnail (128, 256 or 512 px), made once and cached."""
        if size not in THUMBNAIL_SIZES:
            raise HTTPException(400, f"size must be one of {THUMBNAIL_SIZES}")
        item = svc.item(item_id)
        key = hashlib.blake2b(f"{item.id}:{item.content_hash}:{size}".encode(), digest_size=12)
        cached = svc.thumb_dir / f"{key.hexdigest()}.jpg"
        if not cached.exists():
            try:
                data = Path(item.origin).read_bytes()
                img, _, _ = decode_image(data, max_pixels=svc.settings.max_image_pixels)
            except (OSError, ImageError):
                raise HTTPException(410, "the indexed file is no longer readable") from None
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
            svc.thumb_dir.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(cached)
        return FileResponse(
            cached, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
        )

    @app.post(f"{API}/index/upload", response_model=IndexOut, tags=["indexing"])
    async def index_upload(
        request: Request, files: Annotated[list[UploadFile], File(description="Images.")]
    ) -> IndexOut:
        """Upload and index images (needs the API token)."""
        svc: Service = request.app.state.service
        _require_token(request, svc.settings)
        batch_dir = svc.settings.upload_dir.resolve() / time.strftime("%Y%m%d-%H%M%S")
        saved = []
        for upload in files:
            data = await _read_upload(upload, svc.settings.max_upload_bytes)
            _decode_upload(data, svc.settings)
            name = Path(upload.filename or "upload").name or "upload"
            digest = hashlib.blake2b(data, digest_size=8).hexdigest()
            batch_dir.mkdir(parents=True, exist_ok=True)
            target = batch_dir / f"{digest}-{name}"
            target.write_bytes(data)
            saved.append(target)
        report = await _in_thread(_index_paths, svc, saved)
        return IndexOut.of(report)

    @app.post(f"{API}/index/folder", response_model=IndexOut, tags=["indexing"])
    async def index_folder(request: Request, body: FolderIn) -> IndexOut:
        """Index a folder or CSV on the server (needs the API token)."""
        svc: Service = request.app.state.service
        _require_token(request, svc.settings)
        try:
            report = await _in_thread(_index_source, svc, Path(body.path), body.limit)
        except SourceError as exc:
            raise HTTPException(400, str(exc)) from None
        return IndexOut.of(report)

    web = resources.files("mmsearch") / "web"
    app.mount("/static", StaticFiles(directory=str(web)), name="static")

    @app.get("/", include_in_schema=False)
    def index_page() -> Response:
        return FileResponse(str(web / "index.html"), media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return RedirectResponse("/static/favicon.svg")

    return app


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def _in_thread(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _index_paths(svc: Service, paths: list[Path]) -> IngestReport:
    from mmsearch.ingest import SourceItem

    with svc.lock:
        return svc.mm.index([SourceItem(p, "upload") for p in paths])


def _index_source(svc: Service, source: Path, limit: int | None) -> IngestReport:
    with svc.lock:
        return svc.mm.index(source, limit=limit)
