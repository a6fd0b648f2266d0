"""Training steps by CUDA graph replay (config ``cuda_graphs``): :class:`CapturedTrainingStep`.

Why: on a GPU a force-field training step of these models is bound by kernel launches
(2,300-2,900 per step, docs/performance.md), not by arithmetic. The forward pass, the forces'
backward, the loss and the backward to the weights are captured once per size bucket and
replayed; the optimiser and scheduler steps stay eager.

Each batch is padded by the graph backend (``pad``) to its bucket; targets get zero rows and the
losses and MAEs are averaged over the real rows only (:class:`~alignn_core.training.losses
.RowMasks`), so a replayed step computes the eager step's loss and gradients (float rounding
aside). Gradients accumulate into the parameters' own ``.grad`` tensors (zeroed inside the
graph), which the optimiser reads.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from alignn_core.cuda_graphs import Capture, Outputs, PaddedGraph, copy_tensors, cuda_capture
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


@dataclass
class _Bucket:
    """One capture: the tensors it reads (graph, targets, masks), its outputs, its replay."""

    graph: object
    targets: dict[str, torch.Tensor]
    masks: RowMasks
    outputs: Outputs
    replay: Callable[[], None]


class CapturedTrainingStep:
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
        self.device = device
        self.max_captures = max_captures
        self._capture = capture
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._failed = False
        self.captures_made = 0
        self.replays = 0

    def __call__(self, batch: Batch) -> LossResult:
        if self._failed:
            return self._eager(batch)
        padded = self._pad(batch.graph)
        num_atoms = int(batch.graph.atoms_per_graph().sum())
        targets, masks = padded_targets(batch.targets, padded, batch.graph.num_graphs, num_atoms)
        key = (padded.bucket, tuple((k, tuple(v.shape)) for k, v in sorted(targets.items())))
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._new_bucket(key, padded, targets, masks)
            if bucket is None:
                return self._eager(batch)
        else:
            self._buckets.move_to_end(key)
            copy_tensors(bucket.graph, padded.graph)
            for name, value in targets.items():
                bucket.targets[name].copy_(value)
            copy_tensors(bucket.masks, masks)
        bucket.replay()
        self.replays += 1
        return _result(bucket.outputs)

    def _new_bucket(self, key: Hashable, padded: PaddedGraph, targets, masks) -> _Bucket | None:
        while len(self._buckets) >= self.max_captures:
            self._buckets.popitem(last=False)
        graph = padded.graph.to(self.device)
        targets = {name: value.to(self.device) for name, value in targets.items()}
        masks = RowMasks(graphs=masks.graphs.to(self.device), atoms=masks.atoms.to(self.device))

        def run() -> Outputs:
            self.optimizer.zero_grad(set_to_none=False)
            result = self._losses(self.model(graph), targets, graph.atoms_per_graph(), masks)
            result.total.backward()
            return {"total": result.total.detach(),
                    **{f"term:{k}": v for k, v in result.terms.items()},
                    **{f"mae:{k}": v for k, v in result.maes.items()}}  # fmt: skip

        try:
            outputs, replay = self._capture(run, self.device)
        except RuntimeError as exc:
            warnings.warn(f"CUDA graph capture failed, training eagerly from now on ({exc})",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
            self._failed = True
            self._buckets.clear()
            return None
        self.captures_made += 1
        bucket = _Bucket(graph, targets, masks, outputs, replay)
        self._buckets[key] = bucket
        return bucket


def _result(outputs: Outputs) -> LossResult:
    """A :class:`LossResult` of copies of a replay's outputs (the next replay overwrites them)."""
    terms = {k.removeprefix("term:"): v.clone() for k, v in outputs.items() if k[:5] == "term:"}
    maes = {k.removeprefix("mae:"): v.clone() for k, v in outputs.items() if k[:4] == "mae:"}
    return LossResult(total=outputs["total"].clone(), terms=terms, maes=maes)
