"""``TorchGraphBackend``: the GraphBackend plugin that turns structures into :class:`AtomGraph`.

Graph construction runs once per structure in the data pipeline (and is cached by the LMDB
plugin), so it is numpy/torch on the CPU and never needs DGL. ``version`` is part of every cache
manifest: bump it whenever the contents of a built graph change for the same settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.cuda_graphs import PaddedGraph
from alignn_core.errors import ConfigError, DataError
from alignn_core.features import atom_features
from alignn_core.structures import Structure
from alignn_torch.graphs.graph import (
    EDGE_FIELDS,
    GRAPH_FIELDS,
    NODE_FIELDS,
    TRIPLET_FIELDS,
    AtomGraph,
    collate_graphs,
)
from alignn_torch.graphs.line_graph import stored_cosines, triplet_arrays
from alignn_torch.graphs.neighbors import NeighborList, radius_neighbors
from alignn_torch.graphs.padding import pad_to_bucket
from alignn_torch.graphs.strategies import SUPPORTED_STRATEGIES, RadiusSearch, neighbor_list

ALL_FIELDS = NODE_FIELDS + EDGE_FIELDS + TRIPLET_FIELDS + GRAPH_FIELDS

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def float_dtype(name: str) -> torch.dtype:
    """Torch dtype for ``settings.dtype``; anything else is a config error, not a crash later."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(
            f"graph dtype {name!r} is not supported; use one of {sorted(_DTYPES)}"
        ) from None


def build_graph(
    structure: Structure, settings: GraphSettings, search: RadiusSearch = radius_neighbors
) -> AtomGraph:
    """One structure -> a single-graph :class:`AtomGraph` (graph and line graph).

    Edges come from :func:`alignn_torch.graphs.strategies.neighbor_list` (float64 geometry, cast to
    ``settings.dtype`` at the end). The stored cosines are :func:`angle_cosines` of the cast ``r``
    (computed by its no-autograd twin :func:`stored_cosines`), i.e. exactly what the model
    recomputes with ``lg_on_fly``. An atom without any
    neighbour (pure_torch with a short cutoff, or a lone atom in a molecule) is an isolated node:
    the graph is still valid and the model's aggregations handle zero in-degree.

    ``search`` answers the radius queries; a :class:`~alignn_torch.graphs.reuse.NeighborCache`
    makes successive builds of a moving system cheaper without changing the result.
    """
    dtype = float_dtype(settings.dtype)
    edges, triplet_limit = neighbor_list(structure, settings, search)
    n_atoms = structure.n_atoms

    r = _floats(edges.r, dtype, copy=False)
    lg_src, lg_dst, lg_cos = line_graph_fields(edges, r, triplet_limit, settings)
    features = atom_features(structure.numbers, settings.atom_features)
    return AtomGraph(
        atom_features=_floats(features, dtype, copy=False),
        numbers=torch.from_numpy(structure.numbers.copy()),
        positions=_floats(structure.positions, dtype),
        node_graph=torch.from_numpy(np.zeros(n_atoms, np.int64)),
        src=torch.from_numpy(edges.src),
        dst=torch.from_numpy(edges.dst),
        r=r,
        shift=_floats(edges.shift, dtype, copy=False),
        edge_graph=torch.from_numpy(np.zeros(len(edges), np.int64)),
        lg_src=lg_src,
        lg_dst=lg_dst,
        lg_cos=lg_cos,
        cell=_floats(structure.cell, dtype).unsqueeze(0),
        volume=_floats(np.array([structure.volume]), dtype, copy=False),
        n_atoms=_count(n_atoms),
        n_edges=_count(len(edges)),
        n_triplets=_count(lg_src.shape[0]),
    )


def line_graph_fields(
    edges: NeighborList, r: torch.Tensor, triplet_limit: float | None, settings: GraphSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``lg_src``, ``lg_dst`` and ``lg_cos`` of ``edges`` (``r``: their vectors, cast).

    Edges may be those of many structures with global atom indices (:mod:`.batched`): triplets
    never join two structures, and each structure's come out in its own order.
    """
    if not settings.compute_line_graph:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), r.new_zeros(0)
    allowed = None if triplet_limit is None else edges.distance <= triplet_limit
    self_pairs = settings.neighbor_strategy == "pure_torch"  # as upstream (DGL otherwise)
    lg_src, lg_dst = (
        torch.from_numpy(t) for t in triplet_arrays(edges.src, edges.dst, allowed, self_pairs)
    )
    return lg_src, lg_dst, stored_cosines(r, lg_src, lg_dst)


def _floats(array: np.ndarray, dtype: torch.dtype, copy: bool = True) -> torch.Tensor:
    """``array`` as a contiguous tensor of float ``dtype`` that owns its memory unless ``copy`` is
    False (then it may share ``array``, which the caller must not reuse).

    Why numpy: its cast costs a fraction of ``Tensor.to`` on small arrays and rounds float64 to
    float32 the same way (IEEE round to nearest even). Not for half types: torch rounds a double
    to float16 through float (twice), numpy directly, and numpy has no bfloat16; they keep
    torch's cast.
    """
    target = _NUMPY_FLOATS.get(dtype)
    if target is None:
        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
    if copy:
        return torch.from_numpy(np.array(array, dtype=target, order="C"))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=target))  # numpy 1.x has no copy=None


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


def _count(value: int) -> torch.Tensor:
    """A one-element int64 tensor (``torch.tensor`` of a list costs several times more)."""
    return torch.from_numpy(np.array([value], dtype=np.int64))


def graph_to_arrays(graph: AtomGraph) -> dict[str, np.ndarray]:
    """Every field as a numpy array (dtype kept), for caches that must not pickle objects."""
    return {name: getattr(graph, name).detach().cpu().numpy() for name in ALL_FIELDS}


def graph_from_arrays(arrays: Mapping[str, np.ndarray]) -> AtomGraph:
    """Inverse of :func:`graph_to_arrays`; copies, so read-only (memory-mapped) input is fine."""
    missing = [name for name in ALL_FIELDS if name not in arrays]
    if missing:
        raise DataError(
            f"cached graph lacks {missing}; it was written by another graph format, rebuild it"
        )
    return AtomGraph(**{name: torch.from_numpy(np.array(arrays[name])) for name in ALL_FIELDS})


class TorchGraphBackend:
    """GraphBackend ``torch``: :class:`AtomGraph` graphs for the pure-torch model (no DGL)."""

    name = "torch"
    version = "2"  # 2: no (e, e) triplets on k-nearest/radius_graph graphs, as DGL builds them
    neighbor_strategies = SUPPORTED_STRATEGIES

    def build(self, structure: Structure, settings: GraphSettings) -> AtomGraph:
        """See :func:`build_graph`."""
        return build_graph(structure, settings)

    def build_many(
        self, structures: Sequence[Structure], settings: GraphSettings
    ) -> list[AtomGraph]:
        """:meth:`build` of each structure, bit for bit, with the per-call cost of small cells
        shared (see :func:`alignn_torch.graphs.batched.build_graphs`)."""
        from alignn_torch.graphs.batched import build_graphs

        return build_graphs(structures, settings)

    collate = staticmethod(collate_graphs)

    def incremental_builder(self, settings: GraphSettings, skin: float):
        """A builder for successive configurations of one system (MD, relaxation) that reuses
        the neighbour search while atoms move less than ``skin / 2``; its graphs are identical
        to :meth:`build`'s. See :mod:`alignn_torch.graphs.reuse`."""
        from alignn_torch.graphs.reuse import ReusingGraphBuilder

        return ReusingGraphBuilder(settings, skin)

    def pad(self, graph: AtomGraph) -> PaddedGraph:
        """``graph`` padded to its size bucket with one inert structure, for CUDA graph
        replay (:func:`alignn_torch.graphs.padding.pad_to_bucket`)."""
        return pad_to_bucket(graph)

    def to_arrays(self, graph: AtomGraph) -> dict[str, np.ndarray]:
        """See :func:`graph_to_arrays`."""
        return graph_to_arrays(graph)

    def from_arrays(self, arrays: Mapping[str, np.ndarray]) -> AtomGraph:
        """See :func:`graph_from_arrays`."""
        return graph_from_arrays(arrays)
