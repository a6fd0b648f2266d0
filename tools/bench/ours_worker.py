#!/usr/bin/env python
"""Benchmark worker for this implementation (run by ``run_bench.py`` with the dev/nox venv).

Each task does its set-up once per process (cached in :data:`_CACHE`) and then times ONE
repetition of the work, so the driver can interleave repetitions with upstream's worker
(``upstream_worker.py``, same requests, same reply fields). Inputs are the ones upstream's worker
reads: the POSCARs and ``id_prop.json`` of the examples, and Si supercells the driver writes as
JARVIS atoms dicts, so both sides start from identical coordinates.
"""

from __future__ import annotations

import json
import sys
import tempfile
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


def _config(name: str, inference: bool = False):
    """A resolved config from ``examples/mlearn-cu/<name>``; inference asks for stress too and
    uses per-structure forces (no ``force_mult_natoms``) as an MD/relaxation caller would."""
    from alignn_core.config import load_config

    raw = json.loads((REPO / "examples" / "mlearn-cu" / name).read_text())
    if inference:
        raw["model"] = dict(raw["model"], force_mult_natoms=False, stresswise_weight=1.0)
    return load_config(raw).config


def _structures(spec: str) -> list:
    """The structures of a named input set (see ``run_bench.py``: props, mlearn, or a Si JSON)."""
    from alignn_core.io.structures import read_structure, structure_from_jarvis

    if spec == "props":
        return [read_structure(p) for p in sorted((REPO / "examples" / "props").glob("POSCAR*"))]
    if spec == "mlearn":
        records = json.loads((REPO / "examples" / "mlearn-cu" / "id_prop.json").read_text())
        return [structure_from_jarvis(r["atoms"], r["jid"]) for r in records]
    atoms = json.loads(Path(spec).read_text())
    return [structure_from_jarvis(a, spec) for a in atoms]


def task_graph(request: dict[str, Any]) -> dict[str, Any]:
    """Build every graph (neighbour list, line graph, features) of one input set once, as the
    dataset providers do (``build_many``, in one chunk)."""
    from alignn_torch.graphs.backend import TorchGraphBackend

    key = f"graph:{request['structures']}"
    if key not in _CACHE:
        structures = _structures(request["structures"])[: request.get("limit")]
        _CACHE[key] = (structures, _config("config.json").graph_settings)
    structures, settings = _CACHE[key]
    start = time.perf_counter()
    edges = sum(int(g.src.shape[0]) for g in TorchGraphBackend().build_many(structures, settings))
    return {"seconds": time.perf_counter() - start, "items": len(structures),
            "atoms": sum(s.n_atoms for s in structures), "edges": edges}  # fmt: skip


def _training_setup(n_structures: int, config_name: str):
    from alignn_torch.graphs.backend import build_graph
    from alignn_torch.graphs.graph import collate_graphs

    from alignn_core.io.id_prop import DataKeys, read_dataset
    from alignn_core.plugins import get_registry

    config = _config(config_name)
    records = read_dataset(REPO / "examples" / "mlearn-cu", DataKeys.from_config(config),
                           config.model.loss_weights())[:n_structures]  # fmt: skip
    graphs = [build_graph(r.structure, config.graph_settings) for r in records]
    torch.manual_seed(0)
    model = get_registry().models[config.model.name].build(config.model).to(DEVICE)
    return config, records, graphs, model, collate_graphs


def task_train(request: dict[str, Any]) -> dict[str, Any]:
    """``steps`` optimiser steps (batch ``batch_size``) on prebuilt mlearn Cu graphs.

    The step is what a training epoch repeats: collate (on the CPU, then one copy to the
    device, as a data loader feeds a GPU), forward with forces (double backward), energy + 10 x
    force L1 loss, backward, AdamW step. Graph building is not timed (the cache row covers it);
    one untimed warm-up step first.
    """
    steps, batch_size = int(request["steps"]), int(request["batch_size"])
    _, records, graphs, model, collate = _training_setup(steps * batch_size, request["config"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    batches = [list(range(i, i + batch_size)) for i in range(0, len(records), batch_size)]
    energy = torch.tensor([float(r.target.reshape(-1)[0]) for r in records], dtype=torch.float32)
    forces = [torch.as_tensor(r.forces, dtype=torch.float32) for r in records]
    model.train()

    def step(index: list[int]) -> torch.Tensor:
        output = model(collate([graphs[i] for i in index]).to(DEVICE))
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


def _inference_setup(structures: str, batch: int):
    from alignn_torch.graphs.backend import build_graph
    from alignn_torch.graphs.graph import collate_graphs

    from alignn_core.plugins import get_registry

    key = f"infer:{structures}:{batch}"
    if key not in _CACHE:
        config = _config("config_reduced.json", inference=True)
        if "model" not in _CACHE:
            torch.manual_seed(0)
            model = get_registry().models[config.model.name].build(config.model)
            model = model.to(DEVICE).eval()
            _CACHE["model"] = (model, config)
        cells = _structures(structures)[:batch]
        graph = collate_graphs([build_graph(s, config.graph_settings) for s in cells]).to(DEVICE)
        _CACHE[key] = (graph, cells)
    return _CACHE["model"], _CACHE[key]


def _exported(model, config, mode: str):
    """The exported module (``alignn_torchscript.export.exported_module``) of the benchmark
    model, scripted and saved/loaded as a host loads the file (one load per ``mode``), or left
    eager (``exported_eager``): the same entry point (``forward_tensors_z`` from a neighbour
    list) with and without TorchScript."""
    if mode not in _CACHE:
        from alignn_torchscript.export import export_run, exported_module

        if mode != "exported_eager":
            work = Path(tempfile.mkdtemp(prefix="bench_ts_"))
            (work / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
            torch.save({k: v.cpu() for k, v in model.state_dict().items()},
                       work / "best_model.pt")  # fmt: skip
            path = export_run(work, work / "ours.pt").path
            _CACHE[mode] = torch.jit.load(str(path), map_location=DEVICE)
        else:
            _CACHE[mode] = exported_module(model, config, torch.float32).to(DEVICE)
    return _CACHE[mode]


def _captured(model):
    """The CUDA-graph runner of the benchmark model (one per process; it keeps a capture per
    size bucket, so each structure set is captured once, in the row's warm-up)."""
    if "captured" not in _CACHE:
        from alignn_torch.model.cuda_graphs import CapturedForward

        _CACHE["captured"] = CapturedForward(model, max_captures=8)
    return _CACHE["captured"]


def _neighbor_inputs(structures: str, index: int, cell, settings) -> tuple[torch.Tensor, ...]:
    """What a host passes to ``forward_tensors_z``: geometry and our capped neighbour list of
    the ``index``-th cell of ``structures``."""
    from alignn_torch.graphs.strategies import neighbor_list

    key = f"ts-inputs:{structures}:{index}"
    if key not in _CACHE:
        edges, _ = neighbor_list(cell, settings)
        arrays = (cell.positions, cell.cell, cell.numbers, edges.src, edges.dst, edges.shift)
        _CACHE[key] = tuple(torch.from_numpy(a).to(DEVICE) for a in arrays)
    return _CACHE[key]


def task_infer(request: dict[str, Any]) -> dict[str, Any]:
    """One energy+forces+stress evaluation.

    ``mode``: ``eager`` evaluates a prebuilt (batched) graph; ``cuda_graph`` the same graph
    from the host by CUDA graph replay (padding and copy to the device timed); ``torchscript`` and
    ``exported_eager`` call the exported module from a neighbour list (single structure: it
    filters, caps and builds its line graph itself; a batch is one call per cell, in turn),
    scripted (graph executor optimisation off, as docs/export.md recommends) or not;
    ``torchscript_default`` scripted with the executor's optimisation on (TorchScript's
    default, what upstream's export runs with).
    """
    (model, config), (graph, cells) = _inference_setup(request["structures"], request["batch"])
    if request["mode"] == "cuda_graph":
        runner = _captured(model)
        host_graph = graph.to("cpu")  # what a calculator hands over: padded and copied per call
        synchronize(DEVICE)
        start = time.perf_counter()
        output = runner(host_graph)
        synchronize(DEVICE)
        seconds = time.perf_counter() - start
        assert output["stresses"].shape[0] == len(cells)
        return {"seconds": seconds, "items": len(cells)}
    if request["mode"] in ("torchscript", "torchscript_default", "exported_eager"):
        module = _exported(model, config, request["mode"])
        per_cell = [_neighbor_inputs(request["structures"], i, cell, config.graph_settings)
                    for i, cell in enumerate(cells)]  # fmt: skip
        synchronize(DEVICE)
        start = time.perf_counter()
        # a loaded module keeps the executor of its first call, so each mode has its own copy
        with torch.jit.optimized_execution(request["mode"] == "torchscript_default"):
            for inputs in per_cell:
                module.forward_tensors_z(*inputs, True)
        synchronize(DEVICE)
        return {"seconds": time.perf_counter() - start, "items": len(cells)}
    synchronize(DEVICE)
    start = time.perf_counter()
    output = model(graph, compute_stress=True)
    synchronize(DEVICE)
    seconds = time.perf_counter() - start
    assert output["stresses"].shape[0] == len(cells)
    return {"seconds": seconds, "items": len(cells)}


def task_cache(request: dict[str, Any]) -> dict[str, Any]:
    """Open the LMDB cache of the first ``records`` mlearn Cu records in ``directory``, then
    read every sample once: ``phase: cold`` builds it, ``phase: warm`` reopens it with
    ``read_existing`` (manifest and per-record hash check). The driver runs each phase in a
    fresh process, as a new training run would (and LMDB forbids reopening an environment in
    the process that still holds it)."""
    from alignn_lmdb.provider import LmdbDatasetProvider

    from alignn_core.io.id_prop import DataKeys, read_dataset
    from alignn_core.plugins import get_registry

    config = _config("config_reduced.json")
    records = read_dataset(REPO / "examples" / "mlearn-cu", DataKeys.from_config(config),
                           config.model.loss_weights())[: int(request["records"])]  # fmt: skip
    backend = get_registry().graph_backends["torch"]
    start = time.perf_counter()
    dataset = LmdbDatasetProvider(workers=1).open(
        records, backend=backend, settings=config.graph_settings, split="train",
        cache_dir=Path(request["directory"]), read_existing=request["phase"] == "warm",
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
