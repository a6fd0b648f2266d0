"""``alignn relax MODEL STRUCTURE``: FIRE/BFGS relaxation, optionally of the cell too.

Cell relaxation uses ``ase.filters.FrechetCellFilter`` (ASE >= 3.23) or, on older ASE,
``ExpCellFilter``: both expose the cell to the optimiser through a log-strain, so ``--fmax``
bounds the stress as well (in eV/Å after multiplying by the volume). Exit 0 when converged,
1 when ``--steps`` ran out (the outputs are written either way).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import typer

from alignn_core.cli.simulation_io import (
    CUDA_GRAPHS_HELP,
    DEVICE_HELP,
    DTYPE_HELP,
    TrajectoryWriter,
    check_writable,
    err_console,
    make_calculator,
    output_stem,
    read_start,
)
from alignn_core.errors import UserError


class Optimizer(str, Enum):
    FIRE = "FIRE"
    BFGS = "BFGS"


def cell_filter(atoms: Any) -> Any:
    """The best cell filter this ASE has (Frechet is exact for large strains)."""
    try:
        from ase.filters import FrechetCellFilter

        return FrechetCellFilter(atoms)
    except ImportError:  # ASE < 3.23
        from ase.constraints import ExpCellFilter

        return ExpCellFilter(atoms)


def relax(
    model: Path = typer.Argument(..., metavar="MODEL", help="Run directory or checkpoint."),
    structure: Path = typer.Argument(..., metavar="STRUCTURE", help="Start structure file."),
    fmax: float = typer.Option(
        0.05, "--fmax", min=0.0, help="Converged when max force < fmax (eV/Å)."
    ),
    steps: int = typer.Option(500, "--steps", min=0, help="Maximum optimiser steps."),
    optimizer: Optimizer = typer.Option(Optimizer.FIRE, "--optimizer", case_sensitive=False),
    cell: bool = typer.Option(False, "--cell", help="Relax the cell too (periodic structures)."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Relaxed structure [default: STEM-relaxed.extxyz]."
    ),
    trajectory: Path | None = typer.Option(
        None, "--trajectory", help="Trajectory [default: STEM-relax.traj]."
    ),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, "--dtype", help=DTYPE_HELP),
    skin: float = typer.Option(0.5, "--skin", min=0.0, help="Neighbour-list skin (Å)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help=CUDA_GRAPHS_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="No optimiser log."),
) -> None:
    """Relax STRUCTURE with MODEL; write the relaxed structure and the trajectory."""
    stem = output_stem(structure)
    output = output or Path(f"{stem}-relaxed.extxyz")
    trajectory = trajectory or Path(f"{stem}-relax.traj")
    out_fmt = check_writable(output, "--output")
    traj_fmt = check_writable(trajectory, "--trajectory", multi_frame=True)
    atoms = read_start(structure)
    if cell and not atoms.pbc.all():
        raise UserError(f"{structure}: --cell needs a structure periodic in all three directions "
                        f"(pbc is {atoms.pbc.tolist()})")  # fmt: skip
    atoms.calc = make_calculator(model, device, dtype, skin, cuda_graphs)
    target = cell_filter(atoms) if cell else atoms
    from ase.optimize import BFGS, FIRE

    cls = FIRE if optimizer == Optimizer.FIRE else BFGS
    writer = TrajectoryWriter(trajectory, traj_fmt)
    opt = cls(target, logfile=None if quiet else "-")
    opt.attach(lambda: writer.write(atoms), interval=1)
    try:
        converged = bool(opt.run(fmax=fmax, steps=steps))
    finally:
        writer.close()
    from ase.io import write

    output.parent.mkdir(parents=True, exist_ok=True)
    write(str(output), atoms, format=out_fmt)
    forces = target.get_forces()
    reached = float(np.sqrt((forces**2).sum(axis=1)).max()) if len(forces) else 0.0
    energy = atoms.get_potential_energy()
    typer.echo(f"{'converged' if converged else 'NOT converged'} after {opt.nsteps} steps: "
               f"E = {energy:.6f} eV ({energy / len(atoms):.6f} eV/atom), fmax = {reached:.4f} "
               "eV/Å")  # fmt: skip
    if cell:
        a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
        typer.echo(f"cell: a={a:.5f} b={b:.5f} c={c:.5f} Å, alpha={alpha:.3f} beta={beta:.3f} "
                   f"gamma={gamma:.3f}, volume {atoms.get_volume():.4f} Å^3")  # fmt: skip
    typer.echo(f"wrote {output} and {trajectory} ({writer.frames} frames)")
    if not converged:
        err_console.print(f"[bold red]error:[/] not converged: fmax {reached:.4g} eV/Å > {fmax} "
                          f"after {steps} steps; raise --steps", highlight=False)  # fmt: skip
        raise typer.Exit(1)
