#!/usr/bin/env python
"""Energy+forces+stress evaluations per second: eager vs our TorchScript export vs upstream's.

Run with the dev environment (upstream's export is produced by a subprocess in its own venv)::

    /work/devvenv/bin/python tools/bench/torchscript_speed.py -o bench/results_torchscript.json

What is timed, per periodic Si diamond cell (64, 512, 4096 atoms, rattled), all from the *same*
capped neighbour list (our backend's ``pure_torch`` list, built once and not timed):

* ``eager_forward``: ``model(graph, compute_stress=True)`` on a prebuilt ``AtomGraph`` (line
  graph and features already built: the eager model's best case);
* ``eager_step``: building that graph from positions (our O(N) neighbour search, line graph,
  features) plus the forward, i.e. what an eager MD step costs;
* ``torchscript``: our export's ``forward_tensors_z`` from the edge list (it filters, caps and
  builds the line graph itself);
* ``*_noopt``: the same call with the graph executor's optimisation switched off (see
  :func:`unoptimised`), what ``cpp/alignn_eval.cpp`` and docs/export.md recommend;
* ``upstream_torchscript``: upstream's ``export_torchscript.py --model-dir`` output for the same
  weights, its ``forward_tensors_z`` called as upstream's smoke test calls it (float32
  positions requiring grad, float shifts).

Agreement with eager is reported on a 64-atom Si32C32 cell (``agreement_sic64``): with a single
species ALIGNN's node features barely depend on geometry, so Si forces are float noise and
comparing them would say nothing.

The model is the ``examples/mlearn-cu`` force-field architecture (hidden 256, 2 ALIGNN + 4 GCN
layers, cutoff 8 Å, 13 neighbours, three-body cutoff 3.5 Å) with random weights: speed does not
depend on the weights. Variants are timed round-robin (one call of each per round, so load drift
on a shared machine hits all alike); each timing is the median (and min) of ``--repeats`` rounds
after warm-up calls (the TorchScript profiling executor optimises during its first calls).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_PYTHON = Path("/work/upstream-venv/bin/python")


def model_config() -> dict[str, Any]:
    """The mlearn-cu force-field architecture, pure_torch graph, forces and stress on."""
    example = json.loads((REPO / "examples" / "mlearn-cu" / "config.json").read_text())
    model = dict(example["model"], force_mult_natoms=False, stresswise_weight=1.0)
    keys = ("neighbor_strategy", "cutoff", "max_neighbors", "atom_features")
    return {**{key: example[key] for key in keys}, "three_body_cutoff": 3.5, "model": model}


def silicon(n_atoms: int, seed: int = 0):
    """Rattled conventional-cell Si supercell with ``n_atoms`` (8 * k^3) atoms."""
    from ase.build import bulk

    k = round((n_atoms / 8) ** (1 / 3))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((k, k, k))
    atoms.rattle(0.03, seed=seed)
    assert len(atoms) == n_atoms, n_atoms
    return atoms


def timed_round_robin(
    calls: dict[str, tuple[Callable[[], Any], int]], rounds: int
) -> dict[str, list[float]]:
    """Seconds of each call over ``rounds`` rounds, one call of every variant per round.

    The machine is shared: its load drifts over minutes, and timing one variant after the other
    would hand whichever ran in a quiet minute the win. Interleaving exposes every variant to
    the same drift; the warm-up calls (second element of each value) run first.
    """
    for call, warmup in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (call, _) in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def upstream_export(run: Path, output: Path, python: Path) -> str | None:
    """Run upstream's export script on ``run``; None if it worked, else the reason."""
    script = python.parent / "export_torchscript.py"
    command = [
        str(python),
        str(script),
        "--model-dir",
        str(run),
        "--out",
        str(output),
        "--atom-features",
        "cgcnn",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
    return None


def unoptimised(call: Callable[[Any, str], Any], argument: Any) -> Any:
    """``call(argument, "noopt")`` with the TorchScript graph executor's optimisation off.

    Measured here: with it on, the profiling executor differentiates the model symbolically and
    runs decomposed backward formulas (sigmoid/mul/neg instead of fused aten backward kernels),
    which made evaluations slower than eager. Hosts switch it off with
    ``torch::jit::setGraphExecutorOptimize(false)`` (C++) or this context manager (Python).
    """
    with torch.jit.optimized_execution(False):
        return call(argument, "noopt")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


def compare(got: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative differences of an exported model's output from the eager model's; stress is
    compared with both signs, because the sign convention is part of what is compared."""
    stress = reference["stresses"][0]
    return {
        "energy": relative(got["energy"], reference["energy"][0]),
        "forces": relative(got["forces"], reference["grad"]),
        "stress": relative(got["stress"], stress),
        "stress_negated": relative(-got["stress"], stress),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--upstream-python", type=Path, default=UPSTREAM_PYTHON)
    parser.add_argument("-o", "--output", type=Path, help="JSON file (default: stdout)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from alignn_torch.graphs.backend import build_graph
    from alignn_torch.graphs.strategies import neighbor_list
    from alignn_torchscript.export import export_run, load_trained, resolve_run

    from alignn_core.config import load_config
    from alignn_core.plugins import get_registry
    from alignn_core.structures import Structure

    work = Path(tempfile.mkdtemp(prefix="ts_bench_"))
    config = load_config(model_config()).config
    (work / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2))
    torch.manual_seed(0)
    eager = get_registry().models[config.model.name].build(config.model)
    torch.save(eager.state_dict(), work / "best_model.pt")
    eager, config, _ = load_trained(*resolve_run(work))
    ours_path = export_run(work, work / "ours.pt").path
    upstream_path = work / "upstream.pt"
    upstream_note = "upstream python not found"
    if args.upstream_python.exists():
        upstream_note = upstream_export(work, upstream_path, args.upstream_python)
    # One loaded instance per executor mode: an instance keeps the executor it first ran with.
    ours = {mode: torch.jit.load(str(ours_path)) for mode in ("opt", "noopt")}
    upstream = {}
    if upstream_note is None:
        upstream = {mode: torch.jit.load(str(upstream_path)) for mode in ("opt", "noopt")}
    settings = config.graph_settings

    def inputs(structure: Structure) -> tuple[torch.Tensor, ...]:
        edges, _ = neighbor_list(structure, settings)
        return (
            torch.from_numpy(structure.positions),
            torch.from_numpy(structure.cell),
            torch.from_numpy(structure.numbers),
            torch.from_numpy(edges.src),
            torch.from_numpy(edges.dst),
            torch.from_numpy(edges.shift),
        )

    def call_ours(args: tuple[torch.Tensor, ...], mode: str = "opt") -> dict[str, torch.Tensor]:
        return ours[mode].forward_tensors_z(*args, True)

    def call_upstream(args: tuple[torch.Tensor, ...], mode: str = "opt") -> dict[str, torch.Tensor]:
        positions, cell, numbers, src, dst, shift = args
        positions = positions.float().requires_grad_(True)
        return upstream[mode].forward_tensors_z(
            positions, cell.float(), numbers, src, dst, shift.float(), True
        )

    # Agreement with eager on a two-species cell (see the module docstring).
    sic = silicon(64)
    sic.numbers[::2] = 6
    sic_structure = Structure.from_ase(sic)
    reference = eager(build_graph(sic_structure, settings), compute_stress=True)
    agreement = {"torchscript": compare(call_ours(inputs(sic_structure)), reference)}
    if upstream:
        agreement["upstream_torchscript"] = compare(call_upstream(inputs(sic_structure)), reference)

    rows = []
    for n_atoms in args.sizes:
        structure = Structure.from_ase(silicon(n_atoms))
        graph = build_graph(structure, settings)
        tensors = inputs(structure)
        repeats = args.repeats if n_atoms < 4096 else max(3, args.repeats // 2)
        warmup = 3 if n_atoms < 4096 else 2
        row: dict[str, Any] = {
            "n_atoms": n_atoms,
            "edges": int(tensors[3].shape[0]),
            "triplets": int(graph.lg_src.shape[0]),
            "repeats": repeats,
        }
        calls: dict[str, tuple[Callable[[], Any], int]] = {
            "eager_forward": (lambda g=graph: eager(g, compute_stress=True), 1),
            "eager_step": (
                lambda s=structure: eager(build_graph(s, settings), compute_stress=True),
                1,
            ),
            "torchscript": (lambda t=tensors: call_ours(t), warmup),
            "torchscript_noopt": (lambda t=tensors: unoptimised(call_ours, t), warmup),
        }
        if upstream:
            calls["upstream_torchscript"] = (lambda t=tensors: call_upstream(t), warmup)
            calls["upstream_torchscript_noopt"] = (
                lambda t=tensors: unoptimised(call_upstream, t),
                warmup,
            )
        for name, seconds in timed_round_robin(calls, repeats).items():
            row[f"{name}_s"] = statistics.median(seconds)
            row[f"{name}_min_s"] = min(seconds)
            row[f"{name}_per_s"] = 1.0 / statistics.median(seconds)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    report = {
        "what": "energy+forces+stress evaluations of one periodic Si cell (median seconds)",
        "model": config.model.model_dump(mode="json"),
        "graph": settings.model_dump(mode="json"),
        "threads": args.threads,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        },
        "upstream": upstream_note or "exported with upstream's export_torchscript.py",
        "agreement_sic64": agreement,
        "rows": rows,
    }
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
