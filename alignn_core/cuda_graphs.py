"""Capturing and replaying CUDA graphs, and the stand-in that tests use on any device.

Why here, in the core: a captured graph is plain torch, whatever the model. Inference replay
lives with the model plugin that pads its graphs (``alignn_torch.model.cuda_graphs``); training
replay (:mod:`alignn_core.training.captured_step`) is the trainer's. Both need a graph to replay
fixed tensor shapes: each call's inputs are copied into the capture's own input tensors, and
the outputs it writes are overwritten by the next replay. Both keep their captures in a
:class:`CaptureCache` (buckets, eviction, a failed capture's fallback, counters).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
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


CHURN_CALLS = 16
"""After this many calls, a cache that captured on more than half of them can warn (once):
the sizes change too much for replay to pay (e.g. ``predict`` over many different structures)."""


@dataclass
class _Entry:
    """One bucket's capture: the inputs it reads, the outputs it writes, its replay."""

    inputs: dict[str, Any]
    outputs: Outputs
    replay: Callable[[], None]


class CaptureCache:
    """Captures by bucket, least recently used first, at most ``max_captures``; what inference
    (``CapturedForward``) and training (:class:`~alignn_core.training.captured_step
    .CapturedTrainingStep`) replay through.

    :meth:`replay` refills a bucket's static inputs and replays its graph, capturing it first
    when the bucket is new. A failed capture warns (``eager from now on``: what the caller does
    instead) and sets :attr:`failed`; the caller then runs eagerly. With ``churn_advice``, a
    cache that captured on more than half of its first ``CHURN_CALLS`` or more calls warns once
    with that advice.
    """

    def __init__(
        self,
        device: torch.device,
        *,
        max_captures: int,
        capture: Capture,
        fallback: str,
        churn_advice: str | None = None,
    ) -> None:
        if max_captures < 1:
            raise ValueError(f"max_captures must be >= 1, got {max_captures}")
        self.device = device
        self.max_captures = max_captures
        self._capture = capture
        self._fallback = fallback
        self._churn_advice = churn_advice
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._warned_churn = False
        self.failed = False
        self.captures_made = 0
        """How many captures were made (a bucket evicted and met again is captured again)."""
        self.replays = 0

    def replay(
        self, key: Hashable, inputs: dict[str, Any], make_run: Callable[[dict[str, Any]], Run]
    ) -> Outputs | None:
        """Replay bucket ``key`` on ``inputs`` (tensors, dicts of them, or graphs/dataclasses
        of tensors, possibly on the host); ``make_run(static_inputs)`` is what a new bucket
        captures. Returns the static outputs (overwritten by the bucket's next replay), or None
        when the capture failed."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._new_entry(key, inputs, make_run)
            if entry is None:
                return None
        else:
            self._entries.move_to_end(key)
            for name, value in inputs.items():
                _refill(entry.inputs[name], value)
        entry.replay()
        self.replays += 1
        return entry.outputs

    def _new_entry(
        self, key: Hashable, inputs: dict[str, Any], make_run: Callable[[dict[str, Any]], Run]
    ) -> _Entry | None:
        while len(self._entries) >= self.max_captures:
            self._entries.popitem(last=False)
        static = {name: _on(self.device, value) for name, value in inputs.items()}
        try:
            outputs, replay = self._capture(make_run(static), self.device)
        except RuntimeError as exc:
            warnings.warn(f"CUDA graph capture failed, {self._fallback} from now on ({exc})",
                          RuntimeWarning, stacklevel=4)  # fmt: skip
            self.failed = True
            self._entries.clear()
            return None
        self.captures_made += 1
        self._check_churn()
        entry = _Entry(static, outputs, replay)
        self._entries[key] = entry
        return entry

    def _check_churn(self) -> None:
        calls = self.replays + 1  # this capture's call replays next
        if (self._churn_advice is None or self._warned_churn or calls < CHURN_CALLS
                or 2 * self.captures_made <= calls):  # fmt: skip
            return
        self._warned_churn = True
        warnings.warn(
            f"CUDA graphs: {self.captures_made} captures in {calls} calls; the graph sizes "
            "change too often for replay to pay (each capture costs about three eager calls), "
            f"{self._churn_advice}",
            RuntimeWarning,
            stacklevel=5,
        )


def _on(device: torch.device, value: Any) -> Any:
    """``value`` on ``device``: a tensor, a dict of them, a graph with ``.to``, or a dataclass
    of tensors."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {name: _on(device, item) for name, item in value.items()}
    if hasattr(value, "to"):
        return value.to(device)
    return dataclasses.replace(value, **{name: _on(device, item)
                                         for name, item in vars(value).items()})  # fmt: skip


def _refill(static: Any, value: Any) -> None:
    """Copy ``value`` into the same-shaped ``static`` (a capture's input), in place."""
    if isinstance(static, torch.Tensor):
        static.copy_(value)
    elif isinstance(static, dict):
        for name, item in value.items():
            _refill(static[name], item)
    else:  # a graph or dataclass: every tensor attribute
        for name, item in vars(value).items():
            if isinstance(item, torch.Tensor):
                getattr(static, name).copy_(item)


class CountsReplays:
    """``captures_made`` and ``replays`` of a runner's :class:`CaptureCache` (``self._cache``),
    which logs and :attr:`alignn_core.inference.InferenceModel.cuda_graph_counts` read."""

    _cache: CaptureCache

    @property
    def captures_made(self) -> int:
        """Captures made (a bucket evicted and met again is captured again)."""
        return self._cache.captures_made

    @property
    def replays(self) -> int:
        return self._cache.replays
