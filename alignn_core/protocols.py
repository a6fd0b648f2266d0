"""Protocols between the core and its plugins.

The core only talks to these interfaces; it never imports a concrete backend or model. Shapes use
N = atoms, E = directed edges, B = graphs in a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from alignn_core.config.graph_settings import GraphSettings
    from alignn_core.config.model import ModelConfig
    from alignn_core.structures import Record, Structure


@runtime_checkable
class GraphBatch(Protocol):
    """A collated batch of graphs as a model consumes it."""

    num_graphs: int

    def to(self, device: torch.device | str) -> GraphBatch:
        """Return the batch on ``device``."""
        ...

    def atoms_per_graph(self) -> torch.Tensor:
        """Atom counts, ``[B]`` int64."""
        ...


@runtime_checkable
class GraphBackend(Protocol):
    """Turns structures into graphs and graphs into batches.

    ``name`` and ``version`` identify the graph format: caches built by one backend version are
    refused by another (the LMDB plugin stores them in its manifest).

    Optional: ``incremental_builder(settings, skin)`` returning an object with
    ``build(structure)`` (and ``reuses``/``rebuilds`` counters) for successive configurations of
    one system, e.g. MD steps; its graphs must equal :meth:`build`'s exactly. Inference uses it
    when present and falls back to :meth:`build` otherwise.

    Optional: ``build_many(structures, settings)`` returning :meth:`build`'s graph for each
    structure, in order and identical, built together (cheaper for many small structures).
    Dataset providers use it through :func:`alignn_core.data.samples.built_graphs`.

    Optional: ``pad(graph)`` returning an :class:`alignn_core.cuda_graphs.PaddedGraph`, the
    graph padded to a size bucket; training with ``cuda_graphs`` needs it (CUDA graph replay
    runs fixed shapes) and refuses a backend without it.
    """

    name: str
    version: str
    neighbor_strategies: frozenset[str]

    def build(self, structure: Structure, settings: GraphSettings) -> Any:
        """One structure -> the backend's graph object(s) for it (graph + line graph)."""
        ...

    def collate(self, graphs: Sequence[Any]) -> GraphBatch:
        """Batch graphs with per-graph offsets; no per-graph work in the model's forward."""
        ...

    def to_arrays(self, graph: Any) -> Mapping[str, np.ndarray]:
        """Flatten a graph to named numpy arrays (caches store these; never pickle)."""
        ...

    def from_arrays(self, arrays: Mapping[str, np.ndarray]) -> Any:
        """Inverse of :meth:`to_arrays`."""
        ...


@runtime_checkable
class ModelPlugin(Protocol):
    """A trainable model selected by ``model.name`` in the config."""

    name: str
    config_class: type[ModelConfig]
    backend: str

    def build(self, config: ModelConfig) -> torch.nn.Module:
        """Create the module. Its ``forward(batch)`` returns a dict with upstream's keys:
        ``out`` [B] or [B, D], and as configured ``grad`` [N, 3] (forces, eV/Å),
        ``stresses`` [B, 3, 3] (GPa), ``atomwise_pred`` [N, k], ``additional`` [B, D_add]."""
        ...


@runtime_checkable
class CapturesForward(Protocol):
    """Optional for a :class:`ModelPlugin`: inference by CUDA graph replay.

    Inference (:meth:`alignn_core.inference.InferenceModel.with_cuda_graphs`) uses it when a
    user asks for CUDA graphs; a model plugin without it is refused with a clear error.
    """

    def captured_forward(
        self, module: torch.nn.Module, *, max_captures: int
    ) -> Callable[[Any], dict[str, torch.Tensor]]:
        """A callable ``f(graph)`` returning what ``module(graph, compute_stress=True)`` returns
        under ``torch.no_grad()`` (forces and stress included), for a module in eval mode on a
        CUDA device, by replaying captured graphs; at most ``max_captures`` are kept."""
        ...


@runtime_checkable
class DatasetProvider(Protocol):
    """Supplies a ``torch.utils.data.Dataset`` of :class:`alignn_core.data.samples.Sample`."""

    name: str

    def open(
        self,
        records: Sequence[Record],
        *,
        indices: Sequence[int] | None,
        backend: GraphBackend,
        settings: GraphSettings,
        split: str,
        cache_dir: Path | None,
        read_existing: bool,
        target_scale: float | None,
        progress: Callable[[], None] | None,
    ) -> torch.utils.data.Dataset:
        """Build (or reuse) the dataset of ``records[indices]`` (all when None) for ``split``.

        Items are :class:`~alignn_core.data.samples.Sample` with ``record_targets(record,
        target_scale)`` as targets; ``progress()`` is called once per sample made ready. A cache
        lives in ``cache_dir`` and is reused only if ``read_existing`` (and it matches).
        """
        ...


@runtime_checkable
class Exporter(Protocol):
    """Writes a trained model to a deployable artifact (e.g. TorchScript)."""

    name: str

    def export(self, model: torch.nn.Module, config: Any, output: Path, **options: Any) -> Path:
        """Write the artifact and return its path."""
        ...
