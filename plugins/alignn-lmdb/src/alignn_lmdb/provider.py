"""The ``lmdb`` dataset provider: what ``use_lmdb: true`` selects in the trainer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.errors import UserError
from alignn_core.structures import Record
from alignn_lmdb.cache import (
    INITIAL_MAP_SIZE,
    LmdbDataset,
    build_cache,
    is_replaceable,
    leftovers,
    open_cache,
    remove_stale_leftovers,
)
from alignn_lmdb.manifest import make_manifest


class LmdbDatasetProvider:
    """Builds each split's graphs once into ``cache_dir/<split>`` and streams them from disk.

    ``read_existing=False`` (upstream's default) always rebuilds. ``read_existing=True`` reuses
    the cache only when its manifest matches these inputs, and otherwise fails naming every
    difference; with no cache there at all it builds one (as upstream does).
    """

    name = "lmdb"

    def __init__(self, map_size: int = INITIAL_MAP_SIZE, workers: int = 1):
        self.map_size = map_size
        self.workers = workers

    def open(
        self,
        records: Sequence[Record],
        *,
        backend: Any,
        settings: GraphSettings,
        split: str,
        cache_dir: Path | None = None,
        read_existing: bool = False,
        indices: Sequence[int] | None = None,
        target_scale: float | None = None,
        progress: Callable[[], None] | None = None,
        workers: int | None = None,
    ) -> LmdbDataset:
        """The dataset of ``records[indices]`` (all records when None) for ``split``."""
        if cache_dir is None:
            raise UserError("the lmdb dataset provider needs a cache_dir")
        indices = list(indices) if indices is not None else list(range(len(records)))
        path = Path(cache_dir) / split
        wanted = make_manifest(backend=backend, settings=settings, split=split, records=records,
                               indices=indices, target_scale=target_scale)  # fmt: skip
        if read_existing and (path.exists() or leftovers(path)):
            dataset = open_cache(path, wanted, backend)
            if progress is not None:
                for _ in range(len(dataset)):
                    progress()
            return dataset
        if path.exists() and not is_replaceable(path):
            raise UserError(f"{path} exists and is not an LMDB cache; refusing to replace it: "
                            "move it away or choose another cache_dir")  # fmt: skip
        remove_stale_leftovers(path)
        manifest = build_cache(path, wanted, records, indices, backend=backend,
                               settings=settings, target_scale=target_scale, progress=progress,
                               workers=self.workers if workers is None else workers,
                               map_size=self.map_size)  # fmt: skip
        return LmdbDataset(path, backend, int(manifest["count"]))
