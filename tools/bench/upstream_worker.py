#!/usr/bin/env python
"""Benchmark worker for upstream ALIGNN 2026.8.11 (run with the upstream venv's python).

Mirror of ``ours_worker.py``: the same requests and reply fields, the same inputs, upstream's
public entry points (``build_pure_torch_graph``, ``batch_torch_graph_pairs``,
``ALIGNNAtomWisePure``, ``pure_lmdb_dataset.get_torch_dataset``). It never imports our
packages. Upstream's ``pure_torch`` builder is used because its ``k-nearest`` builder and DGL
model need DGL, which does not install beside torch 2.13; matscipy is not installed, so the
topology comes from upstream's own torch neighbour search (its fallback).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_protocol import apply_allocator_policy, serve, synchronize

apply_allocator_policy()  # before torch allocates: ALIGNN_MALLOC, set by run_bench.py
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
_CACHE: dict[str, Any] = {}
DEVICE = torch.device("cpu")  # set from argv by __main__ (run_bench.py --device)


def _config(name: str) -> dict[str, Any]:
    return json.loads((REPO / "examples" / "mlearn-cu" / name).read_text())


def _atoms(spec: str) -> list:
    from jarvis.core.atoms import Atoms

    if spec == "props":
        return [Atoms.from_poscar(str(p))
                for p in sorted((REPO / "examples" / "props").glob("POSCAR*"))]  # fmt: skip
    if spec == "mlearn":
        records = json.loads((REPO / "examples" / "mlearn-cu" / "id_prop.json").read_text())
        return [Atoms.from_dict(r["atoms"]) for r in records]
    return [Atoms.from_dict(a) for a in json.loads(Path(spec).read_text())]


def _build(atoms, config: dict[str, Any]):
    from alignn.torch_graph_builder import build_pure_torch_graph

    return build_pure_torch_graph(
        atoms=atoms,
        two_body_cutoff=float(config["cutoff"]),
        three_body_cutoff=float(config.get("three_body_cutoff", 3.5)),
        max_neighbors=config["max_neighbors"],
        atom_features=config["atom_features"],
        compute_line_graph=True,
    )


def task_graph(request: dict[str, Any]) -> dict[str, Any]:
    key = f"graph:{request['structures']}"
    if key not in _CACHE:
        _CACHE[key] = _atoms(request["structures"])[: request.get("limit")]
    atoms, config = _CACHE[key], _config("config.json")
    start = time.perf_counter()
    edges = sum(int(_build(a, config)[0].src.shape[0]) for a in atoms)
    return {"seconds": time.perf_counter() - start, "items": len(atoms),
            "atoms": sum(a.num_atoms for a in atoms), "edges": edges}  # fmt: skip


def _model(config: dict[str, Any], **changes: Any):
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

    torch.manual_seed(0)
    model = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**dict(config["model"], **changes)))
    return model.to(DEVICE)


def _batch(atoms: list, config: dict[str, Any]):
    from alignn.torch_graph_builder import batch_torch_graph_pairs

    pairs = [_build(a, config) for a in atoms]
    lattice = torch.stack([torch.tensor(a.lattice_mat, dtype=torch.float32) for a in atoms])
    g, lg = pairs[0] if len(pairs) == 1 else batch_torch_graph_pairs(pairs)
    return g.to(DEVICE), lg.to(DEVICE), lattice.to(DEVICE)


def task_train(request: dict[str, Any]) -> dict[str, Any]:
    from alignn.torch_graph_builder import batch_torch_graph_pairs

    steps, batch_size = int(request["steps"]), int(request["batch_size"])
    config = _config(request["config"])
    records = json.loads((REPO / "examples" / "mlearn-cu" / "id_prop.json").read_text())
    records = records[: steps * batch_size]
    from jarvis.core.atoms import Atoms

    atoms = [Atoms.from_dict(r["atoms"]) for r in records]
    pairs = [_build(a, config) for a in atoms]
    lattices = [torch.tensor(a.lattice_mat, dtype=torch.float32) for a in atoms]
    model = _model(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    batches = [list(range(i, i + batch_size)) for i in range(0, len(records), batch_size)]
    energy = torch.tensor([float(r["total_energy"]) for r in records], dtype=torch.float32)
    forces = [torch.tensor(r["forces"], dtype=torch.float32) for r in records]

    def step(index: list[int]) -> torch.Tensor:
        g, lg = batch_torch_graph_pairs([pairs[i] for i in index])
        lattice = torch.stack([lattices[i] for i in index]).to(DEVICE)
        output = model((g.to(DEVICE), lg.to(DEVICE), lattice))
        loss = torch.nn.functional.l1_loss(output["out"].reshape(-1), energy[index].to(DEVICE))
        loss = loss + 10.0 * torch.nn.functional.l1_loss(
            output["grad"], torch.cat([forces[i] for i in index]).to(DEVICE)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    step(batches[0])
    synchronize(DEVICE)
    start = time.perf_counter()
    for index in batches:
        loss = step(index)
    synchronize(DEVICE)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "items": len(records), "steps": len(batches),
            "final_loss": float(loss.detach())}  # fmt: skip


def _exported(model, config: dict[str, Any]):
    """Upstream's TorchScript export of the benchmark model: its ``export_torchscript.py``
    console script on a run directory holding these weights and config (exported once)."""
    if "torchscript" not in _CACHE:
        import subprocess
        import tempfile

        name = "export_torchscript.py"
        places = [Path(sys.executable).parent, *(Path(p) / "bin" for p in sys.path if p)]
        script = next(place / name for place in places if (place / name).exists())
        work = Path(tempfile.mkdtemp(prefix="bench_ts_upstream_"))
        model_config = dict(config["model"], force_mult_natoms=False, stresswise_weight=1.0)
        (work / "config.json").write_text(json.dumps(dict(config, model=model_config)))
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, work / "best_model.pt")
        subprocess.run([sys.executable, str(script), "--model-dir", str(work), "--out",
                        str(work / "upstream.pt"), "--atom-features", config["atom_features"]],
                       check=True, capture_output=True)  # fmt: skip
        _CACHE["torchscript"] = torch.jit.load(str(work / "upstream.pt"), map_location=DEVICE)
    return _CACHE["torchscript"]


def _neighbor_inputs(
    structures: str, index: int, config: dict[str, Any]
) -> tuple[torch.Tensor, ...]:
    """``forward_tensors_z``'s inputs for the ``index``-th cell of ``structures`` from upstream's
    own neighbour list, typed as upstream's smoke test passes them (float32 positions
    requiring grad, float shifts)."""
    key = f"ts-inputs:{structures}:{index}"
    if key not in _CACHE:
        if f"atoms:{structures}" not in _CACHE:  # read once for all the cells of a batch
            _CACHE[f"atoms:{structures}"] = _atoms(structures)
        atoms = _CACHE[f"atoms:{structures}"][index]
        g, _ = _build(atoms, config)
        _CACHE[key] = tuple(t.to(DEVICE) for t in (
            torch.tensor(atoms.cart_coords, dtype=torch.float32),
            torch.tensor(atoms.lattice_mat, dtype=torch.float32),
            torch.tensor(atoms.atomic_numbers, dtype=torch.long), g.src, g.dst,
            g.edata["images"].float()))  # fmt: skip
    return _CACHE[key]


def task_infer(request: dict[str, Any]) -> dict[str, Any]:
    """Mirror of ours: ``eager`` on a prebuilt graph; ``torchscript``: upstream's export called
    from a neighbour list (its default graph-executor settings, what its hosts run), one call
    per cell of a batch."""
    if request["mode"] not in ("eager", "torchscript"):
        return {"error": f"no upstream counterpart of mode {request['mode']!r}"}
    config = _config("config_reduced.json")
    if "model" not in _CACHE:
        _CACHE["model"] = _model(config, force_mult_natoms=False, stresswise_weight=1.0).eval()
    if request["mode"] == "torchscript":
        module = _exported(_CACHE["model"], config)
        per_cell = [_neighbor_inputs(request["structures"], i, config)
                    for i in range(int(request["batch"]))]  # fmt: skip
        synchronize(DEVICE)
        start = time.perf_counter()
        for positions, *rest in per_cell:
            module.forward_tensors_z(positions.detach().requires_grad_(True), *rest, True)
        synchronize(DEVICE)
        return {"seconds": time.perf_counter() - start, "items": len(per_cell)}
    key = f"infer:{request['structures']}:{request['batch']}"
    if key not in _CACHE:
        _CACHE[key] = _batch(_atoms(request["structures"])[: request["batch"]], config)
    model, graph = _CACHE["model"], _CACHE[key]
    synchronize(DEVICE)
    start = time.perf_counter()
    output = model(graph)
    synchronize(DEVICE)
    seconds = time.perf_counter() - start
    stress = output["stresses"]
    items = int(request["batch"])
    assert stress.numel() >= 9 * items, stress.shape
    return {"seconds": seconds, "items": items}


def task_cache(request: dict[str, Any]) -> dict[str, Any]:
    """Upstream's LMDB for the same records: ``phase: cold`` builds it, ``phase: warm`` calls
    ``get_torch_dataset(read_existing=True)`` on it; then one pass of reads."""
    from alignn.pure_lmdb_dataset import get_torch_dataset

    config = _config("config_reduced.json")
    records = json.loads((REPO / "examples" / "mlearn-cu" / "id_prop.json").read_text())
    records = records[: int(request["records"])]
    work = Path(request["directory"])
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # upstream writes its *_data_range files into output_dir and the CWD
    start = time.perf_counter()
    dataset = get_torch_dataset(
        dataset=records, id_tag="jid", target="total_energy", target_grad="forces",
        neighbor_strategy="pure_torch", atom_features=config["atom_features"],
        cutoff=float(config["cutoff"]), max_neighbors=config["max_neighbors"],
        three_body_cutoff=3.5, output_dir=str(work), tmp_name=str(work / "train_data"),
        read_existing=request["phase"] == "warm", map_size=1e9,
    )  # fmt: skip
    opened = time.perf_counter() - start
    start = time.perf_counter()
    for position in range(len(dataset)):
        dataset[position]
    return {"seconds": opened, "reads_s": time.perf_counter() - start, "items": len(records)}


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    DEVICE = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cpu")
    serve({"graph": task_graph, "train": task_train, "infer": task_infer, "cache": task_cache})
