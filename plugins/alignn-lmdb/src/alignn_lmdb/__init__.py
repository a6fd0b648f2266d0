"""LMDB graph cache for alignn: ``use_lmdb: true`` builds each split's graphs once and streams
them from disk.

Records are raw arrays behind a JSON header (never pickle), every cache carries a manifest of
what built it (reused only on an exact match), and builds commit atomically. See docs/lmdb.md.
"""

__version__ = "0.1.0"
