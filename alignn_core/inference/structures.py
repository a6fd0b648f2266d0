"""Turn what users hand to ``predict`` (ASE Atoms, Structures, files, folders) into structures.

Training reads one structure per file; inference also meets trajectories, so a file here yields
*every* frame (multi-frame extxyz, ASE ``.traj``), each labelled so a prediction row can be traced
back to its source: ``name`` for a single frame, ``name@i`` for frame ``i`` (ASE's index syntax).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alignn_core.errors import DataError
from alignn_core.io.structures import EXTENSIONS, read_ase
from alignn_core.structures import Structure

#: extensions a folder is scanned for (plus files named POSCAR*/CONTCAR*)
FOLDER_EXTENSIONS = (*EXTENSIONS, ".traj")


@dataclass(frozen=True)
class LabelledStructure:
    """A structure with where it came from (``label``: file, ``file@frame`` or input index)."""

    label: str
    structure: Structure
    source: str | None = None
    frame: int | None = None


def structure_from_atoms(atoms: Any) -> Structure:
    """``ase.Atoms`` -> :class:`Structure`, cell and periodicity exactly as given.

    Unlike training's reader there is no 500 Å box for molecules: a non-periodic graph never
    looks at the cell, and a calculator must describe exactly the atoms it was handed. A periodic
    axis without a lattice vector is reported by the graph backend when the graph is built.
    """
    return Structure.from_ase(atoms)


def read_frames(path: Path) -> list[LabelledStructure]:
    """Every frame of a structure file, as one-line :class:`DataError` on any problem."""
    frames = read_ase(path, index=":")
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise DataError(f"{path}: no structure in the file")
    single = len(frames) == 1
    labelled = []
    for index, atoms in enumerate(frames):
        label = path.name if single else f"{path.name}@{index}"
        if len(atoms) == 0:
            raise DataError(f"{path}: frame {index} has no atoms")
        structure = structure_from_atoms(atoms)
        if not np.isfinite(structure.positions).all():
            raise DataError(f"{path}: frame {index} has NaN/inf positions")
        labelled.append(LabelledStructure(label, structure, str(path), None if single else index))
    return labelled


def folder_files(folder: Path) -> list[Path]:
    """Structure files in ``folder`` (not recursive), sorted by name."""
    files = [
        p for p in sorted(folder.iterdir())
        if p.is_file() and (p.suffix.lower() in FOLDER_EXTENSIONS
                            or p.name.lower().startswith(("poscar", "contcar")))
    ]  # fmt: skip
    if not files:
        kinds = ", ".join(f"*{e}" for e in FOLDER_EXTENSIONS)
        raise DataError(f"{folder}: no structure files (POSCAR*, CONTCAR*, {kinds})")
    return files


def gather(items: Any) -> Iterator[LabelledStructure]:
    """Yield labelled structures from one item or an iterable of items.

    Items: ``ase.Atoms``, :class:`Structure`, a path (str/Path) to a structure file (every frame)
    or to a folder of them, or a :class:`LabelledStructure` (kept as it is). In-memory objects
    are labelled by their position in the input.
    """
    if isinstance(items, (str, Path, Structure, LabelledStructure)) or _is_atoms(items):
        items = [items]
    if not isinstance(items, Iterable):
        raise TypeError(f"expected structures, paths or ase.Atoms, got {type(items).__name__}")
    for index, item in enumerate(items):
        if isinstance(item, LabelledStructure):
            yield item
        elif isinstance(item, Structure):
            yield LabelledStructure(str(index), item)
        elif _is_atoms(item):
            yield LabelledStructure(str(index), structure_from_atoms(item))
        elif isinstance(item, (str, Path)):
            path = Path(item)
            if path.is_dir():
                for file in folder_files(path):
                    yield from read_frames(file)
            else:
                yield from read_frames(path)
        else:
            kind = type(item).__name__
            raise TypeError(f"item {index}: expected a Structure, ase.Atoms or a path, got {kind}")


def _is_atoms(obj: Any) -> bool:
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover - ase is a core dependency
        return False
    return isinstance(obj, Atoms)
