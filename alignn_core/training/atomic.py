"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every write goes to a hidden temp file next to the target (``.NAME.XXXX.tmp``), is flushed and
fsynced, then renamed over the target with ``os.replace`` (atomic on POSIX), and the folder is
fsynced so the rename survives a power cut. A process killed mid-write leaves at most such a temp
file, which :func:`remove_temp_files` clears at the start of the next run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from alignn_core.errors import ModelError

TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
"""``tempfile.mkstemp(prefix=".NAME.", suffix=".tmp")``: 8 random characters in between."""


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (umask), as before
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: not every filesystem lets a folder be fsynced)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through a temp file + rename. Objects must load with weights_only=True."""
    _atomic(path, lambda handle: torch.save(obj, handle))


def save_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda handle: handle.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_text(text: str, path: Path) -> None:
    _atomic(path, lambda handle: handle.write(text.encode()))


def save_bytes(data: bytes, path: Path) -> None:
    _atomic(path, lambda handle: handle.write(data))


def temp_files(directory: Path) -> list[Path]:
    """Temp files :func:`_atomic` left in ``directory`` (a process killed mid-write)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _TEMP_NAME.match(p.name) and p.is_file())


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete the temp files of interrupted writes in ``directory``; returns what was removed.
    Only call this where no other process is writing (the trainer's rank 0, at start)."""
    removed = []
    for path in temp_files(directory):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def load_torch(path: Path) -> Any:
    """Load a checkpoint safely: tensors and plain containers only, never arbitrary pickle.

    A file that is truncated, corrupt, or holds anything else (a pickled object that would run
    code) is a one-line :class:`~alignn_core.errors.ModelError`, not a traceback.
    """
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle's protocol: noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except Exception as exc:  # UnpicklingError, RuntimeError for non-zip files, EOFError ...
        raise ModelError(
            f"{path}: cannot load the checkpoint with torch.load(weights_only=True) "
            f"({_load_failure(exc)})"
        ) from None


def _load_failure(exc: Exception) -> str:
    """The reason in a few words. torch's own text for a refused pickle suggests retrying with
    ``weights_only=False``, the one thing not to do with a file of unknown origin."""
    text = str(exc).strip()
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL [\w.]+|Unsupported operand \d+", text)
        detail = f": {found.group(0)}" if found else ""
        return (f"it holds pickled objects, not only tensors{detail}; unpickling them could run "
                "code, so it is refused")  # fmt: skip
    return text.splitlines()[0] if text else type(exc).__name__
