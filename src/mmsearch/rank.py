"""One ranking from a vector list and a lexical list, and where a ranking stops being
relevant. Pure functions over hit lists (anything with ``id`` and ``score``, higher
better): no Milvus, no models, so the search code and the benches share them.

Fusion (``rrf``): reciprocal rank fusion, sum of ``weight / (k + rank)`` over the lists a
hit is in. Ranks, not scores, because a cosine similarity and a BM25 score have no common
scale; the lexical weight of a hit can depend on what it matched (a description written
by a classifier counts less than a file name, see ``lexical.py``). With an empty lexical
list the vector order is kept exactly, so a query no row's words match ranks as before.

Cutoff (``autocut``, ``cutoff``): where the score curve bends. As Weaviate's autocut: the
scores, scaled to run from 0 (first) to 1 (last), are compared with the straight line
between the ends; the first local maximum of their difference is a jump, and the results
before it are kept. It adapts per query (a class name with one clear answer keeps one; a
flat curve keeps all) and needs no calibration of a model's scores, which differ per
provider and mode. A fused list is not cut on its RRF scores (they follow ranks, a smooth
curve whatever the relevance) but on each list's own scores (``cut_fused``): a hit is shown
when it is above the vector list's cut or above the lexical list's cut.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class Scored(Protocol):
    """A hit: an id and a score, higher is better."""

    @property
    def id(self) -> str: ...

    @property
    def score(self) -> float: ...


@dataclass(frozen=True)
class Fused:
    """A fused hit: its RRF score and where it stood in each list (1-based; None: absent)."""

    id: str
    score: float
    vector_rank: int | None = None
    lexical_rank: int | None = None
    vector_score: float | None = None
    lexical_score: float | None = None

    @property
    def matched_by(self) -> str:
        """``vector``, ``lexical`` or ``both``: for the response, so a page can say why."""
        if self.vector_rank is not None and self.lexical_rank is not None:
            return "both"
        return "vector" if self.vector_rank is not None else "lexical"


#: RRF's rank offset: 60, as in Cormack et al. (2009), Milvus's RRFRanker and Weaviate.
RRF_K = 60


def rrf(
    vector: Sequence[Scored],
    lexical: Sequence[Scored],
    *,
    k: int = RRF_K,
    vector_weight: float = 1.0,
    lexical_weight: float | Callable[[Scored], float] = 1.0,
) -> list[Fused]:
    """Reciprocal rank fusion of two ranked lists, best first.

    ``lexical_weight`` may be a function of the lexical hit (its weight by the fields it
    matched). Ties keep the vector list's order, then the lexical list's.
    """
    weight_of = lexical_weight if callable(lexical_weight) else (lambda _h: lexical_weight)
    parts: dict[str, dict] = {}
    for rank, hit in enumerate(vector, 1):
        entry = parts.setdefault(hit.id, {"score": 0.0, "order": (0, rank)})
        entry.update(vector_rank=rank, vector_score=hit.score)
        entry["score"] += vector_weight / (k + rank)
    for rank, hit in enumerate(lexical, 1):
        entry = parts.setdefault(hit.id, {"score": 0.0, "order": (1, rank)})
        entry.update(lexical_rank=rank, lexical_score=hit.score)
        entry["score"] += float(weight_of(hit)) / (k + rank)
    ordered = sorted(parts.items(), key=lambda kv: (-kv[1]["score"], kv[1]["order"]))
    return [
        Fused(
            id=hit_id,
            score=p["score"],
            vector_rank=p.get("vector_rank"),
            lexical_rank=p.get("lexical_rank"),
            vector_score=p.get("vector_score"),
            lexical_score=p.get("lexical_score"),
        )
        for hit_id, p in ordered
    ]


def autocut(scores: Sequence[float], *, jumps: int = 1) -> int:
    """How many results to keep: those before the ``jumps``-th jump in the score curve
    (see the module docstring). All of them when the curve has no jump or is flat."""
    n = len(scores)
    if n <= 2 or jumps < 1:
        return n
    first, last = float(scores[0]), float(scores[-1])
    if first == last:
        return n
    diff = [(float(s) - first) / (last - first) - i / (n - 1) for i, s in enumerate(scores)]
    found = 0
    for i in range(1, n):
        after = diff[i + 1] if i + 1 < n else diff[i - 2]
        if diff[i] > diff[i - 1] and diff[i] > after:
            found += 1
            if found >= jumps:
                return i
    return n


def cutoff(
    scores: Sequence[float],
    *,
    method: str = "auto",
    min_score: float | None = None,
    keep_above: float | None = None,
    window: int | None = None,
) -> int:
    """How many of a ranked list to show: ``method`` ``auto`` (autocut) or ``none``, then
    no result below ``min_score``. Results scoring at least ``keep_above`` (near-identical
    images) are always kept, and the curve is cut after them. ``window`` limits the
    curve looked at to its first results (a long tail flattens the bend)."""
    if method not in ("auto", "none"):
        raise ValueError(f"cutoff must be 'auto' or 'none', got {method!r}")
    keep = len(scores)
    if method == "auto":
        head = 0
        if keep_above is not None:
            while head < len(scores) and scores[head] >= keep_above:
                head += 1
        rest = list(scores[head:])
        curve = rest[:window] if window else rest
        keep = head + autocut(curve) if curve else head
        if head and len(curve) <= 2:
            keep = head
    if min_score is not None:
        keep = min(keep, sum(1 for s in scores if s >= min_score))
    return keep


def cut_fused(
    fused: Sequence[Fused],
    vector_scores: Sequence[float],
    lexical_scores: Sequence[float],
    **options: object,
) -> tuple[list[Fused], list[Fused]]:
    """(shown, more) of a fused list: shown are the hits that ranked within the cut of the
    vector list (``cutoff`` of its scores, higher better, with ``options``) or within the
    cut of the lexical list, in fused order; the rest are for "show more"."""
    v_keep = cutoff(vector_scores, **options) if vector_scores else 0  # type: ignore[arg-type]
    l_keep = cutoff(lexical_scores, **options) if lexical_scores else 0  # type: ignore[arg-type]
    shown, more = [], []
    for f in fused:
        inside = (f.vector_rank is not None and f.vector_rank <= v_keep) or (
            f.lexical_rank is not None and f.lexical_rank <= l_keep
        )
        (shown if inside else more).append(f)
    return shown, more


def similarity(score: float, metric: str) -> float:
    """A Milvus score as a similarity, higher better: L2 reports distances."""
    return -score if metric.upper() == "L2" else score


def field_weight(fields: Sequence[str], weights: Mapping[str, float]) -> float:
    """A lexical hit's RRF weight: the best weight among the fields it matched, so a match
    found only in a model's description counts less than one in a file name."""
    return max((weights.get(f, 0.0) for f in fields), default=0.0)
