"""Training steps by CUDA graph replay (config ``cuda_graphs``): :class:`CapturedTrainingStep`.

Why: on a GPU a force-field training step of these models is bound by kernel launches
(2,300-2,900 per step, docs/performance-details.md), not by arithmetic. The forward pass,
the forces' backward, the loss and the backward to the weights are captured once per size
bucket and replayed; the optimiser and scheduler steps stay eager.

Each batch is padded by the graph backend (``pad``) to its bucket; targets get zero rows and the
losses and MAEs are averaged over the real rows only (:class:`~alignn_core.training.losses
.RowMasks`), so a replayed step computes the eager step's loss and gradients (float rounding
aside). Gradients accumulate into the parameters' own ``.grad`` tensors (zeroed inside the
graph), which the optimiser reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from alignn_core.cuda_graphs import (
    Capture,
    CaptureCache,
    CountsReplays,
    Outputs,
    PaddedGraph,
    cuda_capture,
)
from alignn_core.data.samples import ATOM_TARGETS, Batch
from alignn_core.training.losses import LossResult, RowMasks

Losses = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, RowMasks],
                  LossResult]  # fmt: skip
"""``(output, targets, atoms_per_graph, masks) -> LossResult`` (the trainer's loss settings)."""


def padded_targets(
    targets: dict[str, torch.Tensor], padded: PaddedGraph, num_graphs: int, num_atoms: int
) -> tuple[dict[str, torch.Tensor], RowMasks]:
    """Targets with zero rows appended up to the padded graph's rows, and the row masks."""
    grown = {}
    for name, value in targets.items():
        rows = padded.nodes if name in ATOM_TARGETS else padded.graphs
        filled = value.new_zeros((rows, *value.shape[1:]))
        filled[: value.shape[0]] = value
        grown[name] = filled
    graphs = torch.zeros(padded.graphs)
    graphs[:num_graphs] = 1
    atoms = torch.zeros(padded.nodes)
    atoms[:num_atoms] = 1
    return grown, RowMasks(graphs=graphs, atoms=atoms)


class CapturedTrainingStep(CountsReplays):
    """Forward, loss and backward of a training step, by replay of a CUDA graph per bucket.

    ``step(batch)`` (a batch on the host) returns the step's :class:`LossResult` (detached) with
    the gradients in ``.grad``; the caller then steps the optimiser. At most ``max_captures``
    buckets are kept, least recently used first. If capturing fails, a warning says why and
    every later step runs ``eager(batch)`` instead.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        pad: Callable[[object], PaddedGraph],
        losses: Losses,
        eager: Callable[[Batch], LossResult],
        device: torch.device,
        *,
        max_captures: int = 16,
        capture: Capture = cuda_capture,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self._pad = pad
        self._losses = losses
        self._eager = eager
        self._cache = CaptureCache(device, max_captures=max_captures, capture=capture,
                                   fallback="training eagerly")  # fmt: skip

    def __call__(self, batch: Batch) -> LossResult:
        outputs = None
        if not self._cache.failed:
            padded = self._pad(batch.graph)
            num_atoms = int(batch.graph.atoms_per_graph().sum())
            targets, masks = padded_targets(batch.targets, padded, batch.graph.num_graphs,
                                            num_atoms)  # fmt: skip
            key = (padded.bucket, tuple((k, tuple(v.shape)) for k, v in sorted(targets.items())))
            inputs = {"graph": padded.graph, "targets": targets, "masks": masks}
            outputs = self._cache.replay(key, inputs, self._step)
        if outputs is None:
            return self._eager(batch)
        return _result(outputs)

    def _step(self, static: dict[str, Any]) -> Callable[[], Outputs]:
        """What a bucket captures: zeroed gradients, forward, masked losses, backward."""
        graph, targets, masks = static["graph"], static["targets"], static["masks"]

        def run() -> Outputs:
            self.optimizer.zero_grad(set_to_none=False)
            result = self._losses(self.model(graph), targets, graph.atoms_per_graph(), masks)
            result.total.backward()
            return {"total": result.total.detach(),
                    **{f"term:{k}": v for k, v in result.terms.items()},
                    **{f"mae:{k}": v for k, v in result.maes.items()}}  # fmt: skip

        return run


def _result(outputs: Outputs) -> LossResult:
    """A :class:`LossResult` of copies of a replay's outputs (the next replay overwrites them)."""
    terms = {k.removeprefix("term:"): v.clone() for k, v in outputs.items() if k[:5] == "term:"}
    maes = {k.removeprefix("mae:"): v.clone() for k, v in outputs.items() if k[:4] == "mae:"}
    return LossResult(total=outputs["total"].clone(), terms=terms, maes=maes)
