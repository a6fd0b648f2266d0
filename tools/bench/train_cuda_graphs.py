#!/usr/bin/env python
"""Feasibility and speed of CUDA graph replay for force-field *training* steps (GPU, ours only).

    python tools/bench/train_cuda_graphs.py --config config_reduced.json --out bench/

The step of the bench's ``train`` row (batch 5 of mlearn Cu, energy + 10 x force L1, forces by
double backward, AdamW), eager, and with the forward, loss and backward captured per size
bucket (``alignn_torch.graphs.padding``: each batch padded with one inert structure) and
replayed, the optimiser step run eagerly after it. The losses are masked to the real
structures and atoms, so a padded step computes the unpadded step's gradients; the script
checks that on the first batch (largest relative gradient difference) before timing.
Reports seconds per epoch (52 steps) eager, the first replayed epoch (captures included), a
second replayed epoch, and how many buckets the epoch met.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ours_worker  # applies the allocator policy before torch loads
import torch
from gpu_report import gpu_machine, write_results
from worker_protocol import synchronize

from alignn_core import cuda_graphs

FORCE_WEIGHT = 10.0


@dataclass
class _Step:
    """One bucket: static inputs (padded graph, targets, masks), its graph and loss output."""

    graph: object
    energy: torch.Tensor
    forces: torch.Tensor
    graph_mask: torch.Tensor
    atom_mask: torch.Tensor
    replay: object = None
    loss: torch.Tensor | None = None


def masked_loss(model, step: _Step) -> torch.Tensor:
    output = model(step.graph)
    energy_error = (output["out"].reshape(-1) - step.energy).abs() * step.graph_mask
    force_error = (output["grad"] - step.forces).abs() * step.atom_mask
    energy_loss = energy_error.sum() / step.graph_mask.sum()
    force_loss = force_error.sum() / (3 * step.atom_mask.sum())
    return energy_loss + FORCE_WEIGHT * force_loss


def padded_inputs(graphs, energy, forces, index, collate):
    from alignn_torch.graphs.padding import capacity_for, pad_graph

    graph = collate([graphs[i] for i in index])
    capacity = capacity_for(graph)
    padded = pad_graph(graph, capacity)
    b, n = graph.num_graphs, graph.num_nodes
    e = torch.zeros(b + 1)
    e[:b] = energy[index]
    f = torch.zeros(capacity.atoms, 3)
    f[:n] = torch.cat([forces[i] for i in index])
    graph_mask = torch.zeros(b + 1)
    graph_mask[:b] = 1
    atom_mask = torch.zeros(capacity.atoms, 1)
    atom_mask[:n] = 1
    return (b, capacity), padded, (e, f, graph_mask, atom_mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config_reduced.json")
    parser.add_argument("--steps", type=int, default=52)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument(
        "--device",
        default="cuda",
        help="cpu checks the script and the masked gradients only: there the capture is "
        "cuda_graphs.rerun_capture, so its timings mean nothing",
    )
    args = parser.parse_args()
    device = ours_worker.DEVICE = torch.device(args.device)
    capture_fn = cuda_graphs.cuda_capture if device.type == "cuda" else cuda_graphs.rerun_capture
    batch = 5
    _, records, graphs, model, collate = ours_worker._training_setup(
        batch * args.steps, args.config
    )
    model.train()
    energy = torch.tensor([float(r.target.reshape(-1)[0]) for r in records])
    forces = [torch.as_tensor(r.forces, dtype=torch.float32) for r in records]
    batches = [list(range(i, i + batch)) for i in range(0, len(records), batch)]
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    holder = {"optimizer": torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)}
    losses: list[torch.Tensor] = []

    def restart() -> None:
        """Back to the initial weights with a fresh optimiser (parameters keep their storage,
        so captured graphs stay valid)."""
        model.load_state_dict(start_state)
        holder["optimizer"] = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
        losses.clear()

    def eager_step(index):
        optimizer = holder["optimizer"]
        graph = collate([graphs[i] for i in index]).to(device)
        output = model(graph)
        loss = torch.nn.functional.l1_loss(output["out"].reshape(-1), energy[index].to(device))
        loss = loss + FORCE_WEIGHT * torch.nn.functional.l1_loss(
            output["grad"], torch.cat([forces[i] for i in index]).to(device)
        )
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        return loss

    # gradients: eager vs masked padded loss on the first batch (before any optimiser step)
    eager_step(batches[0])
    used = [p for p in model.parameters() if p.grad is not None]  # outputs nobody reads: None
    eager_grads = [p.grad.clone() for p in used]
    _, padded, targets = padded_inputs(graphs, energy, forces, batches[0], collate)
    probe = _Step(padded.to(device), *(t.to(device) for t in targets))
    holder["optimizer"].zero_grad(set_to_none=False)
    masked_loss(model, probe).backward()
    # relative to all gradients together: one parameter whose gradient cancels to ~0 (a
    # LayerNorm bias feeding another LayerNorm) would make a per-parameter ratio meaningless
    difference = torch.cat(
        [(p.grad - g).reshape(-1) for p, g in zip(used, eager_grads, strict=True)]
    )
    worst = float(difference.norm() / torch.cat([g.reshape(-1) for g in eager_grads]).norm())

    def epoch_eager() -> float:
        synchronize(device)
        start = time.perf_counter()
        for index in batches:
            losses.append(eager_step(index).detach())
            holder["optimizer"].step()
        synchronize(device)
        return time.perf_counter() - start

    buckets: dict = {}

    def capture(step: _Step) -> None:
        """Warm-up and capture of zero_grad + forward + masked loss + backward (the optimiser
        step stays eager: AdamW's foreach kernels are few)."""

        def run() -> dict[str, torch.Tensor]:
            holder["optimizer"].zero_grad(set_to_none=False)
            loss = masked_loss(model, step)
            loss.backward()
            return {"loss": loss.detach()}

        outputs, step.replay = capture_fn(run, device)
        step.loss = outputs["loss"]

    def epoch_replayed() -> float:
        synchronize(device)
        start = time.perf_counter()
        for index in batches:
            key, padded, targets = padded_inputs(graphs, energy, forces, index, collate)
            step = buckets.get(key)
            if step is None:
                step = buckets[key] = _Step(padded.to(device), *(t.to(device) for t in targets))
                capture(step)
            else:
                for field in fields(padded):
                    getattr(step.graph, field.name).copy_(getattr(padded, field.name))
                for static, new in zip((step.energy, step.forces, step.graph_mask,
                                        step.atom_mask), targets, strict=True):  # fmt: skip
                    static.copy_(new)
            step.replay()
            losses.append(step.loss.clone())
            holder["optimizer"].step()
        synchronize(device)
        return time.perf_counter() - start

    restart()
    eager_s = [epoch_eager()]
    eager_losses = torch.stack(losses).cpu()
    eager_params = [p.detach().clone() for p in model.parameters()]
    restart()  # the same epoch eagerly again: how far GPU nondeterminism alone moves it
    eager_s.append(epoch_eager())
    again_losses = torch.stack(losses).cpu()
    restart()
    grad_storage = [p.grad.data_ptr() for p in used]
    first_replayed = epoch_replayed()
    replayed_losses = torch.stack(losses).cpu()
    parameter_difference = max(
        float((p.detach() - q).abs().max())
        for p, q in zip(model.parameters(), eager_params, strict=True)
    )
    # every capture must accumulate into the same .grad tensors the optimiser reads
    grads_kept = grad_storage == [p.grad.data_ptr() for p in used]
    replayed_s = [epoch_replayed()]
    row = {"config": args.config, "steps": len(batches), "buckets": len(buckets),
           "relative_grad_difference_first_batch": worst, "grad_tensors_kept": grads_kept,
           "first_epoch_mean_loss": {"eager": float(eager_losses.mean()),
                                     "replayed": float(replayed_losses.mean())},
           "first_epoch_mean_loss_eager_again": float(again_losses.mean()),
           "losses_first_steps": {"eager": eager_losses[:8].tolist(),
                                  "eager_again": again_losses[:8].tolist(),
                                  "replayed": replayed_losses[:8].tolist()},
           "largest_step_loss_difference": {
               "eager_vs_eager_again": float((eager_losses - again_losses).abs().max()),
               "eager_vs_replayed": float((eager_losses - replayed_losses).abs().max())},
           "max_parameter_difference_after_epoch": parameter_difference,
           "eager_s_per_epoch": min(eager_s),
           "replayed_first_epoch_s": first_replayed, "replayed_s_per_epoch": min(replayed_s),
           "speedup": min(eager_s) / min(replayed_s),
           "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30
           if device.type == "cuda" else 0.0}  # fmt: skip
    print(json.dumps(row), flush=True)
    table = ["| config | steps | buckets | eager s/epoch | replayed s/epoch | speedup | first "
             "replayed epoch s | rel. grad diff | epoch-1 mean loss eager / again / replayed | "
             "peak GPU GiB |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| {args.config} | {row['steps']} | {row['buckets']} | "
             f"{row['eager_s_per_epoch']:.3f} | {row['replayed_s_per_epoch']:.3f} | "
             f"{row['speedup']:.2f}x | {first_replayed:.2f} | {worst:.1e} | "
             f"{eager_losses.mean():.4f} / {again_losses.mean():.4f} / "
             f"{replayed_losses.mean():.4f} | "
             f"{row['peak_gpu_memory_gib']:.1f} |"]  # fmt: skip
    stem = "train_cuda_graphs_" + args.config.removesuffix(".json")
    machine = gpu_machine() if device.type == "cuda" else {"device": "cpu (stand-in capture)",
                                                           "torch": torch.__version__,
                                                           "date": "-"}  # fmt: skip
    write_results(args.out, stem, machine, [row], "training steps, float32", table)


if __name__ == "__main__":
    main()
