"""``alignn md MODEL STRUCTURE``: NVE (velocity Verlet) or NVT (Langevin) molecular dynamics.

Velocities start from a Maxwell-Boltzmann distribution at ``--temperature`` (seeded by
``--seed``) with the centre-of-mass momentum removed. The trajectory (``.traj`` or ``.extxyz``)
stores positions, velocities, energy, forces and stress every ``--interval`` steps; the log has
time, total/potential/kinetic energy and temperature. For NVE the summary reports the drift of
the conserved energy (kinetic + potential; kinetic + N·E for a ``force_mult_natoms`` model), the
slope of a least-squares line through it, in meV/atom/ps.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np
import typer

from alignn_core.cli.simulation_io import (
    CUDA_GRAPHS_HELP,
    DEVICE_HELP,
    DTYPE_HELP,
    TrajectoryWriter,
    check_writable,
    make_calculator,
    output_stem,
    read_start,
)


class Ensemble(str, Enum):
    nve = "nve"
    nvt = "nvt"


def thermalize(atoms, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` K without centre-of-mass drift (ASE >= 3.29
    calls it ``thermalize_momenta``; older releases ``MaxwellBoltzmannDistribution``)."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):
        vd.thermalize_momenta(atoms, temperature, rng=rng)
    else:  # pragma: no cover - ASE < 3.29
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    vd.Stationary(atoms)


def energy_drift(times_ps: np.ndarray, total_ev: np.ndarray, n_atoms: int) -> float:
    """Least-squares slope of the total energy, meV/atom/ps (a conservative, well-integrated
    force field gives ~0; fluctuations average out, a systematic gain or loss does not)."""
    times_ps = np.asarray(times_ps, dtype=np.float64)
    if len(times_ps) < 2 or np.ptp(times_ps) == 0:
        return 0.0
    slope = np.polyfit(times_ps, np.asarray(total_ev, dtype=np.float64), 1)[0]
    return float(slope * 1000.0 / n_atoms)


def md(
    model: Path = typer.Argument(..., metavar="MODEL", help="Run directory or checkpoint."),
    structure: Path = typer.Argument(..., metavar="STRUCTURE", help="Start structure file."),
    ensemble: Ensemble = typer.Option(Ensemble.nve, "--ensemble", case_sensitive=False),
    steps: int = typer.Option(1000, "--steps", min=0, help="Number of MD steps."),
    timestep: float = typer.Option(1.0, "--timestep", min=1e-6, help="Time step (fs)."),
    temperature: float = typer.Option(
        300.0, "--temperature", min=0.0, help="Initial (nve) / thermostat (nvt) temperature (K)."
    ),
    friction: float = typer.Option(
        0.01, "--friction", min=0.0, help="Langevin friction for nvt (1/fs)."
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Trajectory [default: STEM-md.traj]."
    ),
    log: Path | None = typer.Option(None, "--log", help="Energy/temperature log [STEM-md.log]."),
    interval: int = typer.Option(1, "--interval", min=1, help="Write every N steps."),
    seed: int = typer.Option(0, "--seed", help="Seed for initial velocities and the thermostat."),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, "--dtype", help=DTYPE_HELP),
    skin: float = typer.Option(0.5, "--skin", min=0.0, help="Neighbour-list skin (Å)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help=CUDA_GRAPHS_HELP),
) -> None:
    """Run molecular dynamics of STRUCTURE with MODEL; write a trajectory and a log."""
    from ase import units
    from ase.md.logger import MDLogger

    stem = output_stem(structure)
    output = output or Path(f"{stem}-md.traj")
    log = log or Path(f"{stem}-md.log")
    traj_fmt = check_writable(output, "--output", multi_frame=True)
    atoms = read_start(structure)
    atoms.calc = make_calculator(model, device, dtype, skin, cuda_graphs)
    rng = np.random.default_rng(seed)
    if temperature > 0:
        thermalize(atoms, temperature, rng)
    dt = timestep * units.fs
    if ensemble == Ensemble.nve:
        from ase.md.verlet import VelocityVerlet

        dyn = VelocityVerlet(atoms, timestep=dt)
    else:
        from ase.constraints import FixCom
        from ase.md.langevin import Langevin

        # FixCom instead of Langevin's fixcm, which ASE deprecates as not sampling NVT exactly
        atoms.set_constraint([*atoms.constraints, FixCom()])
        dyn = Langevin(atoms, dt, temperature_K=temperature, friction=friction / units.fs,
                       fixcm=False, rng=rng)  # fmt: skip
    writer = TrajectoryWriter(output, traj_fmt)
    log.parent.mkdir(parents=True, exist_ok=True)
    logger = MDLogger(dyn, atoms, str(log), header=True, mode="w")
    times: list[float] = []
    totals: list[float] = []

    def record() -> None:
        times.append(dyn.get_time() / (1000 * units.fs))
        totals.append(atoms.calc.conserved_energy(atoms))

    dyn.attach(writer.write, interval=interval, atoms=atoms)
    dyn.attach(logger, interval=interval)
    dyn.attach(record, interval=1)
    try:
        dyn.run(steps)
    finally:
        writer.close()
        getattr(logger, "close", lambda: None)()  # MDLogger.close exists from ASE 3.23
    n = len(atoms)
    summary = (f"{ensemble.value}: {steps} steps of {timestep:g} fs, final T = "
               f"{atoms.get_temperature():.1f} K")  # fmt: skip
    if ensemble == Ensemble.nve:
        summary += f", energy drift {energy_drift(np.array(times), np.array(totals), n):+.4f} " \
                   "meV/atom/ps"  # fmt: skip
    typer.echo(summary)
    typer.echo(f"wrote {output} ({writer.frames} frames) and {log}")
