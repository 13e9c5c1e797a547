"""``MMSearch``: the Python API a notebook user calls in three lines.

    from mmsearch import MMSearch
    mm = MMSearch("photos.db")
    mm.index("~/Pictures"); mm.search("棕色的狗")

It only wires settings, store, providers, ingest and search together; the CLI and the HTTP
API use it too, so all three behave the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image

from mmsearch.config import Settings, load_settings
from mmsearch.distributed import RayIngestor, RayOptions, enrich_ocr_on_ray
from mmsearch.enrich import EnrichReport, enrich_ocr
from mmsearch.estimate import Estimate, estimate_index
from mmsearch.filters import Filters
from mmsearch.ingest import Ingestor, IngestReport, ProgressCallback, files_to_do
from mmsearch.providers import Describer, Embedder, get_describer, get_embedder
from mmsearch.search import Mode, Results, Searcher
from mmsearch.sources import SourceItem
from mmsearch.sources import item_id as file_id
from mmsearch.store import Hit, Item, Store


class MMSearch:
    """Index and search one collection. Arguments override settings (see ``Settings``)."""

    def __init__(
        self, uri: str | None = None, *, settings: Settings | None = None, **overrides: Any
    ):
        if settings is None:
            settings = load_settings(uri=uri, **overrides)
        elif uri is not None or overrides:
            settings = settings.model_copy(update={"uri": uri or settings.uri, **overrides})
        self.settings = settings
        self.store = Store(settings)

    @cached_property
    def embedder(self) -> Embedder:
        return get_embedder(self.settings)

    @cached_property
    def describer(self) -> Describer:
        return get_describer(self.settings)

    @cached_property
    def searcher(self) -> Searcher:
        return Searcher(self.settings, store=self.store, embedder=self.embedder)

    def index(
        self,
        source: str | Path | Sequence[SourceItem],
        *,
        limit: int | None = None,
        progress: ProgressCallback | None = None,
        ocr: bool | None = None,
        ocr_progress: ProgressCallback | None = None,
        ray: RayOptions | None = None,
    ) -> IngestReport:
        """Index a folder (recursively), a CSV (``id,path,label``) or one image; then, with
        ``ocr`` (default: the ``ocr`` setting), read the text of the photos not read yet.
        With ``ray``, the batches run on a Ray cluster (``distributed.py``)."""
        parts = {"store": self.store, "embedder": self.embedder, "describer": self.describer}
        if ray is not None:
            ingestor: Ingestor = RayIngestor(self.settings, ray, **parts)
        else:
            ingestor = Ingestor(self.settings, **parts)
        if isinstance(source, str | Path):
            source = Path(source).expanduser()
        report = ingestor.run(source, limit=limit, progress=progress)
        self.__dict__.pop("searcher", None)  # the collection may have just been created
        if (self.settings.ocr if ocr is None else ocr) and self.store.exists():
            if ray is not None:
                report.ocr = enrich_ocr_on_ray(self.store, ray, progress=ocr_progress)
            else:
                report.ocr = self.enrich_ocr(progress=ocr_progress)
        return report

    def plan_index(
        self, source: str | Path | Sequence[SourceItem], *, limit: int | None = None
    ) -> Estimate:
        """What indexing ``source`` would cost, without reading or writing anything: the
        files to do and, for remote providers, requests, time and price (``estimate.py``)."""
        if isinstance(source, str | Path):
            source = Path(source).expanduser()
        follow = self.settings.follow_symlinks
        todo = files_to_do(self.store, source, limit, follow_symlinks=follow)
        return estimate_index(todo, self.settings)

    def enrich_ocr(
        self,
        *,
        limit: int | None = None,
        progress: ProgressCallback | None = None,
        lock: AbstractContextManager | None = None,
    ) -> EnrichReport:
        """Read the text in the stored photos that have not been read yet (``enrich.py``):
        resumable, and nothing is embedded again. ``lock`` guards the store's calls."""
        with lock or nullcontext():
            self.searcher  # noqa: B018 - opens (and migrates) the collection, or says it is missing
        return enrich_ocr(
            self.store,
            max_pixels=self.settings.max_image_pixels,
            limit=limit,
            progress=progress,
            lock=lock,
        )

    def reindex(self, *, progress: ProgressCallback | None = None) -> IngestReport:
        """Describe and embed every stored image again, from its stored path and label, with
        the configured providers (e.g. after switching embedder).

        The new vectors go to a side collection that replaces the old one only when every
        file has been tried, so an interrupted reindex loses nothing and a rerun resumes.
        """
        items = [SourceItem(Path(it.origin), it.label) for it in self.store.iter_items()]
        side = self.settings.model_copy(
            update={"collection": f"{self.settings.collection}__reindex"}
        )
        with Store(side) as side_store:
            ingestor = Ingestor(
                side, store=side_store, embedder=self.embedder, describer=self.describer
            )
            report = ingestor.run(items, progress=progress)
            self.store.drop()
            side_store.rename(self.settings.collection)
        self.close()
        self.__dict__.pop("searcher", None)
        return report

    def search(
        self,
        query: str | Path | Image.Image,
        *,
        mode: Mode | str | None = None,
        k: int = 10,
        filter: str = "",
        filters: Filters | None = None,
        sort: str = "relevance",
        **options: Any,
    ) -> list[Hit]:
        """Search; the mode defaults to text2image for text and image2image for images.
        The text is taken literally; ``find`` also reads times and places out of it.
        ``options``: ``ranking``, ``cutoff``, ``min_score`` (``Searcher.find``)."""
        return self.find(
            query, mode=mode, k=k, filter=filter, filters=filters, sort=sort, parse=False, **options
        ).hits

    def find(
        self,
        query: str | Path | Image.Image | None,
        *,
        mode: Mode | str | None = None,
        k: int = 10,
        filter: str = "",
        filters: Filters | None = None,
        sort: str = "relevance",
        parse: bool = True,
        ranking: str = "fused",
        cutoff: str = "none",
        min_score: float | None = None,
    ) -> Results:
        """Search as the CLI and the page do: words naming a time or a place become
        filters ("海边 2023年7月", "beach in Paris"); no query (or only such words) browses
        by the filters, newest first. ``Results`` says what was understood. A text is
        ranked by its words and its vectors fused (``ranking``: "fused", "vector" or
        "lexical"); ``cutoff="auto"`` moves what is past the end of relevance to
        ``Results.more``, as does ``min_score`` (a least vector similarity)."""
        return self.searcher.find(
            query,
            mode=mode,
            k=k,
            filter=filter,
            filters=filters,
            sort=sort,
            parse=parse,
            ranking=ranking,
            cutoff=cutoff,
            min_score=min_score,
        )

    def more_like_this(self, item_id: str, *, k: int = 10) -> list[Hit]:
        return self.searcher.more_like_this(item_id, k=k)

    def remove(self, paths: Sequence[str | Path]) -> list[str]:
        """Remove the rows of files (or of every file under folders) that are gone; returns
        the origins removed. The files themselves are not touched."""
        if not self.store.exists():
            return []
        gone: dict[str, str] = {}
        for raw in paths:
            path = Path(raw).expanduser().absolute()
            gone.update(self.store.ids_under(path))
            for item in self.store.items([file_id(path)]):
                gone[item.id] = item.origin
        self.store.delete(list(gone))
        return sorted(gone.values())

    def get(self, item_id: str) -> Item | None:
        items = self.store.items([item_id])
        return items[0] if items else None

    def stats(self) -> dict[str, Any]:
        return self.store.stats()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> MMSearch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
