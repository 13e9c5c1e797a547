"""Providers: describers (image -> description) and embedders (image/text -> vectors)."""

from mmsearch.providers.base import (
    Describer,
    Description,
    Embedder,
    ImageVectors,
    ProviderError,
    available_describers,
    available_embedders,
    get_describer,
    get_embedder,
    register_describer,
    register_embedder,
)

__all__ = [
    "Describer",
    "Description",
    "Embedder",
    "ImageVectors",
    "ProviderError",
    "available_describers",
    "available_embedders",
    "get_describer",
    "get_embedder",
    "register_describer",
    "register_embedder",
]
