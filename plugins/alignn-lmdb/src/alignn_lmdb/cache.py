"""Building, finding and reading one split's graph cache.

Layout: ``CACHE_DIR/<split>/`` holds ``data.mdb`` (+ ``lock.mdb``) and ``manifest.json``. Keys
are the sample's position in the split as 8-byte big-endian integers (so records append in key
order and ``__getitem__(i)`` is one B-tree lookup); values are :mod:`alignn_lmdb.codec` records.

Crash safety: a build writes into ``CACHE_DIR/.<split>.building-<host>-<pid>-<token>/`` and,
only after every record is written and synced and the manifest says ``complete: true``, renames
that folder to ``<split>`` (moving a previous cache aside first, then deleting it). A build
killed at any point leaves at most a ``.building-`` (or ``.old-``) folder, which is never read
as a cache; the next run reports it and removes it if its process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
from rich.console import Console
from torch.utils.data import Dataset

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.data.samples import Sample, built_graphs, record_targets
from alignn_core.errors import ConfigError, DataError, UserError
from alignn_core.structures import Record
from alignn_lmdb.codec import decode_record, encode_record
from alignn_lmdb.manifest import MANIFEST, completed, differences, read_manifest, write_manifest

INITIAL_MAP_SIZE = 64 << 20
"""First LMDB map size (bytes); it doubles whenever a write transaction hits MapFullError."""

CHUNK_RECORDS = 256
CHUNK_BYTES = 64 << 20
"""A write transaction commits after this many records or bytes, whichever comes first."""

RECYCLE_BYTES = 256 << 20
"""A reader reopens its environment after reading this much, which unmaps the pages it touched:
otherwise file-backed pages of the memory map pile up in the process's RSS over an epoch."""

LMDB_FILES = frozenset({"data.mdb", "lock.mdb", MANIFEST})

_LEFTOVER = re.compile(
    r"^\.(?P<name>.+)\.(?P<kind>building|old)-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]+$"
)
_stderr = Console(stderr=True)


def notify(message: str) -> None:
    """A one-line note on stderr (rich routes it above any live progress bar)."""
    _stderr.print(f"[bold cyan]note:[/] {message}", highlight=False, soft_wrap=True)


def record_key(position: int) -> bytes:
    """LMDB key of the sample at ``position`` in the split (big-endian: keys sort by position)."""
    return position.to_bytes(8, "big")


# -- leftovers of interrupted builds ------------------------------------------------------------
@dataclass
class Leftover:
    """A ``.building-`` or ``.old-`` folder next to a cache."""

    path: Path
    kind: str
    host: str
    pid: int

    @property
    def alive(self) -> bool:
        """Whether the process that made it may still be running (other hosts: assume so)."""
        if self.host != socket.gethostname():
            return True
        if self.pid == os.getpid():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def leftovers(path: Path) -> list[Leftover]:
    """Folders that builds of the cache at ``path`` left behind (or are writing right now)."""
    found = []
    if not path.parent.is_dir():
        return found
    for entry in sorted(path.parent.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if match and match["name"] == path.name and entry.is_dir():
            found.append(Leftover(entry, match["kind"], match["host"], int(match["pid"])))
    return found


def remove_stale_leftovers(path: Path) -> None:
    """Delete what dead builds left, saying so (a live build's folder is left alone)."""
    for leftover in leftovers(path):
        if leftover.alive:
            continue
        notify(f"{path}: an earlier build was interrupted (left {leftover.path.name}); "
               "removed it, building a fresh cache")  # fmt: skip
        shutil.rmtree(leftover.path, ignore_errors=True)


def incomplete_reason(path: Path) -> str | None:
    """Why no complete cache is at ``path`` though a build was started there, or None."""
    if path.exists():
        try:
            manifest = read_manifest(path)
        except DataError as exc:
            return str(exc)
        if manifest.get("complete") is not True:
            return f"{path}: the cache is incomplete (its build did not finish)"
        return None
    for leftover in leftovers(path):
        if leftover.kind == "building" and leftover.alive:
            return (f"{path}: a build by process {leftover.pid} on {leftover.host} is still "
                    "running; wait for it to finish")  # fmt: skip
        return (f"{path}: the cache is incomplete: a build was interrupted "
                f"(left {leftover.path.name})")  # fmt: skip
    return None


# -- building -----------------------------------------------------------------------------------
#: graphs a pool worker builds per task (batched where the backend can; small enough to balance)
WORKER_CHUNK = 32
_worker_state: tuple[Sequence[Record], Any, GraphSettings, float | None] | None = None


def _init_worker(records, backend, settings, target_scale) -> None:
    """Set up a build process with one intra-op thread, as DataLoader workers do: a forked
    child inherits the state of the parent's OpenMP pool but not its threads, and hangs in the
    first parallel torch op (observed); the process pool is the parallelism anyway."""
    import torch

    global _worker_state
    torch.set_num_threads(1)
    _worker_state = (records, backend, settings, target_scale)


def encode_graph(record: Record, index: int, backend: Any, graph: Any,
                 target_scale: float | None) -> bytes:  # fmt: skip
    """Serialise a built graph of ``record`` with its targets."""
    return encode_record(record.id, index, backend.to_arrays(graph),
                         record_targets(record, target_scale))  # fmt: skip


def encode_samples(records: Sequence[Record], indices: Sequence[int], backend: Any,
                   settings: GraphSettings,
                   target_scale: float | None) -> Iterator[bytes]:  # fmt: skip
    """Each index's graph serialised with its targets (what the cache stores), in order; the
    graphs are built together where the backend can
    (:func:`~alignn_core.data.samples.built_graphs`)."""
    structures = [records[index].structure for index in indices]
    labels = [records[index].id for index in indices]
    graphs = built_graphs(backend, structures, settings, labels=labels)
    for index, graph in zip(indices, graphs, strict=True):
        yield encode_graph(records[index], index, backend, graph, target_scale)


def _encode_in_worker(indices: list[int]) -> list[bytes]:
    assert _worker_state is not None
    records, backend, settings, target_scale = _worker_state
    return list(encode_samples(records, indices, backend, settings, target_scale))


def encoded_records(records: Sequence[Record], indices: Sequence[int], backend: Any,
                    settings: GraphSettings, target_scale: float | None,
                    workers: int = 1) -> Iterator[bytes]:  # fmt: skip
    """Encoded samples in split order; with ``workers > 1`` graphs are built in a process pool.

    ``imap`` keeps the order, and graph building is deterministic, so a parallel build writes
    byte-identical records to a serial one (a test checks). Workers get the records once at
    start-up (inherited for free under ``fork``) and build :data:`WORKER_CHUNK` graphs a task.
    """
    if workers <= 1 or len(indices) < 2 * workers:
        yield from encode_samples(records, indices, backend, settings, target_scale)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    indices = list(indices)
    tasks = [indices[i : i + WORKER_CHUNK] for i in range(0, len(indices), WORKER_CHUNK)]
    with context.Pool(workers, initializer=_init_worker,
                      initargs=(records, backend, settings, target_scale)) as pool:  # fmt: skip
        for encoded in pool.imap(_encode_in_worker, tasks):
            yield from encoded


def _put_chunk(env: lmdb.Environment, chunk: list[tuple[bytes, bytes]]) -> None:
    """Write one transaction, doubling the map size until it fits."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in chunk:
                    txn.put(key, value, append=True)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def _write_failure(exc: BaseException, directory: Path) -> str | None:
    """What went wrong if ``exc`` is a failed write (disk full, quota, file size limit).

    A disk that fills up mid-write often surfaces from LMDB as a short write, i.e. EIO
    ("Input/output error") rather than ENOSPC, so the free space is checked too.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return str(exc.strerror or exc)
    if not isinstance(exc, lmdb.Error) or isinstance(exc, lmdb.MapFullError):
        return None
    text = str(exc)
    if isinstance(exc, lmdb.DiskError) or "No space left" in text or "quota" in text.lower():
        return "no space left on the device"
    if "Input/output error" in text or "File too large" in text:
        try:
            free = shutil.disk_usage(directory).free
        except OSError:
            free = 0
        if free < 2 * CHUNK_BYTES:
            return f"no space left on the device ({free / 1e6:.0f} MB free)"
        return f"{text} (a failing disk, or a file size limit: see `ulimit -f`)"
    return None


def _fsync_dir(path: Path) -> None:
    if sys.platform.startswith("win"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_replaceable(path: Path) -> bool:
    """Only a folder that holds nothing but LMDB files may be replaced (never a user's data)."""
    return path.is_dir() and all(p.name in LMDB_FILES for p in path.iterdir())


def _commit(temp: Path, path: Path) -> None:
    """Move the finished build to ``path``, replacing an older cache there."""
    for _ in range(5):
        old = None
        if path.exists():
            if not is_replaceable(path):
                raise UserError(f"{path} exists and is not an LMDB cache; refusing to replace "
                                "it: move it away or choose another cache_dir")  # fmt: skip
            old = temp.with_name(temp.name.replace(".building-", ".old-", 1))
            with contextlib.suppress(FileNotFoundError):  # a concurrent build moved it first
                os.rename(path, old)
        try:
            os.rename(temp, path)
        except OSError as exc:  # another build committed between our two renames: retry
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            continue
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
        return
    raise RuntimeError(f"{path}: could not replace the cache (concurrent builds keep replacing it)")


def build_cache(
    path: Path,
    manifest: Mapping[str, Any],
    records: Sequence[Record],
    indices: Sequence[int],
    *,
    backend: Any,
    settings: GraphSettings,
    target_scale: float | None = None,
    progress: Callable[[], None] | None = None,
    workers: int = 1,
    map_size: int = INITIAL_MAP_SIZE,
) -> dict[str, Any]:
    """Build the cache of ``records[indices]`` at ``path``; returns its completed manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    temp = path.with_name(f".{path.name}.building-{socket.gethostname()}-{os.getpid()}-{token}")
    start = time.perf_counter()
    written_bytes = 0
    try:
        temp.mkdir()
        write_manifest(temp, manifest)
        env = lmdb.open(str(temp), map_size=map_size, subdir=True, sync=False, metasync=False,
                        readahead=False, meminit=False, max_dbs=0)  # fmt: skip
        try:
            chunk: list[tuple[bytes, bytes]] = []
            chunk_bytes = 0
            position = -1
            encoded = encoded_records(records, indices, backend, settings, target_scale, workers)
            for position, value in enumerate(encoded):
                chunk.append((record_key(position), value))
                chunk_bytes += len(value)
                if progress is not None:
                    progress()
                if len(chunk) >= CHUNK_RECORDS or chunk_bytes >= CHUNK_BYTES:
                    _put_chunk(env, chunk)
                    written_bytes += chunk_bytes
                    chunk, chunk_bytes = [], 0
            if chunk:
                _put_chunk(env, chunk)
                written_bytes += chunk_bytes
            if position + 1 != len(indices):
                raise RuntimeError(f"wrote {position + 1} of {len(indices)} records")
            env.sync(True)
        finally:
            env.close()
        done = completed(manifest, time.perf_counter() - start)
        write_manifest(temp, done)
        _fsync_dir(temp)
        _commit(temp, path)
        return done
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        failure = _write_failure(exc, path.parent)
        if failure is not None:
            raise UserError(
                f"could not write the {manifest.get('split')} graph cache in {path.parent}: "
                f"{failure}, after {written_bytes / 1e6:.1f} MB; the partial cache was removed: "
                "free space or set cache_dir to another disk"
            ) from exc
        raise


# -- reading ------------------------------------------------------------------------------------
def open_environment(path: Path) -> lmdb.Environment:
    """Read-only, lock-free: a committed cache never changes, so readers need no lock file
    (several processes, or a read-only file system, can read one cache)."""
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                     max_dbs=0, subdir=True)  # fmt: skip


def file_identity(path: Path) -> tuple[int, int]:
    """(device, inode) of a cache's ``data.mdb``: which build's files a dataset reads."""
    stat = (Path(path) / "data.mdb").stat()
    return stat.st_dev, stat.st_ino


class _Environments:
    """This process's open read-only environments, one per cache file, shared by its datasets.

    py-lmdb refuses to open one environment twice in a process, and a child process inherits
    its parent's handles, which LMDB forbids using: after a fork they are closed unused (that
    only unmaps them in the child) before the child opens its own. An environment is reopened
    after :data:`RECYCLE_BYTES` of reads, so the pages it touched leave the process's RSS.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.open: dict[tuple[int, int], list] = {}

    def get(self, path: Path, identity: tuple[int, int]) -> list:
        """``[environment, bytes read since opening]`` for the cache file ``identity``."""
        if self.pid != os.getpid():
            self.close_all()
            self.pid = os.getpid()
        entry = self.open.get(identity)
        if entry is not None and entry[1] < RECYCLE_BYTES:
            return entry
        if entry is not None:
            entry[0].close()
            del self.open[identity]
        try:
            current = file_identity(path)
        except FileNotFoundError:
            current = None
        if current != identity:
            raise DataError(f"{path}: the cache was rebuilt or removed while this run read it; "
                            "rerun (with read_existing false to rebuild it)")  # fmt: skip
        entry = self.open[identity] = [open_environment(path), 0]
        return entry

    def release(self, identity: tuple[int, int]) -> None:
        entry = self.open.pop(identity, None) if self.pid == os.getpid() else None
        if entry is not None:
            entry[0].close()

    def close_all(self) -> None:
        for env, _ in self.open.values():
            env.close()
        self.open.clear()


_environments = _Environments()


@contextlib.contextmanager
def reading(path: Path) -> Iterator[lmdb.Environment]:
    """This process's environment of the cache at ``path``, for inspection (info, verify)."""
    identity = file_identity(path)
    was_open = identity in _environments.open
    entry = _environments.get(path, identity)
    try:
        yield entry[0]
    finally:
        if not was_open:
            _environments.release(identity)


class LmdbDataset(Dataset):
    """A split's samples, read from the cache one at a time in ``__getitem__``.

    Only the path, the identity of the cache file, the backend and the length are held, so
    memory does not grow with the dataset, and the object pickles (spawned DataLoader workers).
    Each process opens its own environment on first read (see :class:`_Environments`).
    """

    def __init__(self, path: Path, backend: Any, length: int):
        self.path = Path(path)
        self.backend = backend
        self.length = length
        self.identity = file_identity(self.path)

    def __len__(self) -> int:
        return self.length

    def close(self) -> None:
        """Release this process's environment of the cache (reading again reopens it)."""
        _environments.release(self.identity)

    def read(self, position: int, check_crc: bool = False):
        """The decoded record at ``position`` (arrays are read-only views of a private copy)."""
        if position < 0:
            position += self.length
        if not 0 <= position < self.length:
            raise IndexError(f"index {position} out of range for {self.length} samples")
        entry = _environments.get(self.path, self.identity)
        with entry[0].begin() as txn:
            value = txn.get(record_key(position))
        if value is None:
            raise DataError(
                f"{self.path}: record {position} is missing; the cache is damaged: rebuild it "
                f"(`alignn cache verify {self.path}` checks it)"
            )
        entry[1] += len(value)
        return decode_record(value, f"{self.path}: record {position}", check_crc)

    def __getitem__(self, position: int) -> Sample:
        record = self.read(position)
        return Sample(
            id=record.id,
            index=record.index,
            graph=self.backend.from_arrays(record.graph),
            targets={name: array.copy() for name, array in record.targets.items()},
        )


def open_cache(path: Path, wanted: Mapping[str, Any], backend: Any) -> LmdbDataset:
    """The dataset of the complete cache at ``path`` if its manifest matches ``wanted``."""
    reason = incomplete_reason(path)
    if reason is not None:
        raise ConfigError(f"{reason}; set read_existing to false to rebuild it")
    manifest = read_manifest(path)
    if not (path / "data.mdb").is_file():
        raise ConfigError(f"{path}: data.mdb is missing; set read_existing to false to rebuild it")
    diffs = differences(manifest, wanted)
    if diffs:
        raise ConfigError(f"{path} was built from different inputs ({'; '.join(diffs)}); set "
                          "read_existing to false to rebuild it")  # fmt: skip
    return LmdbDataset(path, backend, int(manifest["count"]))


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk, apparent size) of the files under ``path``."""
    allocated = apparent = 0
    for file in Path(path).rglob("*"):
        if file.is_file():
            stat = file.stat()
            apparent += stat.st_size
            allocated += getattr(stat, "st_blocks", stat.st_size // 512) * 512
    return allocated, apparent
