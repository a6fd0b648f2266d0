"""Inference by replaying captured CUDA graphs: :class:`CapturedForward`.

Why: on a GPU, one energy + forces + stress call of the model costs about the same from 64 to
4,096 atoms (~10 ms on an H200, docs/performance.md): the GPU waits for ~700 kernel launches
and the Python that issues them, not for arithmetic. A CUDA graph records those launches once
and replays them with one call.

A graph replays fixed shapes, so each call is padded (:func:`~alignn_torch.graphs.padding
.pad_graph`) to its capacity bucket and copied into that bucket's input tensors; one capture
per (structures in the batch, bucket) serves every configuration that fits, e.g. every MD step
of a system until its edge or triplet count leaves the bucket. Captures are kept
least-recently-used first, at most ``max_captures`` of them (each holds the memory of one
forward and backward pass).

What a replay computes is the module's forward on the padded graph, so results equal eager
calls up to float rounding (tested: ``tests/test_cuda.py`` on a GPU, and the padding and
buffer handling on the CPU with :func:`alignn_core.cuda_graphs.rerun_capture`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from alignn_core.cuda_graphs import Capture, Outputs, copy_tensors, cuda_capture
from alignn_torch.graphs.graph import AtomGraph
from alignn_torch.graphs.padding import Capacity, capacity_for, pad_graph

NODE_OUTPUTS = ("grad", "atomwise_pred")
"""Output keys with one row per atom; every other key has one row per structure."""

CHURN_CALLS = 16
"""After this many calls, a runner that captured on more than half of them warns (once): the
sizes change too much for replay to pay (e.g. ``predict`` over many different structures)."""


@dataclass
class _Captured:
    """One bucket's capture: the input tensors it reads, the outputs it writes, its replay."""

    inputs: AtomGraph
    outputs: Outputs
    replay: Callable[[], None]


class CapturedForward:
    """``module(graph, compute_stress=True)`` without autograd, by CUDA graph replay.

    ``module`` is an ``alignn_atomwise_pure`` model (or the smooth one) in eval mode on a CUDA
    device; ``graph`` may live on the CPU (it is copied into the capture's inputs). Outputs are
    the module's, for the real structures only, on the module's device, and are not
    overwritten by later calls. If capturing fails, a warning says why and every later call
    runs the module eagerly.
    """

    def __init__(
        self, module: torch.nn.Module, *, max_captures: int = 4, capture: Capture = cuda_capture
    ) -> None:
        if max_captures < 1:
            raise ValueError(f"max_captures must be >= 1, got {max_captures}")
        self.module = module
        self.max_captures = max_captures
        self._capture = capture
        self._captures: OrderedDict[tuple[int, Capacity], _Captured] = OrderedDict()
        self._failed = False
        self._warned_churn = False
        self.captures_made = 0
        """How many captures were made (a bucket evicted and met again is captured again)."""
        self.replays = 0

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def __call__(self, graph: AtomGraph) -> Outputs:
        if self._failed:
            return self._eager(graph.to(self.device))
        capacity = capacity_for(graph)
        padded = pad_graph(graph, capacity)
        key = (graph.num_graphs, capacity)
        captured = self._captures.get(key)
        if captured is None:
            captured = self._new_capture(key, padded.to(self.device))
            if captured is None:
                return self._eager(graph.to(self.device))
        else:
            self._captures.move_to_end(key)
            copy_tensors(captured.inputs, padded)
        captured.replay()
        self.replays += 1
        return _real_rows(captured.outputs, graph.num_graphs, graph.num_nodes)

    def _eager(self, graph: AtomGraph) -> Outputs:
        with torch.no_grad():
            return self.module(graph, compute_stress=True)

    def _new_capture(self, key: tuple[int, Capacity], inputs: AtomGraph) -> _Captured | None:
        """Capture the module on ``inputs`` (kept as the capture's input tensors)."""
        while len(self._captures) >= self.max_captures:
            self._captures.popitem(last=False)

        def run() -> Outputs:
            return self._eager(inputs)

        try:
            outputs, replay = self._capture(run, self.device)
        except RuntimeError as exc:
            warnings.warn(
                f"CUDA graph capture failed, running the model eagerly from now on ({exc})",
                RuntimeWarning,
                stacklevel=3,
            )
            self._failed = True
            self._captures.clear()
            return None
        self.captures_made += 1
        self._check_churn()
        captured = _Captured(inputs, outputs, replay)
        self._captures[key] = captured
        return captured

    def _check_churn(self) -> None:
        calls = self.replays + 1  # this capture's call replays next
        if self._warned_churn or calls < CHURN_CALLS or 2 * self.captures_made <= calls:
            return
        self._warned_churn = True
        warnings.warn(
            f"CUDA graphs: {self.captures_made} captures in {calls} calls; the graph sizes "
            "change too often for replay to pay (each capture costs about three eager calls), "
            "turn cuda_graphs off for this work or raise max_captures",
            RuntimeWarning,
            stacklevel=4,
        )


def _real_rows(outputs: Outputs, num_graphs: int, num_nodes: int) -> Outputs:
    """Copies of the rows of the real structures and atoms (the padding comes after them)."""
    return {
        key: value[: num_nodes if key in NODE_OUTPUTS else num_graphs].clone()
        for key, value in outputs.items()
    }
