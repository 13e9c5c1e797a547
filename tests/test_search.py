"""The reference's searches on the 100 reference images, with the offline provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmsearch import Mode
from mmsearch.providers.offline import load_classes

from .conftest import LION, reverse_labels

pytestmark = pytest.mark.datasets

DOG_WNIDS = {c.wnid for c in load_classes() if c.en_category == "dog"}


def _wnid(origin: str) -> str:
    return Path(origin).name.split("_")[0]


@pytest.mark.parametrize("query", ["狮子", "lion"])
def test_lion_text_finds_lion_image(reverse_index, query):
    hits = reverse_index.search(query, mode=Mode.text2image, k=3)
    assert "lion" in [h.label for h in hits], [(h.label, h.score) for h in hits]


def test_brown_dog_in_chinese_returns_only_dogs(reverse_index):
    hits = reverse_index.search("棕色的狗", mode=Mode.text2image, k=3)
    assert len(hits) == 3
    assert all(_wnid(h.origin) in DOG_WNIDS for h in hits), [h.label for h in hits]


def test_lion_image_finds_itself_first(reverse_index):
    hits = reverse_index.search(LION, mode=Mode.image2image, k=5)
    assert Path(hits[0].origin) == LION.resolve()
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[1].score < hits[0].score


def test_image_to_text_puts_lion_description_first(reverse_index):
    hits = reverse_index.search(LION, mode=Mode.image2text, k=3)
    assert hits[0].label == "lion"
    assert "狮" in hits[0].description


def test_text_to_text_matches_descriptions(reverse_index):
    hits = reverse_index.search("狮子", mode=Mode.text2text, k=3)
    assert any("狮子" in h.description for h in hits), [h.description for h in hits]


def test_hits_carry_what_users_need(reverse_index):
    hit = reverse_index.search("lion", mode=Mode.text2image, k=1)[0]
    labels = reverse_labels()
    assert labels[hit.origin] == hit.label
    assert hit.id and hit.description and len(hit.keywords) == 5
    assert hit.width > 0 and hit.height > 0 and hit.indexed_at > 0


def test_more_like_this_uses_stored_vector(reverse_index):
    lion = reverse_index.search(LION, mode=Mode.image2image, k=1)[0]
    hits = reverse_index.more_like_this(lion.id, k=3)
    assert hits[0].id == lion.id


def test_filter_by_label(reverse_index):
    hits = reverse_index.search("animal", mode=Mode.text2image, k=5, filter='label == "lion"')
    assert [h.label for h in hits] == ["lion"]
