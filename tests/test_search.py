"""The reference's searches on the 100 reference images, with the offline provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


#: The reference's folding_chair image shows a golden retriever lying on the chair: a
#: right answer to "brown dog" for a model that sees more than the 1,000 class labels.
DOG_PICTURES = DOG_WNIDS | {"n03376595"}


def test_brown_dog_in_chinese_returns_only_dogs(reverse_index):
    hits = reverse_index.search("棕色的狗", mode=Mode.text2image, k=3)
    assert len(hits) == 3
    assert all(_wnid(h.origin) in DOG_PICTURES for h in hits), [h.label for h in hits]


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


# --- the offline provider's text->image route through image_feature --------------------


def test_offline_text_to_image_searches_the_feature_space(reverse_index):
    from mmsearch.store import FEATURE_FIELD

    searcher = reverse_index.searcher
    assert searcher.feature_queries is not None
    emb = searcher.embedder
    assert emb.name == "offline-effnetlite0-e5small-v2"
    q = emb.text_feature_queries(emb.embed_texts(["lion"], query=True), ["lion"])
    assert q.shape == (1, emb.feature_dim)
    assert np.linalg.norm(q, axis=1) == pytest.approx(1.0, abs=1e-5)
    (rec,) = reverse_index.store.get(
        [searcher.search("lion", mode=Mode.text2image, k=1)[0].id], with_vectors=True
    )
    stored = np.asarray(rec[FEATURE_FIELD], np.float32)
    assert stored.shape == (emb.feature_dim,)
    assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(("query", "lang"), [("lion", "en"), ("狮子", "zh"), ("一只狗", "zh")])
def test_query_language_picks_the_prototypes(query, lang):
    from mmsearch.providers.offline import query_language

    assert query_language(query) == lang


@pytest.mark.parametrize("query", ["lion", "狮子"])
def test_english_and_chinese_queries_route_to_the_lion_class(reverse_index, query):
    emb = reverse_index.searcher.embedder
    lion = next(c.index for c in load_classes() if c.label == "lion")
    q = emb.text_feature_queries(emb.embed_texts([query], query=True), [query])
    assert int(np.argmax(q[0, :1000])) == lion
    # The caption part is the e5 vector itself.
    e5 = emb.embed_texts([query], query=True)[0]
    np.testing.assert_allclose(q[0, 1000:] / np.linalg.norm(q[0, 1000:]), e5, atol=1e-5)


def test_english_query_uses_the_imagenet_label_as_a_name(reverse_index):
    # "cock" is the ImageNet label of the class named "rooster": English queries match
    # both names, in English-only prototypes.
    emb = reverse_index.searcher.embedder
    rooster = next(c.index for c in load_classes() if c.label == "cock")
    q = emb.text_feature_queries(emb.embed_texts(["cock"], query=True), ["cock"])
    assert int(np.argmax(q[0, :1000])) == rooster


def test_caption_query_finds_dogs(reverse_index):
    hits = reverse_index.search("a dog runs across the grass", mode=Mode.text2image, k=3)
    assert all(_wnid(h.origin) in DOG_PICTURES for h in hits), [h.label for h in hits]


def test_image_to_image_ranks_by_class_probabilities(reverse_index):
    """The image->image query uses the probability part only; scores are rescaled so an
    identical image scores 1.0, and they equal the cosine of the class probabilities."""
    from mmsearch.images import load_image
    from mmsearch.providers.offline import NUM_CLASSES
    from mmsearch.store import FEATURE_FIELD

    hits = reverse_index.search(LION, mode=Mode.image2image, k=5)
    ids = [h.id for h in hits]
    recs = {r["id"]: r for r in reverse_index.store.get(ids, with_vectors=True)}
    emb = reverse_index.searcher.embedder
    image = load_image(LION, max_pixels=reverse_index.settings.max_image_pixels).image
    query = emb.embed_images([image]).features[0, :NUM_CLASSES]
    query /= np.linalg.norm(query)
    for h in hits:
        probs = np.asarray(recs[h.id][FEATURE_FIELD], np.float32)[:NUM_CLASSES]
        assert h.score == pytest.approx(float(query @ probs / np.linalg.norm(probs)), abs=2e-3)


def test_old_offline_collection_is_refused(settings):
    from mmsearch.search import Searcher
    from mmsearch.store import ProviderMismatchError, Store

    store = Store(settings)
    store.open(embedder="offline-effnetlite0-e5small", dim=384, feature_dim=1000)
    with pytest.raises(ProviderMismatchError, match="offline-effnetlite0-e5small"):
        Searcher(settings, store=store)
