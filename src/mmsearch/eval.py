"""Measure result quality on a user's own labelled data: recall@k and MRR per mode.

Two kinds of ground truth:

- **labels** (a folder whose sub-folders are labels, or a CSV ``id,path,label``): text->image
  with the class names as queries (English as written; Chinese through the ImageNet class
  table where labels are ImageNet classes), image->text, and image->image when a separate
  query set is given (an item is relevant when it has the query's label);
- **captions** (a TSV with ``image``, ``lang`` and ``caption`` columns; images in a folder):
  each caption queries text->image and text->text, and its own image is the one relevant
  answer.

Queries run in batches through the same searcher the CLI uses, so the numbers include
everything a user's query goes through.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmsearch.engine import MMSearch
from mmsearch.images import ImageError, load_image
from mmsearch.search import Mode, pool_size
from mmsearch.sources import SourceItem, iter_source

KS = (1, 5, 10)


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """1.0 if any relevant id is among the first k, else 0.0 (the usual retrieval recall@k)."""
    return 1.0 if any(r in relevant for r in ranked[:k]) else 0.0


def reciprocal_rank(ranked: Sequence[str], relevant: set[str]) -> float:
    """1/rank of the first relevant id, 0.0 if none was returned."""
    for rank, r in enumerate(ranked, 1):
        if r in relevant:
            return 1.0 / rank
    return 0.0


@dataclass
class Score:
    """Mean recall@k and MRR over a set of queries."""

    mode: str
    queries: str
    n: int = 0
    recall: dict[int, float] = field(default_factory=dict)
    mrr: float = 0.0

    @classmethod
    def of(cls, mode: str, queries: str, runs: list[tuple[list[str], set[str]]]) -> Score:
        n = len(runs)
        if n == 0:
            return cls(mode, queries)
        recall = {k: sum(recall_at_k(r, rel, k) for r, rel in runs) / n for k in KS}
        mrr = sum(reciprocal_rank(r, rel) for r, rel in runs) / n
        return cls(mode, queries, n, recall, mrr)

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "queries": self.queries,
            "n": self.n,
            **{f"recall@{k}": round(v, 4) for k, v in self.recall.items()},
            "mrr": round(self.mrr, 4),
        }


def _norm_label(label: str) -> str:
    return re.sub(r"[\s_]+", " ", label).strip().lower()


def label_queries(labels: set[str], lang: str) -> dict[str, str]:
    """label -> query text. English: the label as words. Chinese: the ImageNet class table."""
    if lang == "en":
        return {label: _norm_label(label) for label in labels}
    from mmsearch.providers.offline import load_classes

    table: dict[str, str] = {}
    for c in load_classes():
        for key in (c.label, c.en_name, c.wnid):
            table.setdefault(_norm_label(key), c.zh_name)
    return {label: table[_norm_label(label)] for label in labels if _norm_label(label) in table}


def _batched(
    mm: MMSearch, texts: list[str], modes: Sequence[Mode], k: int, ranking: str = "fused"
) -> dict[Mode, list[list[str]]]:
    """Ranked ids per text for each text mode, ranked as the CLI ranks them (``ranking``):
    each text is embedded once for all modes, in batches, and its vector list fused with
    its lexical list one text at a time."""
    out: dict[Mode, list[list[str]]] = {m: [] for m in modes}
    pool = pool_size(k) if ranking == "fused" else k
    for start in range(0, len(texts), 256):
        chunk = texts[start : start + 256]
        vectors = mm.embedder.embed_texts(chunk, query=True)
        for mode in modes:
            rows = mm.searcher.search_vectors(vectors, mode=mode, k=pool, texts=chunk)
            if ranking != "vector":
                rows = [
                    mm.searcher.fuse(
                        text, row if ranking == "fused" else [], k=k, ranking=ranking
                    ).hits
                    for text, row in zip(chunk, rows, strict=True)
                ]
            out[mode] += [[h.id for h in row[:k]] for row in rows]
    return out


def _image_runs(
    mm: MMSearch, items: list[SourceItem], mode: Mode, k: int
) -> list[tuple[SourceItem, list[str]]]:
    runs = []
    for start in range(0, len(items), 32):
        chunk = items[start : start + 32]
        images, kept = [], []
        for it in chunk:
            try:
                images.append(load_image(it.path, max_pixels=mm.settings.max_image_pixels).image)
                kept.append(it)
            except ImageError:
                continue
        for it, hits in zip(kept, mm.searcher.search_images(images, mode=mode, k=k), strict=True):
            runs.append((it, [h.id for h in hits]))
    return runs


def evaluate_labels(
    mm: MMSearch,
    index_items: list[SourceItem],
    query_items: list[SourceItem] | None,
    k: int = 10,
    ranking: str = "fused",
) -> list[Score]:
    """Scores for a labelled collection already indexed in ``mm``."""
    from mmsearch.sources import item_id

    by_label: dict[str, set[str]] = defaultdict(set)
    for it in index_items:
        by_label[it.label].add(item_id(it.path))
    scores = []
    for lang in ("en", "zh"):
        queries = label_queries(set(by_label), lang)
        labels = sorted(queries)
        ranked = _batched(mm, [queries[lab] for lab in labels], [Mode.text2image], k, ranking)[
            Mode.text2image
        ]
        runs = [(r, by_label[lab]) for r, lab in zip(ranked, labels, strict=True)]
        scores.append(Score.of("text2image", f"class names ({lang})", runs))
    if query_items:
        for mode in (Mode.image2image, Mode.image2text):
            runs = [
                (ranked, by_label.get(it.label, set()))
                for it, ranked in _image_runs(mm, query_items, mode, k)
            ]
            scores.append(Score.of(mode.value, "query images (same label)", runs))
    return scores


def read_captions(path: Path) -> list[tuple[str, str, str]]:
    """(image file name, query group, caption) rows of a captions TSV.

    With a ``source`` column (e.g. human-written vs machine-translated) the sources are
    kept apart. With a ``split`` column, captions outside the ``train`` split are also
    scored on their own ("..., val only"), still ranked among all the images: a model
    that learned anything on the train split is judged fairly only there.
    """
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = {"image", "lang", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: captions TSV lacks columns {sorted(missing)}")
        rows = []
        for r in reader:
            if not r["caption"]:
                continue
            group = f"{r['lang']}, {r['source']}" if r.get("source") else r["lang"]
            rows.append((r["image"], group, r["caption"]))
            split = (r.get("split") or "").strip()
            if split and split != "train":
                rows.append((r["image"], f"{group}, {split} only", r["caption"]))
        return rows


def evaluate_captions(
    mm: MMSearch,
    captions: list[tuple[str, str, str]],
    images_dir: Path,
    k: int = 10,
    ranking: str = "fused",
) -> list[Score]:
    """Caption -> its image, per query group, for text2image and text2text."""
    from mmsearch.sources import item_id

    by_group: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for image, group, caption in captions:
        by_group[group].append((caption, item_id(images_dir / image)))
    # Each distinct caption is embedded and searched once, whichever groups it is in.
    texts = sorted({c for pairs in by_group.values() for c, _ in pairs})
    ranked_by_mode = _batched(mm, texts, [Mode.text2image, Mode.text2text], k, ranking)
    scores = []
    for group in sorted(by_group):
        for mode, ranked in ranked_by_mode.items():
            by_text = dict(zip(texts, ranked, strict=True))
            runs = [(by_text[c], {rel}) for c, rel in by_group[group]]
            scores.append(Score.of(mode.value, f"captions ({group})", runs))
    return scores


def list_items(source: Path) -> list[SourceItem]:
    return list(iter_source(source))
