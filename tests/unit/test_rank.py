"""Fusion and cutoff (``mmsearch.rank``): pure functions, no Milvus."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mmsearch import rank


@dataclass(frozen=True)
class H:
    id: str
    score: float
    fields: tuple[str, ...] = ()


def hits(*pairs: tuple[str, float]) -> list[H]:
    return [H(i, s) for i, s in pairs]


def test_rrf_without_lexical_hits_keeps_the_vector_order_exactly():
    vec = hits(("a", 0.9), ("b", 0.9), ("c", 0.5), ("d", 0.1))
    fused = rrf_ids(rank.rrf(vec, []))
    assert fused == ["a", "b", "c", "d"]


def rrf_ids(fused: list[rank.Fused]) -> list[str]:
    return [f.id for f in fused]


def test_rrf_puts_an_item_both_lists_rank_high_first_and_records_where_it_stood():
    vec = hits(("a", 0.9), ("b", 0.8), ("c", 0.7))
    lex = hits(("c", 12.0), ("x", 3.0))
    fused = rank.rrf(vec, lex)
    assert fused[0].id == "c"  # 1/63 + 1/61 beats 1/61
    c = fused[0]
    assert (c.vector_rank, c.lexical_rank, c.vector_score, c.lexical_score) == (3, 1, 0.7, 12.0)
    assert c.matched_by == "both"
    by_id = {f.id: f for f in fused}
    assert by_id["x"].matched_by == "lexical" and by_id["a"].matched_by == "vector"
    assert by_id["a"].score == pytest.approx(1 / 61)


def test_rrf_lexical_weight_per_hit_lets_description_matches_count_less():
    vec = hits(("a", 0.9), ("b", 0.8))
    lex = [H("b", 5.0, ("description",)), H("z", 4.0, ("ocr_text",))]
    weights = {"ocr_text": 1.0, "description": 0.3}
    fused = rank.rrf(vec, lex, lexical_weight=lambda h: rank.field_weight(h.fields, weights))
    by_id = {f.id: f.score for f in fused}
    assert by_id["b"] == pytest.approx(1 / 62 + 0.3 / 61)
    assert by_id["z"] == pytest.approx(1.0 / 62)


def test_rrf_ties_keep_vector_order_then_lexical_order():
    fused = rank.rrf(hits(("a", 1.0)), hits(("b", 1.0)))
    assert rrf_ids(fused) == ["a", "b"]


def test_field_weight_is_the_best_matched_field_and_zero_for_none():
    weights = {"ocr_text": 1.0, "description": 0.3}
    assert rank.field_weight(("description", "ocr_text"), weights) == 1.0
    assert rank.field_weight((), weights) == 0.0
    assert rank.field_weight(("unknown",), weights) == 0.0


def test_autocut_keeps_one_clear_winner():
    assert rank.autocut([0.9, 0.3, 0.29, 0.28, 0.27, 0.26]) == 1


def test_autocut_keeps_the_first_group_before_a_drop():
    scores = [0.9, 0.89, 0.88, 0.5, 0.49, 0.48, 0.47, 0.46]
    assert rank.autocut(scores) == 3


def test_autocut_keeps_everything_on_a_flat_or_short_curve():
    assert rank.autocut([0.5] * 6) == 6
    assert rank.autocut([0.9, 0.1]) == 2
    assert rank.autocut([]) == 0


def test_autocut_counts_jumps():
    scores = [1.0, 0.99, 0.7, 0.69, 0.4, 0.39, 0.38]
    assert rank.autocut(scores, jumps=1) == 2
    assert rank.autocut(scores, jumps=2) == 4
    assert rank.autocut(scores, jumps=0) == len(scores)


def test_autocut_works_on_rising_distances_too():
    assert rank.autocut([0.1, 0.7, 0.71, 0.72, 0.73]) == 1


def test_cutoff_none_min_score_and_bad_method():
    scores = [0.9, 0.3, 0.29, 0.28]
    assert rank.cutoff(scores, method="none") == 4
    assert rank.cutoff(scores, method="none", min_score=0.29) == 3
    assert rank.cutoff(scores) == 1
    with pytest.raises(ValueError, match="cutoff"):
        rank.cutoff(scores, method="sometimes")


def test_cutoff_keeps_near_identical_results_then_cuts_the_rest():
    scores = [1.0, 0.99, 0.8, 0.79, 0.3, 0.29, 0.28, 0.27]
    assert rank.cutoff(scores, keep_above=0.95) == 4  # both copies, then the 0.8 group
    assert rank.cutoff([1.0, 0.99, 0.2], keep_above=0.95) == 2  # a two-point tail: not cut into


def test_cutoff_window_looks_at_the_head_of_a_long_tail():
    head = [0.9, 0.88, 0.6, 0.59]
    tail = [0.58 - i * 0.001 for i in range(40)] + [0.0]
    assert rank.cutoff(head + tail, window=10) == 2


def test_similarity_turns_l2_distances_around():
    assert rank.similarity(0.2, "L2") == -0.2
    assert rank.similarity(0.2, "COSINE") == 0.2


def test_cut_fused_shows_what_either_list_keeps_in_fused_order():
    vec = hits(("a", 0.9), ("b", 0.3), ("c", 0.29), ("d", 0.28), ("e", 0.27))
    lex = hits(("d", 9.0), ("x", 8.8), ("y", 1.0), ("z", 0.9), ("w", 0.8))
    fused = rank.rrf(vec, lex)
    shown, more = rank.cut_fused(fused, [h.score for h in vec], [h.score for h in lex])
    assert [f.id for f in shown] == ["d", "a", "x"]  # a: the vector cut; d, x: the lexical one
    assert {f.id for f in more} == {"b", "c", "e", "y", "z", "w"}


def test_cut_fused_without_lexical_hits_is_the_vector_cut():
    vec = hits(("a", 0.9), ("b", 0.3), ("c", 0.29), ("d", 0.28))
    shown, more = rank.cut_fused(rank.rrf(vec, []), [h.score for h in vec], [])
    assert [f.id for f in shown] == ["a"] and len(more) == 3
    shown, _ = rank.cut_fused(rank.rrf(vec, []), [h.score for h in vec], [], method="none")
    assert len(shown) == 4
