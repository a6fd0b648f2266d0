"""LMDB graph cache plugin (placeholder: the cache itself is tracked in its own issue).

Until it lands, ``use_lmdb: true`` falls back to the core's in-memory dataset with a notice.
"""

__version__ = "0.1.0"
