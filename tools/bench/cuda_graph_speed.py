#!/usr/bin/env python
"""CUDA graph replay against eager calls of the same model, on a GPU (ours only).

    python tools/bench/cuda_graph_speed.py --out bench/   # writes cuda_graph_speed.{json,md}

For the benchmark's Si cells (64, 512, 4,096 atoms; a batch of 32 8-atom cells) and both mlearn
Cu architectures (``config_reduced.json``, upstream's ``config.json``), float32, random weights:
seconds per energy + forces + stress call eager (graph already on the GPU) and replayed (graph
on the host, padded and copied every call, as a calculator does), the first replayed call's cost
(padding, warm-up and capture), and the largest difference between the two results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ours_worker  # applies the allocator policy before torch loads
import torch
from gpu_report import gpu_machine, write_results
from run_bench import silicon_json

CASES = (("Si 64", 64, 1), ("Si 512", 512, 1), ("Si 4096", 4096, 1), ("32 x Si 8", 8, 32))


def timed(call, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(config_name: str, spec: str, batch: int, repeats: int) -> dict:
    from alignn_torch.graphs.backend import build_graph
    from alignn_torch.graphs.graph import collate_graphs
    from alignn_torch.model.cuda_graphs import CapturedForward

    from alignn_core.plugins import get_registry

    config = ours_worker._config(config_name, inference=True)
    torch.manual_seed(0)
    model = get_registry().models[config.model.name].build(config.model).cuda().eval()
    cells = ours_worker._structures(spec)[:batch]
    host = collate_graphs([build_graph(s, config.graph_settings) for s in cells])
    device_graph = host.to("cuda")

    def eager():
        with torch.no_grad():
            return model(device_graph, compute_stress=True)

    runner = CapturedForward(model)
    torch.cuda.synchronize()
    start = time.perf_counter()
    first = runner(host)
    torch.cuda.synchronize()
    capture_seconds = time.perf_counter() - start
    reference = eager()
    difference = {key: float((first[key] - reference[key]).abs().max()) for key in reference}
    timed(eager, 3)
    eager_s = statistics.median(timed(eager, repeats))
    replay_s = statistics.median(timed(lambda: runner(host), repeats))
    return {"atoms": host.num_nodes, "edges": host.num_edges,
            "triplets": int(host.lg_src.shape[0]), "eager_s": eager_s, "replay_s": replay_s,
            "speedup": eager_s / replay_s, "first_call_s": capture_seconds,
            "max_abs_difference": difference}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    inputs = Path(tempfile.mkdtemp(prefix="cuda_graph_speed_"))
    ours_worker.DEVICE = torch.device("cuda")
    rows = []
    for config_name in ("config_reduced.json", "config.json"):
        for label, n_atoms, copies in CASES:
            spec = silicon_json(inputs / f"si{n_atoms}x{copies}.json", n_atoms, copies)
            row = {"config": config_name, "case": label,
                   **measure(config_name, spec, copies, args.repeats)}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = ["| config | case | atoms | eager ms | replay ms | speedup | first call ms | "
             "max abs diff (forces) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        table.append(f"| {r['config']} | {r['case']} | {r['atoms']} | {1e3 * r['eager_s']:.2f} | "
                     f"{1e3 * r['replay_s']:.2f} | {r['speedup']:.2f}x | "
                     f"{1e3 * r['first_call_s']:.0f} | "
                     f"{r['max_abs_difference']['grad']:.1e} |")  # fmt: skip
    write_results(args.out, "cuda_graph_speed", gpu_machine(repeats=args.repeats), rows,
                  "float32, medians", table)  # fmt: skip


if __name__ == "__main__":
    main()
