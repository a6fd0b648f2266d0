"""The manifest: what a cache was built from, so it is never reused for different inputs.

Upstream ALIGNN reuses an LMDB cache whenever the folder exists (it only notices a DGL-vs-pure
backend switch), so changing ``cutoff`` or the data silently trains on stale graphs. Each cache
here carries ``manifest.json`` with everything that determines its contents:

- ``format_version``: the record/key layout of this plugin (:data:`codec.FORMAT_VERSION`);
- ``backend``, ``backend_version``: the graph backend that built and will decode the graphs;
- ``settings``: every :class:`~alignn_core.config.graph_settings.GraphSettings` field (and its
  ``settings_fingerprint``), so a mismatch can name the field that changed;
- ``split``, ``count``, ``indices_sha256``: which records, in which order;
- ``records_sha256``: a hash of those records' ids, structures and targets as used in training
  (after ``target_multiplication_factor``, recorded as ``target_scale`` too);
- ``complete``: true only once every record is written (the build also renames atomically).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.data.samples import record_targets
from alignn_core.errors import DataError
from alignn_core.structures import Record
from alignn_lmdb import __version__
from alignn_lmdb.codec import FORMAT_VERSION

MANIFEST = "manifest.json"
FORMAT_NAME = "alignn-lmdb-graph-cache"

COMPARED = ("format_version", "backend", "backend_version", "split", "count", "target_scale",
            "indices_sha256", "records_sha256")  # fmt: skip
"""Top-level manifest fields that must match (``settings`` is compared field by field)."""


class _RecordDigest:
    """SHA-256 over a stream of strings and arrays, each array as ``dtype.str`` + shape + its
    C-order bytes (the records_sha256 format).

    A warm open hashes every record, so this is most of its time: pieces are collected and
    hashed in joins of about 4 MiB (one digest call instead of two per array), array buffers
    are read in place, and each (dtype, shape) header is formatted once.
    """

    FLUSH_BYTES = 4 << 20

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pieces: list[Any] = []
        self._pending = 0
        self._headers: dict[tuple[Any, tuple[int, ...]], bytes] = {}

    def text(self, value: str) -> None:
        self._pieces.append(value.encode() + b"\0")

    def array(self, array: np.ndarray) -> None:
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)  # not reached by 0-d arrays, which it makes 1-d
        key = (array.dtype, array.shape)
        header = self._headers.get(key)
        if header is None:
            header = self._headers[key] = f"{array.dtype.str}{array.shape}".encode()
        self._pieces += (header, array)
        self._pending += array.nbytes
        if self._pending >= self.FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        self._digest.update(b"".join(self._pieces))
        self._pieces.clear()
        self._pending = 0

    def hexdigest(self) -> str:
        self._flush()
        return self._digest.hexdigest()


def indices_hash(indices: Sequence[int]) -> str:
    """Hash of the record indices of a split, in order (the cache's key order)."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def records_hash(
    records: Sequence[Record], indices: Sequence[int], target_scale: float | None
) -> str:
    """Hash of everything a cached sample is made of: id, structure, and targets as trained."""
    digest = _RecordDigest()
    for index in indices:
        record = records[index]
        structure = record.structure
        digest.text(record.id)
        for array in (structure.numbers, structure.positions, structure.cell,
                      np.asarray(structure.pbc)):  # fmt: skip
            digest.array(array)
        for name, value in record_targets(record, target_scale).items():
            digest.text(name)
            digest.array(np.asarray(value))
    return digest.hexdigest()


def make_manifest(
    *,
    backend: Any,
    settings: GraphSettings,
    split: str,
    records: Sequence[Record],
    indices: Sequence[int],
    target_scale: float | None,
) -> dict[str, Any]:
    """The manifest a cache of these inputs must carry (``complete`` false until written)."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "complete": False,
        "backend": backend.name,
        "backend_version": str(backend.version),
        "settings": settings.model_dump(mode="json"),
        "settings_fingerprint": settings.fingerprint(),
        "split": split,
        "count": len(indices),
        "target_scale": target_scale,
        "indices_sha256": indices_hash(indices),
        "records_sha256": records_hash(records, indices, target_scale),
        "written_by": f"alignn-lmdb {__version__}",
    }


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a sha256: the first 12 digits are enough
        return value[:12]
    return json.dumps(value)


def differences(cached: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``field: cache X, run Y`` for every compared field that differs (empty: they match)."""
    diffs = []
    for name in COMPARED[:3]:
        if cached.get(name) != wanted.get(name):
            diffs.append(f"{name}: cache {_short(cached.get(name))}, run {_short(wanted[name])}")
    cached_settings = cached.get("settings")
    cached_settings = cached_settings if isinstance(cached_settings, dict) else {}
    for name, value in wanted["settings"].items():
        if cached_settings.get(name, "<missing>") != value:
            diffs.append(f"{name}: cache {_short(cached_settings.get(name, '<missing>'))}, "
                         f"run {_short(value)}")  # fmt: skip
    for name in sorted(set(cached_settings) - set(wanted["settings"])):
        diffs.append(f"{name}: cache {_short(cached_settings[name])}, run <not a setting>")
    for name in COMPARED[3:]:
        if cached.get(name) != wanted.get(name):
            diffs.append(f"{name}: cache {_short(cached.get(name))}, run {_short(wanted[name])}")
    return diffs


def read_manifest(directory: Path) -> dict[str, Any]:
    """Load ``directory/manifest.json`` (plain JSON: reading it cannot run code)."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{directory}: not an alignn-lmdb cache (no {MANIFEST})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); rebuild the cache") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{path}: not an alignn-lmdb manifest; rebuild the cache")
    return manifest


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Write the manifest durably: temp file, fsync, atomic replace."""
    path = Path(directory) / MANIFEST
    temp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    with open(temp, "w") as handle:
        json.dump(dict(manifest), handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def completed(manifest: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The manifest of a finished build."""
    return {**manifest, "complete": True, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(seconds, 3)}  # fmt: skip
