"""Atomic file writes: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from alignn_core.errors import ModelError


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through a temp file + rename. Objects must load with weights_only=True."""
    _atomic(path, lambda handle: torch.save(obj, handle))


def save_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda handle: handle.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_text(text: str, path: Path) -> None:
    _atomic(path, lambda handle: handle.write(text.encode()))


def load_torch(path: Path) -> Any:
    """Load a checkpoint safely: tensors and plain containers only, never arbitrary pickle.

    A file that is truncated, corrupt, or holds anything else (a pickled object that would run
    code) is a one-line :class:`~alignn_core.errors.ModelError`, not a traceback.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except Exception as exc:  # UnpicklingError, RuntimeError for non-zip files, EOFError ...
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise ModelError(
            f"{path}: cannot load the checkpoint with torch.load(weights_only=True) ({reason})"
        ) from None
