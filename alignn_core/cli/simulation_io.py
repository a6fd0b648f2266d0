"""Shared by ``alignn relax`` and ``alignn md``: reading the start structure, checking output
paths before any work is done, and writing trajectories that ``ase.io.read`` reads back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rich.console import Console

from alignn_core.errors import DataError, UserError

err_console = Console(stderr=True)
DEVICE_HELP = "cpu, cuda, cuda:1 ... [default: cuda when available]"
DTYPE_HELP = "float32 or float64 [default: the config's dtype]"
CUDA_GRAPHS_HELP = "Replay captured CUDA graphs each step (GPU only; faster for small systems)."


def read_start(path: Path) -> Any:
    """The first frame of ``path`` as ``ase.Atoms``, constraints (POSCAR selective dynamics)
    kept, so a relaxation honours fixed atoms. A multi-frame file gets a note, not an error."""
    from alignn_core.io.structures import read_ase

    frames = read_ase(path, index=":")
    frames = frames if isinstance(frames, list) else [frames]
    if not frames or len(frames[0]) == 0:
        raise DataError(f"{path}: structure has no atoms")
    if len(frames) > 1:
        err_console.print(f"note: {path} has {len(frames)} frames; using the first",
                          highlight=False)  # fmt: skip
    atoms = frames[0]
    atoms.calc = None
    return atoms


def output_stem(structure: Path) -> str:
    """Stem for default output names. ``POSCAR``/``CONTCAR`` are dropped from it because ASE
    reads any file whose name contains them as VASP, whatever its extension."""
    stem = re.sub(r"(?i)poscar|contcar", "", structure.stem).strip("-_. ")
    return stem or "structure"


def check_writable(path: Path, option: str, *, multi_frame: bool = False) -> str:
    """ASE format name for ``path``, by extension first (ASE's own guess calls any name with
    POSCAR in it VASP); a bad choice fails *before* a long run."""
    from ase.io.formats import extension2format, filetype, ioformats

    ext = path.suffix.lower().lstrip(".")
    io = extension2format.get(ext) or ioformats.get(ext)
    if io is None:
        try:
            io = ioformats.get(filetype(str(path), read=False))
        except Exception:
            io = None
    if io is None:
        raise UserError(f"{option} {path}: unknown file type; use e.g. .extxyz, .traj, .vasp, "
                        ".cif")  # fmt: skip
    if not io.can_write:
        raise UserError(f"{option} {path}: ASE cannot write {io.name!r} files")
    if multi_frame and io.single:
        raise UserError(f"{option} {path}: {io.name!r} holds one structure; use .traj or .extxyz "
                        "for a trajectory")  # fmt: skip
    return io.name


class TrajectoryWriter:
    """Appends frames (positions, cell, energy, forces, stress) to ``.traj`` or ``.extxyz``."""

    def __init__(self, path: Path, fmt: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fmt = fmt
        self.frames = 0
        self._traj: Any = None
        if fmt == "traj":
            from ase.io.trajectory import Trajectory

            self._traj = Trajectory(str(path), "w")
        else:
            path.write_text("")

    def write(self, atoms: Any) -> None:
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.io import write

        snapshot = atoms.copy()
        calc = atoms.calc
        if calc is not None and getattr(calc, "results", None):
            snapshot.calc = SinglePointCalculator(snapshot, **dict(calc.results))
        if self._traj is not None:
            self._traj.write(snapshot)
        else:
            write(str(self.path), snapshot, format=self.fmt, append=True)
        self.frames += 1

    def close(self) -> None:
        if self._traj is not None:
            self._traj.close()


def make_calculator(
    model: Path, device: str | None, dtype: str | None, skin: float | None, cuda_graphs: bool
):
    """Load MODEL and wrap it in an ASE calculator, printing conversion notes to stderr."""
    from alignn_core.ase import ALIGNNCalculator
    from alignn_core.inference import load_model

    loaded = load_model(model, device=device, dtype=dtype, cuda_graphs=cuda_graphs)
    for note in loaded.notes:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calc = ALIGNNCalculator(loaded, skin=skin)
    for warning in caught:
        err_console.print(f"[bold yellow]warning:[/] {warning.message}", highlight=False,
                          soft_wrap=True)  # fmt: skip
    return calc
