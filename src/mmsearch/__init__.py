"""mmsearch: search image collections by text and by image, on Milvus."""

from mmsearch.config import Settings, load_settings
from mmsearch.engine import MMSearch
from mmsearch.search import Mode
from mmsearch.store import Hit, Item

__version__ = "0.1.0"
__all__ = ["Hit", "Item", "MMSearch", "Mode", "Settings", "load_settings", "__version__"]
