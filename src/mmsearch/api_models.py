"""The HTTP API's response models: the OpenAPI document they make is the API's contract."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from mmsearch import __version__
from mmsearch.duplicates import DuplicateReport
from mmsearch.ingest import IngestReport
from mmsearch.search import Mode
from mmsearch.store import Hit, Item

API = "/api/v1"


class PlaceOut(BaseModel):
    city: str
    region: str
    country: str
    country_code: str
    names_zh: str = Field(description="The same places' Chinese names, where known.")


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
    taken_at: str | None = Field(
        None, description="When it was taken, wall-clock time where it was (ISO 8601)."
    )
    taken_at_source: str = Field("", description='"exif", "mtime" (file time) or "".')
    utc_offset: str = ""
    place: PlaceOut | None = None
    latitude: float | None = None
    longitude: float | None = None
    camera: str = ""
    file_format: str = ""
    ocr_text: str = Field("", description="The text read off the photo (OCR), if any.")

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
            **_facts_out(item),
            ocr_text=item.ocr_text,
        )


def _facts_out(item: Item) -> dict[str, Any]:
    seconds = int(item.fact("taken_at"))
    gps = bool(item.fact("has_gps"))
    place = None
    if item.fact("place_country_code"):
        place = PlaceOut(
            city=item.fact("place_city"),
            region=item.fact("place_region"),
            country=item.fact("place_country"),
            country_code=item.fact("place_country_code"),
            names_zh=item.fact("place_zh"),
        )
    camera = " ".join(p for p in (item.fact("camera_make"), item.fact("camera_model")) if p)
    return {
        "taken_at": datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None).isoformat()
        if seconds
        else None,
        "taken_at_source": item.fact("taken_at_source"),
        "utc_offset": item.fact("utc_offset"),
        "place": place,
        "latitude": float(item.fact("latitude")) if gps else None,
        "longitude": float(item.fact("longitude")) if gps else None,
        "camera": camera,
        "file_format": item.fact("file_format"),
    }


class MatchOut(BaseModel):
    """Where a query's words are in a result: ``text`` is ``field``'s value
    ``[start:end]`` (code points; ``keywords``: of keyword number ``index``; ``file_name``:
    of the file name)."""

    field: str = Field(description="ocr_text, file_name, label, keywords or description.")
    start: int
    end: int
    text: str
    index: int = 0


class WhyOut(BaseModel):
    """Why a text query's result matched: by its vectors, its words, or both, with its rank
    and score in each list (null where it was not in that list)."""

    matched_by: str = Field(description="vector, lexical or both.")
    vector_rank: int | None = None
    vector_score: float | None = None
    lexical_rank: int | None = None
    lexical_score: float | None = None
    matches: list[MatchOut] = Field(default_factory=list)


class HitOut(ItemOut):
    score: float = Field(
        description="Text queries ranked fused: the fusion's score (reciprocal ranks); "
        "vector: the similarity; lexical: BM25F. Image queries: the similarity."
    )
    copies: int = Field(
        0,
        description="With collapse=true: how many lower-ranked copies of this photo (exact "
        "or near duplicates) the results held and this hit stands for.",
    )
    why: WhyOut | None = Field(None, description="Text queries: why this result matched.")

    @classmethod
    def of(cls, item: Item, copies: int = 0) -> HitOut:  # type: ignore[override]
        assert isinstance(item, Hit)
        why = WhyOut(**item.why) if item.why else None
        return cls(**ItemOut.of(item).model_dump(), score=item.score, copies=copies, why=why)


class SearchOut(BaseModel):
    mode: Mode | None = Field(description="None when browsing by filters alone.")
    query: str
    text: str = Field("", description="The part of the query that was searched for.")
    filters: dict[str, Any] = Field(
        default_factory=dict,
        description="The filters applied; `understood` lists each with the words it came "
        "from (the page shows them as chips that can be removed).",
    )
    ranking: str = Field("", description="How a text query was ranked (fused, vector, lexical).")
    k: int
    took_ms: float
    hits: list[HitOut]
    more: list[HitOut] = Field(
        default_factory=list,
        description="With cutoff=auto or min_score: the results past the point where relevance "
        "ends, best first (the page's 'show more').",
    )


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
    duplicates: int
    moved: int
    removed: list[str] = Field(description="Names of files gone from the folder.")
    failed: list[dict[str, str]] = Field(description="File names (not folders) and reasons.")
    seconds: float
    images_per_second: float
    stage_seconds: dict[str, float]
    ocr: dict[str, Any] | None = Field(
        None, description="The text-reading pass that followed (with the ocr setting on)."
    )

    @classmethod
    def of(cls, report: IngestReport) -> IndexOut:
        return cls(**report.as_dict(full_paths=False))


class DuplicateItemOut(BaseModel):
    id: str
    filename: str = Field(description="The file's name (its folder is not disclosed).")
    thumbnail_url: str
    image_url: str
    width: int
    height: int
    file_size: int
    similarity: float = Field(
        description="Copy similarity to the group's representative (1.0 for itself and for "
        "exact copies); below the threshold only for a copy joined through another."
    )
    kind: Literal["representative", "exact", "near"]


class DuplicateGroupOut(BaseModel):
    kind: Literal["exact", "near", "mixed"] = Field(
        description="exact: all the same bytes; near: none; mixed: both."
    )
    size: int
    similarity: float = Field(description="The lowest similarity between two of its copies.")
    representative: str = Field(description="The id of the copy to keep (listed first).")
    items: list[DuplicateItemOut]


class DuplicatesOut(BaseModel):
    threshold: float
    scanned: int = Field(description="Items compared: the whole collection.")
    groups_count: int
    duplicates: int = Field(description="Copies beyond each group's representative.")
    failed: list[dict[str, str]] = Field(
        description="File names (not folders) left out of the near comparison, and why."
    )
    computed_at: float = Field(description="When the report was made (Unix seconds).")
    seconds: float = Field(description="How long making it took.")
    groups: list[DuplicateGroupOut]

    @classmethod
    def of(cls, report: DuplicateReport, computed_at: float) -> DuplicatesOut:
        public = report.as_dict(full_paths=False)
        groups = [
            DuplicateGroupOut(
                kind=g["kind"],
                size=g["size"],
                similarity=g["similarity"],
                representative=g["representative"],
                items=[_duplicate_item(it) for it in g["items"]],
            )
            for g in public["groups"]
        ]
        return cls(
            threshold=report.threshold,
            scanned=report.items,
            groups_count=len(groups),
            duplicates=report.duplicates,
            failed=[{"filename": f["path"], "reason": f["reason"]} for f in public["failed"]],
            computed_at=computed_at,
            seconds=public["seconds"],
            groups=groups,
        )


def _duplicate_item(item: dict[str, Any]) -> DuplicateItemOut:
    """One member of a group from the report's public form (file names only)."""
    return DuplicateItemOut(
        id=item["id"],
        filename=item["name"],
        thumbnail_url=f"{API}/items/{item['id']}/thumbnail",
        image_url=f"{API}/items/{item['id']}/image",
        width=item["width"],
        height=item["height"],
        file_size=item["file_size"],
        similarity=item["similarity"],
        kind=item["kind"],
    )


class FolderIn(BaseModel):
    path: str = Field(description="A folder or CSV on the server.")
    limit: int | None = Field(None, ge=1)
