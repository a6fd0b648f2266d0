#!/usr/bin/env python
"""ASE molecular dynamics on a GPU: MD steps per second with and without CUDA graphs.

    python tools/bench/md_cuda_graphs.py --out bench/   # writes md_cuda_graphs.{json,md}

What ``alignn md --device cuda [--cuda-graphs]`` does per step, timed whole: velocity Verlet
(ASE), the neighbour search on the CPU (with the calculator's default reuse), padding and copy
to the GPU, energy + forces + stress. fcc Cu supercells at 300 K, random weights of each mlearn
Cu architecture (speed does not depend on the weights), float32, one CPU thread. The two
calculators alternate in rounds, so drifting load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ours_worker  # applies the allocator policy before torch loads
import torch
from gpu_report import gpu_machine, write_results

REPO = Path(__file__).resolve().parents[2]
REPS = {32: (2, 2, 2), 108: (3, 3, 3), 500: (5, 5, 5), 2048: (8, 8, 8)}


def random_run(config_name: str, directory: Path) -> Path:
    """A run directory of the config's architecture with seeded random weights."""
    from alignn_core.plugins import get_registry

    config = ours_worker._config(config_name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
    torch.manual_seed(0)
    module = get_registry().models[config.model.name].build(config.model)
    torch.save(module.state_dict(), directory / "best_model.pt")
    return directory


def md_rate(run: Path, atoms_count: int, cuda_graphs: bool, warmup: int, steps: int) -> dict:
    import warnings

    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    from ase.units import fs

    from alignn_core.ase import ALIGNNCalculator

    atoms = bulk("Cu", "fcc", a=3.6164, cubic=True) * REPS[atoms_count]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # force_mult_natoms: conserved quantity is N*E (known)
        atoms.calc = ALIGNNCalculator(run, device="cuda", cuda_graphs=cuda_graphs)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=np.random.default_rng(1))
    dynamics = VelocityVerlet(atoms, timestep=1.0 * fs)
    dynamics.run(warmup)
    torch.cuda.synchronize()
    start = time.perf_counter()
    dynamics.run(steps)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {"steps_per_s": steps / wall, **atoms.calc.summary()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--atoms", type=int, nargs="+", default=[32, 108, 500, 2048])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="md_cuda_graphs_"))
    rows: list[dict[str, Any]] = []
    for config_name in ("config_reduced.json", "config.json"):
        run = random_run(config_name, work / config_name.removesuffix(".json"))
        for count in args.atoms:
            rates: dict[bool, list[float]] = {False: [], True: []}
            counts = None
            for _ in range(args.rounds):
                for graphs in (False, True):
                    result = md_rate(run, count, graphs, args.warmup, args.steps)
                    rates[graphs].append(result["steps_per_s"])
                    counts = result["cuda_graphs"] if graphs else counts
            eager, replayed = statistics.median(rates[False]), statistics.median(rates[True])
            row = {"config": config_name, "atoms": count, "eager_steps_per_s": eager,
                   "cuda_graphs_steps_per_s": replayed, "speedup": replayed / eager,
                   "last_cuda_graph_counts": counts}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = ["| config | atoms | eager steps/s | CUDA graphs steps/s | speedup | captures |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        captures = (r["last_cuda_graph_counts"] or {}).get("captures", "–")
        table.append(f"| {r['config']} | {r['atoms']} | {r['eager_steps_per_s']:.1f} | "
                     f"{r['cuda_graphs_steps_per_s']:.1f} | {r['speedup']:.2f}x | "
                     f"{captures} |")  # fmt: skip
    machine = gpu_machine(steps=args.steps, warmup=args.warmup, rounds=args.rounds)
    caption = (f"ASE NVE, {args.steps} steps after {args.warmup}, median of {args.rounds} "
               "rounds")  # fmt: skip
    write_results(args.out, "md_cuda_graphs", machine, rows, caption, table)


if __name__ == "__main__":
    main()
