"""Structure files (POSCAR, CIF, XYZ/extxyz, PDB via ASE) and JARVIS atoms dicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alignn_core.errors import DataError
from alignn_core.structures import Structure

FORMATS = {"poscar": "vasp", "cif": "cif", "xyz": "extxyz", "pdb": "proteindatabank"}
EXTENSIONS = {
    ".vasp": "vasp", ".poscar": "vasp", ".cif": "cif", ".xyz": "extxyz", ".extxyz": "extxyz",
    ".pdb": "proteindatabank",
}  # fmt: skip
MOLECULE_BOX = 500.0
"""Upstream boxes cell-less XYZ/PDB molecules in a 500 Å cube; we do too, but non-periodic."""


def _ase_format(path: Path, file_format: str) -> str | None:
    if file_format != "auto":
        return FORMATS[file_format]
    name = path.name.lower()
    if name.startswith(("poscar", "contcar")):
        return "vasp"
    return EXTENSIONS.get(path.suffix.lower())


def read_ase(path: Path, file_format: str = "auto", index: int | str = 0):
    """``ase.io.read`` of ``path`` (one frame for an int ``index``, a list for ``":"``); a
    missing, non-file or malformed input is a one-line :class:`DataError`."""
    from ase.io import read

    if not path.exists():
        raise DataError(f"{path}: structure file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a structure file")
    try:
        return read(str(path), format=_ase_format(path, file_format), index=index)
    except Exception as exc:  # ASE raises many exception types for malformed files
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise DataError(f"{path}: cannot read structure ({reason})") from None


def read_structure(path: Path, file_format: str = "auto") -> Structure:
    """Read one structure; a malformed or missing file is a one-line :class:`DataError`."""
    atoms = read_ase(path, file_format)
    if len(atoms) == 0:
        raise DataError(f"{path}: structure has no atoms")
    # no cell at all (XYZ/PDB molecules): boxed. A periodic file with a degenerate cell (a
    # POSCAR with parallel lattice vectors) is an error from _checked, not silently a molecule.
    if not atoms.get_pbc().any() or not atoms.cell.array.any():
        atoms.set_cell(np.eye(3) * MOLECULE_BOX)
        atoms.center()
        atoms.set_pbc(False)
    return _checked(Structure.from_ase(atoms), str(path))


def structure_from_jarvis(atoms: dict, where: str) -> Structure:
    """Convert a JARVIS atoms dict (``lattice_mat`` rows, ``coords``, ``elements``,
    ``cartesian``) to a :class:`Structure`."""
    from ase.data import atomic_numbers

    try:
        lattice = np.asarray(atoms["lattice_mat"], dtype=np.float64).reshape(3, 3)
        coords = np.asarray(atoms["coords"], dtype=np.float64).reshape(-1, 3)
        elements = list(atoms["elements"])
        cartesian = bool(atoms.get("cartesian", False))
    except KeyError as exc:
        raise DataError(f"{where}: atoms is missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: atoms has malformed lattice_mat/coords ({exc})") from None
    if len(elements) != len(coords):
        raise DataError(f"{where}: {len(elements)} elements but {len(coords)} coords")
    try:
        numbers = [atomic_numbers[str(symbol).strip()] for symbol in elements]
    except KeyError as exc:
        raise DataError(f"{where}: unknown element symbol {exc.args[0]!r}") from None
    positions = coords if cartesian else coords @ lattice
    return _checked(Structure(numbers=numbers, positions=positions, cell=lattice), where)


def _checked(structure: Structure, where: str) -> Structure:
    if not np.isfinite(structure.positions).all() or not np.isfinite(structure.cell).all():
        raise DataError(f"{where}: positions or lattice contain NaN/inf")
    if any(structure.pbc) and structure.volume < 1e-6:
        raise DataError(f"{where}: lattice is degenerate (cell volume {structure.volume:.3g} Å^3)")
    if structure.n_atoms == 0:
        raise DataError(f"{where}: structure has no atoms")
    return structure
