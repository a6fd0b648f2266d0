"""Inference by replaying captured CUDA graphs: :class:`CapturedForward`.

Why: on a GPU, one energy + forces + stress call of the model costs about the same from 64 to
4,096 atoms (~10 ms on an H200, docs/performance-details.md): the GPU waits for ~700 kernel
launches and the Python that issues them, not for arithmetic. A CUDA graph records those
launches once and replays them with one call.

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

import torch

from alignn_core.cuda_graphs import Capture, CaptureCache, CountsReplays, Outputs, cuda_capture
from alignn_torch.graphs.graph import AtomGraph
from alignn_torch.graphs.padding import pad_to_bucket

NODE_OUTPUTS = ("grad", "atomwise_pred")
"""Output keys with one row per atom; every other key has one row per structure."""


class CapturedForward(CountsReplays):
    """``module(graph, compute_stress=True)`` without autograd, by CUDA graph replay.

    ``module`` is an ``alignn_atomwise_pure`` model (or the smooth one) in eval mode on a CUDA
    device; ``graph`` may live on the CPU (it is copied into the capture's inputs). Outputs are
    the module's, for the real structures only, on the module's device, and are not
    overwritten by later calls. If capturing fails, a warning says why and every later call
    runs the module eagerly; when most calls capture, a warning says replay does not pay.
    """

    def __init__(
        self, module: torch.nn.Module, *, max_captures: int = 4, capture: Capture = cuda_capture
    ) -> None:
        self.module = module
        self._cache = CaptureCache(
            next(module.parameters()).device,
            max_captures=max_captures,
            capture=capture,
            fallback="running the model eagerly",
            churn_advice="turn cuda_graphs off for this work or raise max_captures",
        )

    @property
    def device(self) -> torch.device:
        return self._cache.device

    def __call__(self, graph: AtomGraph) -> Outputs:
        outputs = None
        if not self._cache.failed:
            padded = pad_to_bucket(graph)
            outputs = self._cache.replay(
                padded.bucket,
                {"graph": padded.graph},
                lambda static: lambda: self._eager(static["graph"]),
            )
        if outputs is None:
            return self._eager(graph.to(self.device))
        return _real_rows(outputs, graph.num_graphs, graph.num_nodes)

    def _eager(self, graph: AtomGraph) -> Outputs:
        with torch.no_grad():
            return self.module(graph, compute_stress=True)


def _real_rows(outputs: Outputs, num_graphs: int, num_nodes: int) -> Outputs:
    """Copies of the rows of the real structures and atoms (the padding comes after them)."""
    return {
        key: value[: num_nodes if key in NODE_OUTPUTS else num_graphs].clone()
        for key, value in outputs.items()
    }
