#!/usr/bin/env python
"""Where a training step's time goes: torch.profiler over the benchmark's own step.

    python tools/bench/profile_step.py --config config.json --device cuda --steps 3

Builds exactly what ``ours_worker.py``'s ``train`` row times (prebuilt mlearn Cu graphs, batch 5,
forces through the double backward, AdamW), runs warm-up steps, then profiles ``--steps`` steps
and prints the operators with the most self time (device time on CUDA), how many kernels a step
launches, and wall seconds per step. On a GPU these sizes are launch-bound when the kernel count
times a few microseconds approaches the step time; that number is what decides whether fusing
operators or larger kernels would pay.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ours_worker
from worker_protocol import synchronize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config_reduced.json", help="examples/mlearn-cu file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = ours_worker.DEVICE = torch.device(args.device)
    batch = 5
    _, records, graphs, model, collate = ours_worker._training_setup(
        batch * (args.steps + 2), args.config
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    energy = torch.tensor([float(r.target.reshape(-1)[0]) for r in records]).to(device)
    forces = [torch.as_tensor(r.forces, dtype=torch.float32).to(device) for r in records]

    def step(first: int) -> None:
        index = list(range(first, first + batch))
        output = model(collate([graphs[i] for i in index]).to(device))
        loss = torch.nn.functional.l1_loss(output["out"].reshape(-1), energy[index])
        loss = loss + 10.0 * torch.nn.functional.l1_loss(
            output["grad"], torch.cat([forces[i] for i in index])
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for first in (0, batch):  # warm-up: allocator, kernels, autograd graph shapes
        step(first)
    activities = [torch.profiler.ProfilerActivity.CPU]
    cuda = device.type == "cuda"
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    synchronize(device)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profile:
        for k in range(args.steps):
            step(batch * (2 + k))
        synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    events = profile.key_averages()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=args.rows))
    if cuda:
        launched = [e for e in profile.events() if e.device_type.name == "CUDA"]
        kernels = len(launched) / args.steps
        busy = sum(e.self_device_time_total for e in events) / 1e6 / args.steps
        print(f"kernels per step: {kernels:.0f}; device busy {busy:.4f} s per step")
    print(f"{args.config} on {device}: {seconds:.4f} s per step (profiler on)")


if __name__ == "__main__":
    main()
