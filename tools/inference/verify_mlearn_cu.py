"""Measure what docs/inference.md reports for a force field trained on mlearn Cu.

    python tools/inference/verify_mlearn_cu.py MODEL_DIR --out docs [--steps 2000]

1. NVE MD of a 108-atom fcc Cu cell (3×3×3 conventional, a from the data set), velocities drawn
   at 2×300 K (equipartition brings the system to ~300 K), velocity Verlet at 1 fs through
   ``ALIGNNCalculator`` with neighbour-list reuse. Energy drift = least-squares slope of the
   conserved energy, meV/atom/ps; also the RMS fluctuation and the largest step-to-step jump.
   The conserved energy is kinetic + E, except for a model trained with ``force_mult_natoms``:
   its forces are -N dE/dx, so the dynamics conserves kinetic + N·E (both are reported).
   Plot: ``OUT/inference-nve-cu.png``.
2. Lattice constant of fcc Cu from the model: Birch-Murnaghan fit (``ase.eos``) of E(V) of the
   perfect 4-atom conventional cell over a = 3.45-3.80 Å; and a ``FrechetCellFilter`` relaxation
   of the same cell, as ``alignn relax --cell`` does.
3. The DFT reference from ``examples/mlearn-cu/id_prop.json``: the one undistorted cubic 108-atom
   cell of the data set (the relaxed fcc cell mlearn strained to build its elastic series).
4. Position relaxations (FIRE, fmax 0.05 eV/Å, 500 steps) of Cu structures from the data set: a
   surface slab, a vacancy cell, a thermal snapshot.
5. Control (``--control``): the same weights and MD on a graph whose topology cannot change at
   300 K (first shell only: cutoff and three-body cutoff 3.2 Å, no ``max_neighbors`` cap; fcc
   Cu's shells are at 2.56 and 3.62 Å), in float64. Any drift left there would be the
   calculator's or the integrator's; the trained graph's drift is the model's discontinuities.

Results go to ``OUT/inference-verification.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "mlearn-cu" / "id_prop.json"


def dft_reference() -> dict:
    """The undistorted cubic 108-atom cell of the data (3×3×3 conventional fcc)."""
    records = json.loads(DATA.read_text())
    found = []
    for record in records:
        lattice = np.asarray(record["atoms"]["lattice_mat"], dtype=float)
        lengths = np.linalg.norm(lattice, axis=1)
        off_diagonal = np.abs(lattice - np.diag(np.diag(lattice))).max()
        if len(record["atoms"]["elements"]) == 108 and np.ptp(lengths) < 1e-6 \
                and off_diagonal < 1e-9:  # fmt: skip
            found.append((record["total_energy"], lengths[0] / 3, record))
    energy, a, record = min(found, key=lambda item: item[0])
    stress = np.asarray(record["stresses"], dtype=float).reshape(-1)[:3]
    return {"id": record["jid"], "a": a, "energy_per_atom": energy, "n_cells": len(found),
            "fmax": float(np.abs(np.asarray(record["forces"])).max()),
            "stress_kB_vasp": stress.tolist()}  # fmt: skip


def records_by_id(ids: list[str]):
    from alignn_core.io.structures import structure_from_jarvis

    records = {r["jid"]: r for r in json.loads(DATA.read_text())}
    return {i: structure_from_jarvis(records[i]["atoms"], i).to_ase() for i in ids}


def topology_key(calc, atoms) -> bytes:
    """Identity of the graph's topology, independent of edge order: the edge set (src, dst,
    image) and which edges may form triplets (``|r| <= three_body_cutoff`` for pure_torch)."""
    from alignn_core.inference.structures import structure_from_atoms

    settings = calc.model.settings
    graph = calc.model.backend.build(structure_from_atoms(atoms), settings)
    limit = settings.triplet_cutoff
    distance = graph.r.double().norm(dim=1).numpy()
    in_triplets = distance <= limit if limit is not None else np.ones(len(distance), bool)
    edges = np.column_stack([graph.src.numpy(), graph.dst.numpy(),
                             graph.shift.numpy().astype(np.int64), in_triplets])  # fmt: skip
    return edges[np.lexsort(edges.T[::-1])].tobytes()


def nve(calc, a: float, steps: int, seed: int = 0) -> dict:
    from ase.build import bulk
    from ase.md.verlet import VelocityVerlet
    from ase.units import fs

    from alignn_core.cli.md_command import energy_drift, thermalize

    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(3)
    thermalize(atoms, 600.0, np.random.default_rng(seed))
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=1.0 * fs)
    t, epot, ekin, keys = [], [], [], []

    def record() -> None:
        t.append(dyn.get_time() / (1000 * fs))
        epot.append(atoms.get_potential_energy())
        ekin.append(atoms.get_kinetic_energy())
        keys.append(topology_key(calc, atoms))

    dyn.attach(record, interval=1)
    start = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - start
    t, epot, ekin = np.array(t), np.array(epot), np.array(ekin)
    n = len(atoms)
    scale = n if getattr(calc.model.config.model, "force_mult_natoms", False) else 1
    total = scale * epot + ekin
    naive = epot + ekin
    temperature = ekin / (1.5 * n * 8.617333262e-5)
    half = len(t) // 2
    # Split each step's change of the conserved energy by whether the topology changed during
    # that step (a capped graph switches neighbours as atoms move, bonds cross the three-body
    # cutoff; the energy is discontinuous there, for upstream's model as for ours). Between
    # switches only integration error is left.
    changed = np.array([keys[i] != keys[i - 1] for i in range(1, len(keys))])
    steps_delta = np.diff(total)
    smooth = steps_delta[~changed]
    return {
        "steps_with_topology_change": int(changed.sum()),
        "energy_change_at_edge_switches_meV_per_atom": float(steps_delta[changed].sum() * 1000 / n),
        "energy_change_between_switches_meV_per_atom": float(smooth.sum() * 1000 / n),
        "largest_step_jump_without_switch_meV_per_atom": float(
            np.abs(smooth).max() * 1000 / n if smooth.size else 0.0
        ),
        "rms_step_change_without_switch_meV_per_atom": float(
            np.sqrt(np.mean(smooth**2)) * 1000 / n if smooth.size else 0.0
        ),
        "n_atoms": n,
        "steps": steps,
        "timestep_fs": 1.0,
        "a": a,
        "potential_scale": scale,
        "drift_meV_per_atom_ps": energy_drift(t, total, n),
        "drift_of_ekin_plus_E_meV_per_atom_ps": energy_drift(t, naive, n),
        "drift_second_half_meV_per_atom_ps": energy_drift(t[half:], total[half:], n),
        "total_rms_meV_per_atom": float(np.std(total) * 1000 / n),
        "total_max_minus_min_meV_per_atom": float(np.ptp(total) * 1000 / n),
        "largest_step_jump_meV_per_atom": float(np.abs(np.diff(total)).max() * 1000 / n),
        "epot_rms_meV_per_atom": float(np.std(scale * epot) * 1000 / n),
        "mean_T_second_half": float(temperature[half:].mean()),
        "seconds_per_step": seconds / max(steps, 1),
        "neighbour_searches": {"reused": calc.reuses, "full": calc.rebuilds},
        "series": {"t_ps": t.tolist(), "epot": epot.tolist(), "ekin": ekin.tolist()},
    }


def lattice_constant(calc, dft_a: float) -> dict:
    from ase.build import bulk
    from ase.eos import EquationOfState
    from ase.optimize import FIRE

    from alignn_core.cli.relax_command import cell_filter

    volumes, energies = [], []
    for a in np.linspace(3.45, 3.80, 15):
        atoms = bulk("Cu", "fcc", a=a, cubic=True)
        atoms.calc = calc
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    eos = EquationOfState(volumes, energies, eos="birchmurnaghan")
    v0, e0, b = eos.fit()
    atoms = bulk("Cu", "fcc", a=dft_a, cubic=True)
    atoms.calc = calc
    opt = FIRE(cell_filter(atoms), logfile=None)
    converged = bool(opt.run(fmax=0.005, steps=300))
    cellpar = atoms.cell.cellpar()
    return {
        "eos_a": float((v0) ** (1 / 3)), "eos_bulk_modulus_GPa": float(b * 160.21766208),
        "eos_e0_per_atom": float(e0 / 4),
        "scan_a": np.linspace(3.45, 3.80, 15).tolist(),
        "scan_e_per_atom": (np.array(energies) / 4).tolist(),
        "cell_relax_converged": converged, "cell_relax_steps": opt.nsteps,
        "cell_relax_abc": cellpar[:3].tolist(), "cell_relax_angles": cellpar[3:].tolist(),
        "cell_relax_a_from_volume": float(atoms.get_volume() ** (1 / 3)),
    }  # fmt: skip


def relaxations(calc) -> list[dict]:
    from ase.optimize import FIRE

    cases = {"37": "8-atom slab", "44": "30-atom slab", "3": "107-atom vacancy cell (thermal)",
             "47": "108-atom thermal snapshot"}  # fmt: skip
    results = []
    for jid, atoms in records_by_id(list(cases)).items():
        atoms.calc = calc
        start_fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
        opt = FIRE(atoms, logfile=None)
        converged = bool(opt.run(fmax=0.05, steps=500))
        fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
        results.append({"id": jid, "what": cases[jid], "n_atoms": len(atoms),
                        "start_fmax": start_fmax, "final_fmax": fmax, "steps": opt.nsteps,
                        "converged": converged})  # fmt: skip
    return results


def plot(result: dict, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["series"]
    t = np.array(series["t_ps"])
    n = result["n_atoms"]
    epot = np.array(series["epot"]) * result["potential_scale"]
    ekin = np.array(series["ekin"])
    total = epot + ekin
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    what = "N·E" if result["potential_scale"] != 1 else "E"
    top.plot(t, (total - total[0]) * 1000 / n, lw=1, label=f"total (kinetic + {what})")
    top.plot(t, (epot - epot[0]) * 1000 / n, lw=0.6, alpha=0.6, label=f"potential ({what})")
    top.set_ylabel("E - E(0) (meV/atom)")
    top.legend(loc="lower left")
    top.set_title(f"NVE, 108-atom fcc Cu, 1 fs ({label}); drift "
                  f"{result['drift_meV_per_atom_ps']:+.3f} meV/atom/ps")  # fmt: skip
    bottom.plot(t, ekin / (1.5 * n * 8.617333262e-5), lw=0.8, color="tab:red")
    bottom.set_ylabel("T (K)")
    bottom.set_xlabel("time (ps)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def control_run(model: Path, workdir: Path) -> Path:
    """A copy of the run directory whose graph is the first neighbour shell, uncapped."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = json.loads((model / "config.json").read_text())
    config.update({"cutoff": 3.2, "three_body_cutoff": 3.2, "max_neighbors": None})
    if "three_body_cutoff" in config.get("model", {}):
        config["model"]["three_body_cutoff"] = 3.2
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "best_model.pt").write_bytes((model / "best_model.pt").read_bytes())
    return workdir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--control", action="store_true", help="also run item 5")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from alignn_core import ALIGNNCalculator

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calc = ALIGNNCalculator(args.model, device="cpu", dtype=args.dtype)
    notes = [str(w.message) for w in caught]
    reference = dft_reference()
    result = {"model": str(args.model), "dtype": args.dtype, "notes": notes,
              "config_model": calc.model.config.model.model_dump(mode="json"),
              "dft": reference}  # fmt: skip
    result["lattice"] = lattice_constant(calc, reference["a"])
    result["relaxations"] = relaxations(calc)
    md = nve(calc, reference["a"], args.steps)
    result["nve"] = md
    args.out.mkdir(parents=True, exist_ok=True)
    plot(md, args.out / "inference-nve-cu.png", args.model.name)
    if args.control:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            control = ALIGNNCalculator(control_run(args.model, Path(tmp) / "control"),
                                       device="cpu", dtype="float64")  # fmt: skip
            result["control_first_shell_float64"] = nve(control, reference["a"], args.steps)
        result["control_first_shell_float64"].pop("series")
    summary = {k: v for k, v in result.items()}
    summary["nve"] = {k: v for k, v in md.items() if k != "series"}
    (args.out / "inference-verification.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
