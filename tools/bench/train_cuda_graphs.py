#!/usr/bin/env python
"""Feasibility and speed of CUDA graph replay for force-field *training* steps (GPU, ours only).

    python tools/bench/train_cuda_graphs.py --config config_reduced.json --out bench/

The step of the bench's ``train`` row (batch 5 of mlearn Cu, energy + 10 x force L1, forces by
double backward, AdamW), eager, and through the trainer's
:class:`~alignn_core.training.captured_step.CapturedTrainingStep` (``cuda_graphs: true``): each
batch padded to its size bucket, forward, masked losses and backward replayed, the optimiser
step eager. Checks first that the replayed first batch gives the eager gradients (relative
difference over all weights), then reports seconds per epoch (52 steps) eager, the first
replayed epoch (captures included), a second replayed epoch, how many buckets the epoch met,
and the epoch's mean loss eager, eager again (GPU run-to-run spread) and replayed.

The H200 numbers in docs/measurements/train_cuda_graphs_*_h200 came from this script's
previous revision (commit dfdac36), which captured with its own loop of the same steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ours_worker  # applies the allocator policy before torch loads
import torch
from alignn_torch.graphs.backend import TorchGraphBackend
from gpu_report import gpu_machine, write_results
from worker_protocol import synchronize

from alignn_core import cuda_graphs
from alignn_core.config.model import LossWeights
from alignn_core.data.samples import Batch
from alignn_core.training.captured_step import CapturedTrainingStep
from alignn_core.training.losses import compute_losses

WEIGHTS = LossWeights(graph=1.0, forces=10.0, stress=0.0, atomwise=0.0, additional=0.0)


def losses(output, targets, atoms_per_graph, masks):
    """Energy + 10 x force L1, the bench's loss (masked when ``masks`` is given)."""
    return compute_losses(output, targets, WEIGHTS, "l1", False, atoms_per_graph, False, masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config_reduced.json")
    parser.add_argument("--steps", type=int, default=52)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument(
        "--device",
        default="cuda",
        help="cpu checks the script and the gradients only: there the capture is "
        "cuda_graphs.rerun_capture, so its timings mean nothing",
    )
    args = parser.parse_args()
    device = ours_worker.DEVICE = torch.device(args.device)
    capture = cuda_graphs.cuda_capture if device.type == "cuda" else cuda_graphs.rerun_capture
    size = 5
    _, records, graphs, model, collate = ours_worker._training_setup(size * args.steps, args.config)
    model.train()
    batches = []
    for first in range(0, len(records), size):
        index = list(range(first, first + size))
        energy = torch.tensor([[float(records[i].target.reshape(-1)[0])] for i in index])
        forces = torch.cat([torch.as_tensor(records[i].forces, dtype=torch.float32)
                            for i in index])  # fmt: skip
        batches.append(Batch([str(i) for i in index], index, collate([graphs[i] for i in index]),
                             {"target": energy, "forces": forces}))  # fmt: skip
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    epoch_losses: list[torch.Tensor] = []

    def restart() -> None:
        """Initial weights and optimiser state (parameters keep their storage, so captured
        graphs stay valid)."""
        model.load_state_dict(start_state)
        optimizer.state.clear()
        epoch_losses.clear()

    def eager(batch: Batch):
        batch = batch.to(device)
        result = losses(model(batch.graph), batch.targets, batch.graph.atoms_per_graph(), None)
        optimizer.zero_grad(set_to_none=False)
        result.total.backward()
        return result

    replayed = CapturedTrainingStep(model, optimizer, TorchGraphBackend().pad, losses, eager,
                                    device, capture=capture)  # fmt: skip

    # gradients of the first batch (before any optimiser step): eager, then replayed
    eager(batches[0])
    used = [p for p in model.parameters() if p.grad is not None]  # outputs nobody reads: None
    eager_grads = [p.grad.clone() for p in used]
    replayed(batches[0])
    # relative to all gradients together: one parameter whose gradient cancels to ~0 (a
    # LayerNorm bias feeding another LayerNorm) would make a per-parameter ratio meaningless
    difference = torch.cat(
        [(p.grad - g).reshape(-1) for p, g in zip(used, eager_grads, strict=True)]
    )
    worst = float(difference.norm() / torch.cat([g.reshape(-1) for g in eager_grads]).norm())
    grad_storage = [p.grad.data_ptr() for p in used]

    def epoch(step) -> float:
        synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            epoch_losses.append(step(batch).total.detach())
            optimizer.step()
        synchronize(device)
        return time.perf_counter() - start

    restart()
    eager_s = [epoch(eager)]
    eager_losses = torch.stack(epoch_losses).cpu()
    restart()  # the same epoch eagerly again: how far GPU nondeterminism alone moves it
    eager_s.append(epoch(eager))
    again_losses = torch.stack(epoch_losses).cpu()
    restart()
    first_replayed = epoch(replayed)
    replayed_losses = torch.stack(epoch_losses).cpu()
    # every capture must accumulate into the same .grad tensors the optimiser reads
    grads_kept = grad_storage == [p.grad.data_ptr() for p in used]
    replayed_s = [epoch(replayed)]
    row = {"config": args.config, "steps": len(batches), "buckets": replayed.captures_made,
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
