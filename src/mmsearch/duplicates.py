"""Duplicates: the same photo stored more than once, found in a collection and collapsed in
search results.

Two kinds, both reported as pairs inside groups:

- **exact**: files with the same bytes (the stored ``content_hash``): similarity 1.0.
- **near**: the same picture re-encoded, resized, cropped a little, rotated by its EXIF
  tag or converted to another format. A pair is near when its *copy similarity* reaches
  the threshold.

The copy similarity is one inner product of two *copy vectors*, each the concatenation of

- ``sqrt(w) * v / |v|``: the image's stored vector ``v`` (``image_feature`` where the
  embedder has one, else ``image_embedding``), which says "the same content";
- ``sqrt(1 - w) * b / 8``: the 64 bits ``b`` (as +-1) of the image's difference hash
  (``dhash``), which says "the same layout of light and dark".

so it equals ``w * cos(v_a, v_b) + (1 - w) * (1 - 2 * hamming(b_a, b_b) / 64)``. Neither
part suffices alone (``bench/duplicates.py``, 1,813 images: 250 originals, their copies,
250 look-alikes): ``image_feature`` alone reaches at best precision and recall 0.81 at
once (two photos of one class are closer in it than a photo and its copies), the hash
alone 0.95 (crops move it as far as an unrelated photo of similar layout); half and half
gives 0.998, and >= 0.98 for every threshold from 0.605 to 0.725. Exact copies share a
content hash, so only the first of them takes part in the vector comparison.

The hash is computed from the image as ingest decodes it (``images.decode_image``, upright,
EXIF orientation applied). Until the store keeps it (a scalar field ``image_dhash``, see
``DHASH_FIELD``), it is computed here from the indexed file, which is read only while it
still has the content hash recorded at indexing (``images.read_indexed``); results are
cached per content hash for the life of the process.

Pairs are found by an exact blocked scan in numpy over the copy vectors of the whole
collection (``similar_pairs``), then joined into groups transitively (union-find). Milvus's
own neighbour search is not used: no stored field has the copy similarity as its metric
(nor ranks copies above look-alikes, above), and one top-k search per item would cost
100,000 searches for 100k items (20 ms each on Milvus Lite: 34 min) where the scan takes
minutes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from mmsearch.images import ImageError, decode_image, read_indexed
from mmsearch.schema import FEATURE_FIELD, IMAGE_FIELD, Hit, Item
from mmsearch.search import MAX_K, Results
from mmsearch.store import Store, StoreError

log = logging.getLogger(__name__)

#: Weight of the stored vector in the copy similarity; the rest is the hash's. Measured
#: with the offline provider (``bench/duplicates.py``): 0.5 gives the widest range of
#: thresholds where precision and recall both stay >= 0.98; the vector alone (1.0) and the
#: hash alone (0.0) never reach it.
VECTOR_WEIGHT = 0.5
#: Pairs at or above this copy similarity are near duplicates. Chosen inside the range of
#: thresholds where precision and recall both stay >= 0.98 on two generated sets (ImageNet
#: photos with same-class distractors, Flickr photos), not at the best point of either
#: (``bench/results/duplicates-*.json``).
DEFAULT_THRESHOLD = 0.66
#: The scalar field that will keep each image's ``dhash`` (INT64) once the schema has it.
DHASH_FIELD = "image_dhash"
#: Rows per store read when exporting a collection.
PAGE = 1000
#: Groups larger than this list each member's pair with the representative only, not every
#: pair (a thousand copies of one file would be half a million pairs).
MAX_ALL_PAIRS = 32
#: Score-matrix cells per block of the pair scan (float32): bounds its memory to ~100 MB.
BLOCK_CELLS = 25_000_000
#: Hashes computed from files, kept per content hash for the life of the process.
_HASH_CACHE_SIZE = 200_000
#: Hits a collapsing search asks for per result it shows (``collapse_k``): each set of
#: copies in the list shrinks to one entry, and ``k`` distinct photos should remain.
COLLAPSE_OVERSAMPLING = 3

Kind = Literal["exact", "near"]
#: What guards the store's reads (a server's lock around its one Milvus client), taken a
#: page at a time so that searches interleave with a long scan; hashing and the pair scan
#: run outside it.
StoreLock = AbstractContextManager[Any]


# -- the copy vector ---------------------------------------------------------------------------


def dhash(image: Image.Image) -> int:
    """The 64-bit difference hash of an image, as a signed int (fits a Milvus INT64).

    Grey levels on a 9x8 grid (Lanczos, which measured better than a box filter); bit i is
    set where a cell is brighter than its right neighbour. Re-encoding, resizing and format
    changes keep most bits; it is blind to colour and meaning, which the vector covers.
    """
    small = image.convert("L").resize((9, 8), Image.Resampling.LANCZOS)
    cells = np.asarray(small, np.int16)
    bits = (cells[:, 1:] > cells[:, :-1]).ravel()
    value = int.from_bytes(np.packbits(bits).tobytes(), "big")
    return value - (1 << 64) if value >= (1 << 63) else value


def hash_bits(hashes: Sequence[int]) -> np.ndarray:
    """(N, 64) float32 of +-1/8 (unit rows): the inner product of two rows is
    ``1 - 2 * hamming / 64``."""
    words = np.array([h & ((1 << 64) - 1) for h in hashes], dtype=">u8").reshape(-1)
    bits = np.unpackbits(words.view(np.uint8).reshape(-1, 8), axis=1)
    return (bits.astype(np.float32) * 2.0 - 1.0) / 8.0


def copy_vectors(
    vectors: np.ndarray, hashes: Sequence[int], *, weight: float = VECTOR_WEIGHT
) -> np.ndarray:
    """Unit rows whose inner products are copy similarities (see the module docstring)."""
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.concatenate(
        [np.sqrt(weight) * vectors / norms, np.sqrt(1.0 - weight) * hash_bits(hashes)], axis=1
    ).astype(np.float32)


def similar_pairs(
    vectors: np.ndarray, threshold: float, *, block_cells: int = BLOCK_CELLS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of rows with ``vectors[i] @ vectors[j] >= threshold``: (i, j, sim).

    An exact scan, a block of rows against the rows after it, so each pair is scored once
    and the score matrix never exceeds ``block_cells`` floats. Measured at 100k rows of
    1448-d on two cores: see ``bench/duplicates.py``.
    """
    n = len(vectors)
    block = max(1, min(n, block_cells // max(n, 1)))
    out_i, out_j, out_s = [], [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        scores = vectors[start:stop] @ vectors[start:].T
        rows, cols = np.nonzero(scores >= threshold)
        keep = cols > rows  # the block's own diagonal and the pairs below it
        rows, cols = rows[keep], cols[keep]
        out_i.append(rows + start)
        out_j.append(cols + start)
        out_s.append(scores[rows, cols])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


# -- hashes of stored items --------------------------------------------------------------------

#: content hash -> dhash, least recently used first; the lock keeps it whole when the
#: hashing threads and a server's request threads use it at once.
_hash_cache: OrderedDict[str, int] = OrderedDict()
_hash_lock = threading.Lock()


def _cached_hash(content_hash: str) -> int | None:
    with _hash_lock:
        if content_hash in _hash_cache:
            _hash_cache.move_to_end(content_hash)
            return _hash_cache[content_hash]
    return None


def _remember_hash(content_hash: str, value: int) -> None:
    with _hash_lock:
        _hash_cache[content_hash] = value
        while len(_hash_cache) > _HASH_CACHE_SIZE:
            _hash_cache.popitem(last=False)


def clear_hash_cache() -> None:
    """Forget the hashes computed from files (tests and the bench measure a cold start)."""
    with _hash_lock:
        _hash_cache.clear()


def file_dhash(item: Item, *, max_pixels: int) -> int:
    """The ``dhash`` of an indexed file, decoded as ingest decoded it.

    The file is read only if it still has the indexed content (``read_indexed``), so the
    hash always belongs to the vectors stored with it. Keyed by content hash: the same bytes
    at two paths are hashed once, and a search that collapses its hits on every request
    reads each file once per process.
    """
    if item.content_hash and (known := _cached_hash(item.content_hash)) is not None:
        return known
    data = read_indexed(Path(item.origin), item.content_hash)
    image, _, _ = decode_image(data, max_pixels=max_pixels)
    value = dhash(image)
    if item.content_hash:
        _remember_hash(item.content_hash, value)
    return value


def item_hashes(
    items: Sequence[Item],
    stored: Mapping[str, int],
    *,
    max_pixels: int,
    workers: int = 2,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """id -> dhash for each item (stored where the store has it, else from its file) and
    (origin, reason) for each file that could not be hashed (moved, changed, unreadable).

    Exact copies (one content hash) are hashed once, from the first of their files that
    still reads: they are the same picture, and hashing them in parallel threads would
    decode the same bytes twice before the cache knew them. Files are decoded in threads
    (Pillow releases the GIL while decoding).
    """
    out = {i.id: stored[i.id] for i in items if i.id in stored}
    copies: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        if it.id not in out:
            copies[it.content_hash or f"id:{it.id}"].append(it)
    failed: list[tuple[str, str]] = []
    if not copies:
        return out, failed

    def one(members: list[Item]) -> tuple[list[Item], int | None, list[tuple[str, str]]]:
        reasons: list[tuple[str, str]] = []
        for item in members:
            try:
                return members, file_dhash(item, max_pixels=max_pixels), []
            except ImageError as exc:
                reasons.append((item.origin, str(exc)))
        return members, None, reasons

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for members, value, reasons in pool.map(one, copies.values()):
            failed += reasons
            if value is not None:
                out.update((m.id, value) for m in members)
    return out, failed


# -- a collection's copy vectors ---------------------------------------------------------------


@dataclass
class Snapshot:
    """The items of a collection with their copy vectors, read once: the scan and every
    threshold tried on it (``find_groups``) work from memory."""

    items: list[Item]
    #: Copy vectors, one row per item; zero rows where ``usable`` is False.
    vectors: np.ndarray
    #: Whether the row has a vector and a hash (the file could be read).
    usable: np.ndarray
    #: (origin, reason) of items left out of the near-duplicate scan.
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: The stored vector field the copy vectors were made from.
    vector_field: str = FEATURE_FIELD
    weight: float = VECTOR_WEIGHT
    #: Seconds per stage: reading the store, hashing files.
    stages: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def _read_store(
    store: Store,
    ids: Sequence[str],
    weight: float,
    progress: Callable[[int, int], None] | None,
    lock: StoreLock,
) -> tuple[list[Item], np.ndarray, dict[str, int], str]:
    """Items, their copy vectors' vector part (hash part still zero), stored hashes and the
    vector field used, a page at a time into one preallocated array (100k rows of the
    offline provider are 580 MB; a second copy is avoided)."""
    items: list[Item] = []
    stored: dict[str, int] = {}
    out = np.zeros((0, 0), np.float32)
    field_name = FEATURE_FIELD
    for start in range(0, len(ids), PAGE):
        with lock:
            page = store.get(ids[start : start + PAGE], with_vectors=True)
        if not page:
            continue
        field_name = FEATURE_FIELD if page[0].get(FEATURE_FIELD) is not None else IMAGE_FIELD
        block = np.asarray([rec[field_name] for rec in page], np.float32)
        if out.size == 0:
            out = np.zeros((len(ids), block.shape[1] + 64), np.float32)
        norms = np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        out[len(items) : len(items) + len(page), :-64] = np.sqrt(weight) * block / norms
        for rec in page:
            items.append(Item.from_entity(rec["id"], rec))
            if rec.get(DHASH_FIELD) is not None:
                stored[rec["id"]] = int(rec[DHASH_FIELD])
        if progress:
            progress(len(items), len(ids))
    return items, out[: len(items)], stored, field_name


def load_snapshot(
    store: Store,
    ids: Sequence[str] | None = None,
    *,
    weight: float = VECTOR_WEIGHT,
    progress: Callable[[int, int], None] | None = None,
    lock: StoreLock | None = None,
) -> Snapshot:
    """Read the items (all, or ``ids``) with their stored vectors and hashes, hash the files
    whose hash the store does not keep, and build the copy vectors (``lock``: see
    ``StoreLock``)."""
    lock = lock or nullcontext()
    stages: dict[str, float] = defaultdict(float)
    started = time.perf_counter()
    if ids is None:
        with lock:
            ids = [item.id for item in store.iter_items()]
    items, vectors, stored, field_name = _read_store(store, list(ids), weight, progress, lock)
    stages["read store"] = time.perf_counter() - started
    started = time.perf_counter()
    settings = store.settings
    hashes, failed = item_hashes(
        items, stored, max_pixels=settings.max_image_pixels, workers=settings.workers
    )
    usable = np.array([item.id in hashes for item in items], bool)
    rows = np.flatnonzero(usable)
    if len(rows):
        bits = hash_bits([hashes[items[r].id] for r in rows])
        vectors[rows, -64:] = np.sqrt(1.0 - weight) * bits
    vectors[~usable] = 0.0
    stages["hash files"] = time.perf_counter() - started
    return Snapshot(items, vectors, usable, failed, field_name, weight, stages)


# -- groups ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """Two items of a group and how alike they are: ``exact`` (same bytes, 1.0) or ``near``
    (their copy similarity; below the threshold only for a pair joined through others)."""

    a: str
    b: str
    similarity: float
    kind: Kind


@dataclass
class Group:
    """Copies of one photo: the representative first, then by similarity to it."""

    items: list[Item]
    pairs: list[Pair]

    @property
    def representative(self) -> Item:
        """The copy to keep and show (see ``representative_key``)."""
        return self.items[0]

    @property
    def kind(self) -> str:
        """``exact`` (all the same bytes), ``near`` (none) or ``mixed``."""
        kinds = {p.kind for p in self.pairs}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def similarity(self) -> float:
        """The lowest similarity listed: how far apart the group's copies can be."""
        return min((p.similarity for p in self.pairs), default=1.0)

    def as_dict(self, *, full_paths: bool = True) -> dict[str, Any]:
        """The JSON form for the CLI and the API (``full_paths=False``: file names only)."""
        to_rep = {p.b: p for p in self.pairs if p.a == self.representative.id}
        return {
            "size": len(self.items),
            "kind": self.kind,
            "similarity": round(self.similarity, 4),
            "representative": self.representative.id,
            "items": [
                _item_dict(it, to_rep.get(it.id), full_paths=full_paths) for it in self.items
            ],
            "pairs": [
                {"a": p.a, "b": p.b, "similarity": round(p.similarity, 4), "kind": p.kind}
                for p in self.pairs
            ],
        }


def _item_dict(item: Item, to_rep: Pair | None, *, full_paths: bool) -> dict[str, Any]:
    return {
        "id": item.id,
        "name": Path(item.origin).name,
        **({"origin": item.origin} if full_paths else {}),
        "width": item.width,
        "height": item.height,
        "file_size": item.file_size,
        "similarity": round(to_rep.similarity, 4) if to_rep else 1.0,
        "kind": to_rep.kind if to_rep else "representative",
    }


def representative_key(item: Item) -> tuple[Any, ...]:
    """Sort key that puts the copy to keep first: the most pixels (resizing loses detail),
    then the oldest file (copies are made after their original; an unknown time counts as
    newest), then the largest file (the least compressed), then the path."""
    mtime = item.mtime_ns if item.mtime_ns > 0 else float("inf")
    return (-(item.width * item.height), mtime, -item.file_size, item.origin)


class _UnionFind:
    """Disjoint sets over 0..n-1: groups are the transitive closure of the pairs found."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def components(self) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            out[self.find(i)].append(i)
        return list(out.values())


def exact_heads(items: Sequence[Item]) -> list[int]:
    """For each item, the index of the first item with its content hash (itself when its
    hash is unique or unknown): exact copies are scanned once, through that first one."""
    first: dict[str, int] = {}
    return [
        first.setdefault(it.content_hash, i) if it.content_hash else i for i, it in enumerate(items)
    ]


def components(
    items: Sequence[Item], vectors: np.ndarray, usable: np.ndarray, threshold: float
) -> tuple[list[list[int]], list[int]]:
    """Groups of item indices (two or more each) joined by exact copies and by near pairs at
    or above ``threshold``; and each item's exact head (see ``exact_heads``)."""
    heads = exact_heads(items)
    uf = _UnionFind(len(items))
    for i, head in enumerate(heads):
        uf.union(i, head)
    scan = np.array([i for i, h in enumerate(heads) if h == i and usable[i]], np.int64)
    if len(scan) > 1:
        a, b, _ = similar_pairs(vectors[scan], threshold)
        for x, y in zip(scan[a].tolist(), scan[b].tolist(), strict=True):
            uf.union(x, y)
    return [c for c in uf.components() if len(c) > 1], heads


def _group(snapshot: Snapshot, members: list[int], heads: list[int]) -> Group:
    """One group: its representative, the others by similarity to it, and its pairs."""
    items, vectors = snapshot.items, snapshot.vectors

    def pair(x: int, y: int) -> Pair:
        if heads[x] == heads[y]:
            return Pair(items[x].id, items[y].id, 1.0, "exact")
        sim = float(vectors[heads[x]] @ vectors[heads[y]])
        return Pair(items[x].id, items[y].id, sim, "near")

    rep = min(members, key=lambda i: representative_key(items[i]))
    to_rep = {i: pair(rep, i) for i in members if i != rep}
    rest = sorted(to_rep, key=lambda i: (-to_rep[i].similarity, representative_key(items[i])))
    order = [rep, *rest]
    if len(order) <= MAX_ALL_PAIRS:
        pairs = [pair(x, y) for n, x in enumerate(order) for y in order[n + 1 :]]
    else:
        pairs = [to_rep[i] for i in rest]
    pairs.sort(key=lambda p: -p.similarity)
    return Group([items[i] for i in order], pairs)


def find_groups(snapshot: Snapshot, threshold: float = DEFAULT_THRESHOLD) -> list[Group]:
    """The duplicate groups of a snapshot at ``threshold``: the largest first, then the
    closest (exact groups before near ones of the same size)."""
    found, heads = components(snapshot.items, snapshot.vectors, snapshot.usable, threshold)
    groups = [_group(snapshot, members, heads) for members in found]
    groups.sort(key=lambda g: (-len(g.items), -g.similarity, g.representative.origin))
    return groups


@dataclass
class DuplicateReport:
    """What ``find_duplicates`` found, and what it could not look at."""

    groups: list[Group]
    threshold: float
    #: Items scanned (all of the collection's).
    items: int
    #: (origin, reason) of files left out of the near scan (exact copies still count).
    failed: list[tuple[str, str]] = field(default_factory=list)
    vector_field: str = FEATURE_FIELD
    weight: float = VECTOR_WEIGHT
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        """Items beyond each group's representative: what removing copies would remove."""
        return sum(len(g.items) - 1 for g in self.groups)

    def group_of(self) -> dict[str, int]:
        """item id -> its group's index: the keys ``collapse`` takes, so that a cached
        report collapses any hit list with dict look-ups alone."""
        return {it.id: n for n, g in enumerate(self.groups) for it in g.items}

    def as_dict(self, *, full_paths: bool = True) -> dict[str, Any]:
        """The JSON form for the CLI and the API (``full_paths=False``: file names only)."""
        name = (lambda p: p) if full_paths else (lambda p: Path(p).name)
        return {
            "threshold": self.threshold,
            "vector_field": self.vector_field,
            "vector_weight": self.weight,
            "items": self.items,
            "groups_count": len(self.groups),
            "duplicates": self.duplicates,
            "seconds": round(self.seconds, 3),
            "failed": [{"path": name(p), "reason": r} for p, r in self.failed],
            "groups": [g.as_dict(full_paths=full_paths) for g in self.groups],
        }


def check_threshold(threshold: float) -> None:
    """Refuse a threshold no copy similarity can mean: it lies in [-1, 1], and at 0 or
    below every photo would be a copy of every other (the CLI and the API pass user input)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")


def find_duplicates(
    store: Store,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    weight: float = VECTOR_WEIGHT,
    progress: Callable[[int, int], None] | None = None,
    lock: StoreLock | None = None,
) -> DuplicateReport:
    """Every group of exact and near copies in the store's collection.

    ``progress(done, total)`` is called as items are read from the store; ``lock`` guards
    the store's reads (``StoreLock``). Files that cannot be hashed (moved, changed since
    indexing) are listed in ``failed`` and left out of the near scan only.
    """
    check_threshold(threshold)
    with lock or nullcontext():
        if not store.exists():
            raise StoreError(
                f"collection {store.collection!r} does not exist at {store.uri!r}; "
                "index some images first (`mmsearch index PATH`)"
            )
    started = time.perf_counter()
    snapshot = load_snapshot(store, weight=weight, progress=progress, lock=lock)
    scan_started = time.perf_counter()
    groups = find_groups(snapshot, threshold)
    stages = {**snapshot.stages, "scan": time.perf_counter() - scan_started}
    return DuplicateReport(
        groups=groups,
        threshold=threshold,
        items=len(snapshot.items),
        failed=snapshot.failed,
        vector_field=snapshot.vector_field,
        weight=weight,
        seconds=time.perf_counter() - started,
        stages={k: round(v, 3) for k, v in stages.items()},
    )


# -- collapsing search results -----------------------------------------------------------------


@dataclass
class Collapsed:
    """A hit that stands for itself and the lower-ranked copies of it in the same list."""

    hit: Hit
    copies: list[Hit] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many hits of the list this one stands for (itself included)."""
        return 1 + len(self.copies)


def collapse(
    hits: Sequence[Hit], keys: Sequence[Hashable] | Mapping[str, Hashable]
) -> list[Collapsed]:
    """Each group once, at the rank of its best-ranked member, in the order given.

    ``keys`` is one group key per hit (``duplicate_keys``), or item id -> group key (such as
    ``DuplicateReport.group_of()``), where an id it lacks is a group of its own. Linear in
    the hits: cheap enough for every search.
    """
    if isinstance(keys, Mapping):
        key_list: list[Hashable] = [keys.get(h.id, ("item", h.id)) for h in hits]
    else:
        key_list = list(keys)
        if len(key_list) != len(hits):
            raise ValueError(f"{len(key_list)} keys for {len(hits)} hits")
    out: list[Collapsed] = []
    kept: dict[Hashable, Collapsed] = {}
    for hit, key in zip(hits, key_list, strict=True):
        if key in kept:
            kept[key].copies.append(hit)
        else:
            kept[key] = Collapsed(hit)
            out.append(kept[key])
    return out


def duplicate_keys(
    store: Store,
    hits: Sequence[Hit],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    weight: float = VECTOR_WEIGHT,
    lock: StoreLock | None = None,
) -> list[Hashable]:
    """One group key per hit: equal keys for hits that are copies of each other (exact by
    content hash, near by copy similarity), compared within the list only.

    Costs one store read of the hits' vectors and, until the store keeps the hashes
    (``DHASH_FIELD``), one decode per file not yet hashed by this process.
    """
    check_threshold(threshold)
    if len(hits) < 2:
        return [("item", h.id) for h in hits]
    ids = list(dict.fromkeys(h.id for h in hits))
    snapshot = load_snapshot(store, ids, weight=weight, lock=lock)
    found, _ = components(snapshot.items, snapshot.vectors, snapshot.usable, threshold)
    key = {it.id: ("item", it.id) for it in snapshot.items}
    for members in found:
        for i in members:
            key[snapshot.items[i].id] = ("group", snapshot.items[min(members)].id)
    return [key.get(h.id, ("item", h.id)) for h in hits]


def collapse_hits(
    store: Store,
    hits: Sequence[Hit],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    weight: float = VECTOR_WEIGHT,
    lock: StoreLock | None = None,
) -> list[Collapsed]:
    """``hits`` with each set of copies shown once, at its best rank. Search for more hits
    than will be shown (``collapse_k``) so that the page stays full."""
    keys = duplicate_keys(store, hits, threshold=threshold, weight=weight, lock=lock)
    return collapse(hits, keys)


def collapse_k(k: int) -> int:
    """How many hits a collapsing search asks for first to show ``k``: copies drop out of
    the list, so ``COLLAPSE_OVERSAMPLING`` times as many (at most the searcher's ``MAX_K``)."""
    return min(MAX_K, max(k, k * COLLAPSE_OVERSAMPLING))


def collapsed_search(
    store: Store,
    search: Callable[[int], Results],
    k: int,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    lock: StoreLock | None = None,
) -> tuple[Results, list[int]]:
    """A search with each set of copies shown once: ``k`` distinct photos where the
    collection has them. What the CLI's ``search --collapse`` and the API's
    ``collapse=true`` run.

    ``search(n)`` runs the query for ``n`` hits; it is asked for ``collapse_k(k)`` and, while
    the collapsed list is still short of ``k`` and the search had more to give, for twice as
    many (up to ``MAX_K``): a photo with many copies can fill any fixed multiple of ``k``.
    Returns the last results, their hits replaced by the first ``k`` entries (those past a
    relevance cutoff in ``more``), and for each shown hit how many lower-ranked copies of it
    the hits held.
    """
    wanted = collapse_k(k)
    while True:
        results = search(wanted)
        found = results.hits + results.more  # a cutoff split them: collapse both
        entries = collapse_hits(store, found, threshold=threshold, lock=lock)
        if len(entries) >= k or len(found) < wanted or wanted >= MAX_K:
            break
        wanted = min(MAX_K, wanted * 2)
    shown = {h.id for h in results.hits}
    kept = entries[:k]
    results.hits = [e.hit for e in kept if e.hit.id in shown]
    results.more = [e.hit for e in kept if e.hit.id not in shown]
    return results, [len(e.copies) for e in kept if e.hit.id in shown]
