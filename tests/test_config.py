"""Settings precedence: arguments > MMSEARCH_* environment > mmsearch.toml > defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mmsearch.config import IndexType, Language, Metric, Settings, load_settings


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = Settings()
    # The embedded Milvus server where its wheel is installed (this project's Linux venvs),
    # Milvus Lite elsewhere.
    assert s.uri == "embedded:./mmsearch-milvus" and s.is_embedded and not s.is_lite
    assert s.index_type is IndexType.HNSW and s.metric is Metric.COSINE
    assert s.language is Language.zh and s.provider == "offline"
    assert s.effective_index_params == {"M": 32, "efConstruction": 200}
    assert s.effective_search_params == {"ef": 1024}


def test_default_uri_without_the_milvus_wheel(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.chdir(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "milvus" else real(name, *a)
    )
    s = Settings()
    assert s.uri == "./mmsearch.db" and s.is_lite and not s.is_embedded


def test_toml_env_and_arguments(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mmsearch.toml").write_text(
        'uri = "http://milvus:19530"\ncollection = "from_toml"\nlanguage = "en"\n'
        'index_type = "ivf_flat"\n[index_params]\nnlist = 64\n'
    )
    s = Settings()
    assert s.uri == "http://milvus:19530" and not s.is_lite
    assert s.index_type is IndexType.IVF_FLAT and s.effective_index_params == {"nlist": 64}
    monkeypatch.setenv("MMSEARCH_COLLECTION", "from_env")
    assert Settings().collection == "from_env"
    assert load_settings(collection="from_flag", language=None).collection == "from_flag"
    assert load_settings(language=None).language is Language.en


def test_config_file_named_by_env(monkeypatch, tmp_path):
    cfg = tmp_path / "other.toml"
    cfg.write_text('metric = "l2"\n')
    monkeypatch.setenv("MMSEARCH_CONFIG", str(cfg))
    assert Settings().metric is Metric.L2


def test_bad_values_are_rejected(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError):
        Settings(index_type="ANNOY")
    monkeypatch.setenv("MMSEARCH_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_the_embedded_scheme_is_spelt_alike_in_config_and_in_the_server_module():
    from mmsearch import config, embedded

    assert config.EMBEDDED_SCHEME == embedded.SCHEME
