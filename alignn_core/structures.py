"""Backend-neutral atomic structures and training records.

Graph backends turn a :class:`Structure` into their own graph objects; nothing here depends on
torch, so readers, splits and caches can be tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Structure:
    """One atomic configuration.

    ``positions`` are Cartesian (Å, ``[n_atoms, 3]``); ``cell`` rows are lattice vectors
    (``[3, 3]``); ``numbers`` are atomic numbers (``[n_atoms]``).
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: tuple[bool, bool, bool] = (True, True, True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "numbers", np.asarray(self.numbers, dtype=np.int64).reshape(-1))
        object.__setattr__(
            self, "positions", np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        )
        object.__setattr__(self, "cell", np.asarray(self.cell, dtype=np.float64).reshape(3, 3))
        object.__setattr__(self, "pbc", tuple(bool(p) for p in self.pbc))
        if len(self.numbers) != len(self.positions):
            raise ValueError(
                f"{len(self.numbers)} atomic numbers but {len(self.positions)} positions"
            )

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))

    @classmethod
    def from_ase(cls, atoms) -> Structure:
        """Build from ``ase.Atoms``; a non-periodic molecule keeps its (possibly zero) cell."""
        return cls(
            numbers=atoms.get_atomic_numbers(),
            positions=atoms.get_positions(),
            cell=np.asarray(atoms.get_cell()),
            pbc=tuple(atoms.get_pbc()),
        )

    def to_ase(self):
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)


@dataclass
class Record:
    """A structure with its reference values, as read from the data directory.

    ``target`` is the graph-level value (scalar or vector: energy per atom for force fields).
    ``forces`` is ``[n_atoms, 3]`` eV/Å, ``stress`` ``[3, 3]`` GPa, ``atomwise`` ``[n_atoms, k]``.
    """

    id: str
    structure: Structure
    target: np.ndarray
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    atomwise: np.ndarray | None = None
    additional: np.ndarray | None = None
    extra: dict[str, object] = field(default_factory=dict)
