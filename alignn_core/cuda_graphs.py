"""Capturing and replaying CUDA graphs, and the stand-in that tests use on any device.

Why here, in the core: a captured graph is plain torch, whatever the model. Inference replay
lives with the model plugin that pads its graphs (``alignn_torch.model.cuda_graphs``); training
replay (:mod:`alignn_core.training.captured_step`) is the trainer's. Both need a graph to replay
fixed tensor shapes: each call's inputs are copied into the capture's own input tensors, and
the outputs it writes are overwritten by the next replay.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

Outputs = dict[str, torch.Tensor]
Run = Callable[[], Outputs]
Capture = Callable[[Run, torch.device], tuple[Outputs, Callable[[], None]]]


@dataclass(frozen=True)
class PaddedGraph:
    """A graph (or batch) padded to a size bucket, what a graph backend's optional
    ``pad(graph)`` returns: the real structures and atoms come first, then padding that no
    index connects to them."""

    graph: Any
    bucket: Hashable
    """Padded graphs with equal buckets have tensors of equal shapes (one capture serves all)."""
    graphs: int
    """Rows of per-structure outputs, padding included."""
    nodes: int
    """Rows of per-atom outputs, padding included."""


WARMUP_CALLS = 2
"""Eager calls on a side stream before capturing, as PyTorch's capture recipe asks (lazy
initialisation, cuBLAS workspaces, the allocator's first blocks and gradient tensors happen
outside the graph)."""


def cuda_capture(run: Run, device: torch.device) -> tuple[Outputs, Callable[[], None]]:
    """Capture ``run`` as a CUDA graph: its static outputs and the graph's ``replay``."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(WARMUP_CALLS):
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: a DataLoader's pin-memory thread may allocate pinned memory meanwhile
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        outputs = run()
    return outputs, graph.replay


def rerun_capture(run: Run, device: torch.device) -> tuple[Outputs, Callable[[], None]]:
    """A stand-in for :func:`cuda_capture` on any device: "replay" runs ``run`` eagerly and
    copies its results into the first call's output tensors. It keeps a CUDA graph's contract
    (static inputs read, static outputs overwritten), so everything around a capture (padding,
    buckets, buffers, masks) can be tested where no GPU is."""
    outputs = run()

    def replay() -> None:
        for key, value in run().items():
            outputs[key].copy_(value)

    return outputs, replay


def copy_tensors(destination: object, source: object) -> None:
    """Copy every tensor attribute of ``source`` into the same attribute of ``destination``
    (a capture's input graph), in place: same shapes, possibly another device."""
    for name, value in vars(source).items():
        if isinstance(value, torch.Tensor):
            getattr(destination, name).copy_(value)
