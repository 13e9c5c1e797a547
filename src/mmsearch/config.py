"""Settings in one place.

Precedence, highest first: explicit arguments (CLI flags, ``Settings(...)``), environment
variables ``MMSEARCH_*``, ``./mmsearch.toml`` (or the file named by ``MMSEARCH_CONFIG``),
then the defaults below. Every other module takes a ``Settings`` object instead of reading
the environment itself, so a test or a notebook can build one and know exactly what runs.
"""

from __future__ import annotations

import importlib.util
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class IndexType(StrEnum):
    HNSW = "HNSW"
    IVF_FLAT = "IVF_FLAT"
    #: Product-quantised IVF: the least memory at 10M-100M rows (docs/deployment.md).
    IVF_PQ = "IVF_PQ"
    #: Vamana graph on local NVMe: servers with ``queryNode.enableDisk`` only.
    DISKANN = "DISKANN"
    FLAT = "FLAT"


class Metric(StrEnum):
    COSINE = "COSINE"
    L2 = "L2"
    IP = "IP"


class Language(StrEnum):
    zh = "zh"
    en = "en"


#: Index build parameters per index type; used unless ``index_params`` overrides them.
#: HNSW M=32 with ef=1024 was the only setting that kept recall@10 >= 0.99 against exact
#: search (0.995, ties counted) in both 100k runs on the offline provider's very clustered
#: vectors, at 4.3-5 ms per query on the embedded server (bench/README.md); M=16/ef=128
#: gave 0.985 there.
DEFAULT_INDEX_PARAMS: dict[IndexType, dict[str, Any]] = {
    IndexType.HNSW: {"M": 32, "efConstruction": 200},
    IndexType.IVF_FLAT: {"nlist": 128},
    # nlist: Milvus's guidance is ~4·sqrt(rows per segment), and a 512 MB segment of 512-d
    # vectors holds ~256k rows; segments under 1,024 rows are not indexed, so k-means never
    # has fewer points than lists. ``m`` is set per vector field (``pq_m``).
    IndexType.IVF_PQ: {"nlist": 1024, "nbits": 8},
    # Built with the server's DiskIndex settings (MaxDegree 56, SearchListSize 100).
    IndexType.DISKANN: {},
    IndexType.FLAT: {},
}

#: Search-time parameters per index type; used unless ``search_params`` overrides them.
DEFAULT_SEARCH_PARAMS: dict[IndexType, dict[str, Any]] = {
    IndexType.HNSW: {"ef": 1024},
    IndexType.IVF_FLAT: {"nprobe": 32},
    IndexType.IVF_PQ: {"nprobe": 64},
    # Raised to k and capped at max(200, 10·k) per search (Store.search): Milvus 2.3 refuses
    # a search_list outside that range.
    IndexType.DISKANN: {"search_list": 100},
    IndexType.FLAT: {},
}


def pq_m(dim: int) -> int:
    """IVF_PQ's number of sub-vectors for a vector field of ``dim``: D/4 (one byte of code
    per four floats at nbits 8, 1/16 of the raw vector), else the largest divisor of D
    below D/4, because Milvus refuses an ``m`` that does not divide the field's dimension,
    and mmsearch's fields differ (e.g. 384 and 1384 for the offline provider)."""
    return next(m for m in range(max(1, dim // 4), 0, -1) if dim % m == 0)


#: URIs of the Milvus server that mmsearch starts itself: ``embedded.SCHEME``, spelt out
#: here because config imports nothing from the server's module (a test checks they agree).
EMBEDDED_SCHEME = "embedded:"


def milvus_server_installed() -> bool:
    """Whether the ``milvus`` package (the Milvus 2.3 server; Linux x86_64 wheels only) is
    installed, which the ``embedded:`` store needs."""
    return importlib.util.find_spec("milvus") is not None


def default_uri() -> str:
    """The embedded Milvus server where its wheel is installed (Linux x86_64), else Lite.

    Measured at 100k items (bench/README.md): the server answers a query in 4-5 ms, Milvus
    Lite in ~100 ms whatever the index, because Lite loops over every row in Python.
    """
    if milvus_server_installed():
        return f"{EMBEDDED_SCHEME}./mmsearch-milvus"
    return "./mmsearch.db"


def _config_file() -> Path:
    return Path(os.environ.get("MMSEARCH_CONFIG", "mmsearch.toml"))


class Settings(BaseSettings):
    """Everything a user can configure; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="MMSEARCH_", extra="ignore", populate_by_name=True)

    uri: str = Field(
        default_factory=lambda: default_uri(),
        description=(
            "Where the collection lives: embedded:DIR (a Milvus server mmsearch starts in DIR; "
            "the default where the milvus wheel exists), a Milvus Lite file (*.db), or a "
            "Milvus server URI such as http://host:19530."
        ),
    )
    token: SecretStr | None = Field(None, description="Milvus server token (user:password).")
    collection: str = Field("mmsearch", description="Collection name.")
    embedded_idle_timeout: float = Field(
        1800.0,
        ge=0,
        description="Seconds an embedded: server runs unused before it stops (0 = never).",
    )
    index_type: IndexType = Field(
        IndexType.HNSW,
        description="Vector index: HNSW, IVF_FLAT, FLAT, or for 10M+ rows on a Milvus server "
        "IVF_PQ or DISKANN (docs/deployment.md).",
    )
    index_params: dict[str, Any] = Field(
        default_factory=dict, description="Index build parameters (default per index type)."
    )
    search_params: dict[str, Any] = Field(
        default_factory=dict, description="Search parameters (default per index type)."
    )
    shards: int | None = Field(
        None,
        ge=1,
        description="Shards (write channels) of a new collection; unset: the server's default "
        "(1). More spread a high upsert rate over a cluster's nodes; Milvus Lite has one.",
    )
    metric: Metric = Field(Metric.COSINE, description="Similarity metric: COSINE, L2 or IP.")
    provider: str = Field("offline", description="Provider for both embedder and describer.")
    embedder: str | None = Field(None, description="Embedder provider (overrides provider).")
    describer: str | None = Field(None, description="Describer provider (overrides provider).")
    language: Language = Field(Language.zh, description="Language of descriptions: zh or en.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per ingest batch.")
    ocr: bool = Field(
        True,
        description="Read the text in photos after indexing (a pass of its own: images are "
        "searchable by their vectors first); off: `mmsearch enrich ocr` reads it later.",
    )
    workers: int = Field(
        max(1, min(8, os.cpu_count() or 1)), ge=1, description="Threads decoding images."
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "mmsearch",
        description="Where derived model data (class-name embeddings) is cached.",
    )
    follow_symlinks: bool = Field(
        False,
        description="Index files that symbolic links in an indexed folder point to outside "
        "it (off: such links are reported and skipped, so a folder never publishes more).",
    )
    max_image_pixels: int = Field(
        89_478_485,
        ge=1,
        description="Images with more pixels are refused as decompression bombs.",
    )

    # -- HTTP API -------------------------------------------------------------------------------
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token that enables indexing over HTTP (and allows reads); "
        "unset = no indexing over HTTP.",
    )
    read_token: SecretStr | None = Field(
        None,
        description="Token needed to search and view images (Bearer header, or the login "
        "page's cookie). Unset = reads are open, which `serve` allows only on loopback "
        "unless --public is given.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the server answers to besides loopback names and IP "
        "addresses (a guard against DNS rebinding).",
    )
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest accepted image upload, in bytes."
    )
    max_upload_files: int = Field(
        32, ge=1, description="Most images in one indexing upload request."
    )
    max_query_pixels: int = Field(
        16_000_000,
        ge=1,
        description="Largest query image, in pixels after JPEG draft decoding; far below "
        "max_image_pixels, because anyone who may search can send one.",
    )
    max_concurrent_decodes: int = Field(
        2, ge=1, description="Query images decoded at once by the server (bounds memory)."
    )
    upload_dir: Path = Field(
        Path("mmsearch_uploads"), description="Where images uploaded for indexing are kept."
    )
    query_batch_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="Milliseconds `serve` waits for more concurrent queries to embed in one "
        "model call (0 = only those already waiting).",
    )
    query_batch_max: int = Field(
        32, ge=1, le=1024, description="Most query texts or images `serve` embeds in one call."
    )

    # -- remote providers (DashScope, OpenAI-compatible) ---------------------------------------
    dashscope_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(
            "MMSEARCH_DASHSCOPE_API_KEY", "DASHSCOPE_API_KEY", "dashscope_api_key"
        ),
        description="DashScope API key (env DASHSCOPE_API_KEY); never logged.",
    )
    dashscope_region: Literal["cn", "intl"] = Field(
        "cn",
        description="DashScope region: cn (Beijing, https://dashscope.aliyuncs.com/api/v1) or "
        "intl (Singapore, https://dashscope-intl.aliyuncs.com/api/v1, for users outside "
        "mainland China; its default embedding model is tongyi-embedding-vision-plus).",
    )
    dashscope_base_url: str | None = Field(
        None, description="DashScope endpoint; unset: the endpoint of dashscope_region."
    )
    dashscope_embedding_model: str = Field(
        "multimodal-embedding-v1",
        description="DashScope embedding model (see the README's model table); "
        "with dashscope_region = intl and none set: tongyi-embedding-vision-plus.",
    )
    dashscope_dimension: int | None = Field(
        None,
        ge=1,
        description="Width of the embedding vectors, for models that take one (e.g. 64-1152 "
        "for tongyi-embedding-vision-plus); unset: the model's default. A collection keeps "
        "the width it was built with.",
    )
    dashscope_fusion: bool = Field(
        False,
        description="Embed each image fused with its title (a catalog's title column) where "
        "the model offers it (qwen3-vl-embedding, qwen2.5-vl-embedding, the "
        "tongyi-embedding-vision 2026-03-06 snapshots).",
    )
    dashscope_max_batch: int | None = Field(
        None,
        ge=1,
        description="At most this many items per embedding request; unset: the model's "
        "documented limit (one for models mmsearch does not know).",
    )
    dashscope_prices: dict[str, dict[str, float | str]] = Field(
        default_factory=dict,
        description="Prices per million tokens by model, over the documented list prices "
        "mmsearch ships (which go stale: keep yours current), e.g. "
        '{"qwen-vl-plus" = {image = 1.5, text = 1.5, output = 4.5, currency = "CNY"}}.',
    )
    dashscope_vl_model: str = Field(
        "qwen-vl-plus",
        description="Qwen-VL model for descriptions: qwen-vl-plus (the reference's), or a "
        "current one such as qwen3-vl-plus or qwen3-vl-flash.",
    )
    openai_base_url: str = Field(
        "http://localhost:8000/v1", description="OpenAI-compatible endpoint (vLLM, Ollama, ...)."
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(
            "MMSEARCH_OPENAI_API_KEY", "OPENAI_API_KEY", "openai_api_key"
        ),
        description="Key for the OpenAI-compatible endpoint (env OPENAI_API_KEY).",
    )
    openai_model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct")
    requests_per_minute: float = Field(
        120, gt=0, description="Rate limit for remote providers (token bucket)."
    )
    max_concurrency: int = Field(4, ge=1, description="Concurrent requests to remote providers.")
    max_retries: int = Field(5, ge=0, description="Retries on 429, 5xx and timeouts.")
    request_timeout: float = Field(30.0, gt=0, description="Seconds per remote request.")

    # -- local CLIP-family models --------------------------------------------------------------
    clip_model: str = Field(
        "ViT-B-32",
        description="open_clip model name, a Hugging Face id, or a local model directory.",
    )
    clip_pretrained: str | None = Field(None, description="open_clip pretrained tag.")
    clip_backend: str = Field("auto", description="auto, open_clip or transformers.")
    clip_device: str = Field("auto", description="auto (CUDA if present), cpu or cuda.")

    @field_validator("index_type", "metric", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        """``MMSEARCH_ALLOWED_HOSTS=a.example,b.example`` as well as a TOML list."""
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @property
    def embedder_name(self) -> str:
        return self.embedder or self.provider

    @property
    def describer_name(self) -> str:
        return self.describer or self.provider

    @property
    def effective_index_params(self) -> dict[str, Any]:
        return {**DEFAULT_INDEX_PARAMS[self.index_type], **self.index_params}

    def index_params_for(self, index_type: IndexType, dim: int) -> dict[str, Any]:
        """Build parameters of ``index_type`` on a vector field of ``dim``: the defaults,
        IVF_PQ's ``m`` for this field, then ``index_params`` where they were given for this
        index type (a collection migrated keeps the index type it was built with)."""
        params = dict(DEFAULT_INDEX_PARAMS[index_type])
        if index_type is IndexType.IVF_PQ:
            params["m"] = pq_m(dim)
        if index_type is self.index_type:
            params.update(self.index_params)
        return params

    @property
    def effective_search_params(self) -> dict[str, Any]:
        return {**DEFAULT_SEARCH_PARAMS[self.index_type], **self.search_params}

    @property
    def is_lite(self) -> bool:
        """True when ``uri`` names a local Milvus Lite file rather than a server."""
        return not self.uri.startswith(
            ("http://", "https://", "tcp://", "grpc://", "unix:", EMBEDDED_SCHEME)
        )

    @property
    def is_embedded(self) -> bool:
        """True when ``uri`` is ``embedded:DIR``: a Milvus server that mmsearch runs in DIR."""
        return self.uri.startswith(EMBEDDED_SCHEME)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file())
        return (init_settings, env_settings, toml)


def load_settings(**overrides: Any) -> Settings:
    """Build settings, dropping overrides that are ``None`` (flags the user did not give)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
