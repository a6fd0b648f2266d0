"""Graph backend ``dgl``: crystal graph and line graph as DGL graphs, batched with ``dgl.batch``.

The edge sets are not computed here. A structure goes through the torch backend's builder
(:func:`alignn_torch.graphs.backend.build_graph`: the same neighbour strategies, the same
triplet rule, the same float64 geometry cast to ``settings.dtype``), and the result is converted
to DGL graphs edge for edge. That is what makes the two backends comparable at all: parity
failures can only come from the models, never from graphs that differ by a tie or an image.

Layout of :class:`DGLGraphPair` (N atoms, E directed edges, T triplets, B graphs):

- ``g``: nodes = atoms, ``ndata``: ``atom_features`` [N, F], ``numbers`` [N] int64,
  ``positions`` [N, 3]; ``edata``: ``r`` [E, 3] (``x[dst] - x[src] + shift @ cell``),
  ``shift`` [E, 3] integer image offsets.
- ``lg``: nodes = the edges of ``g`` (same ids), edge ``t`` = triplet ``(lg_src[t], lg_dst[t])``;
  ``edata["h"]`` [T] the stored bond-angle cosine (upstream's field name).
- ``cell`` [B, 3, 3] and ``volume`` [B]: DGL has no per-graph storage, so they travel beside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from alignn_torch.graphs.backend import build_graph, graph_from_arrays, graph_to_arrays
from alignn_torch.graphs.graph import AtomGraph
from alignn_torch.graphs.strategies import SUPPORTED_STRATEGIES

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.structures import Structure
from alignn_dgl.availability import import_dgl

dgl = import_dgl()

NODE_DATA = ("atom_features", "numbers", "positions")
EDGE_DATA = ("r", "shift")
ANGLE_FIELD = "h"


@dataclass
class DGLGraphPair:
    """A crystal graph and its line graph (one structure or a batch); see the module docstring."""

    g: Any  # dgl.DGLGraph (DGL ships no type information)
    lg: Any  # dgl.DGLGraph
    cell: torch.Tensor  # [B, 3, 3], rows are lattice vectors
    volume: torch.Tensor  # [B]

    @property
    def num_graphs(self) -> int:
        return int(self.g.batch_size)

    @property
    def num_nodes(self) -> int:
        return int(self.g.num_nodes())

    def atoms_per_graph(self) -> torch.Tensor:
        """Atom counts ``[B]`` int64 (what the losses normalise by)."""
        return self.g.batch_num_nodes()

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> DGLGraphPair:
        """Move both graphs (with their data) to ``device``; ``dtype`` casts float data too."""
        g, lg = self.g.to(device), self.lg.to(device)
        cell, volume = self.cell.to(device), self.volume.to(device)
        if dtype is not None:
            for frame in (g.ndata, g.edata, lg.edata):
                for key in list(frame.keys()):
                    if frame[key].is_floating_point():
                        frame[key] = frame[key].to(dtype)
            cell, volume = cell.to(dtype), volume.to(dtype)
        return DGLGraphPair(g, lg, cell, volume)


def from_atom_graph(graph: AtomGraph) -> DGLGraphPair:
    """The same graph and triplets as DGL graphs (edge ids and triplet order preserved).

    A batched :class:`AtomGraph` becomes a batched pair (``batch_num_nodes``/``edges`` set), so
    a batch converted here equals ``dgl.batch`` of its members converted one by one.
    """
    g = dgl.graph((graph.src, graph.dst), num_nodes=graph.num_nodes, idtype=torch.int64)
    for name in NODE_DATA:
        g.ndata[name] = getattr(graph, name)
    for name in EDGE_DATA:
        g.edata[name] = getattr(graph, name)
    lg = dgl.graph((graph.lg_src, graph.lg_dst), num_nodes=graph.num_edges, idtype=torch.int64)
    lg.edata[ANGLE_FIELD] = graph.lg_cos
    if graph.num_graphs > 1:
        g.set_batch_num_nodes(graph.n_atoms)
        g.set_batch_num_edges(graph.n_edges)
        lg.set_batch_num_nodes(graph.n_edges)
        lg.set_batch_num_edges(graph.n_triplets)
    return DGLGraphPair(g, lg, graph.cell, graph.volume)


def to_atom_graph(pair: DGLGraphPair) -> AtomGraph:
    """Inverse of :func:`from_atom_graph` (used for caching and by the parity checks)."""
    g, lg = pair.g, pair.lg
    src, dst = g.edges(order="eid")
    lg_src, lg_dst = lg.edges(order="eid")
    n_atoms = g.batch_num_nodes()
    n_edges = g.batch_num_edges()
    graph_ids = torch.arange(pair.num_graphs, device=n_atoms.device)
    return AtomGraph(
        atom_features=g.ndata["atom_features"],
        numbers=g.ndata["numbers"],
        positions=g.ndata["positions"],
        node_graph=torch.repeat_interleave(graph_ids, n_atoms),
        src=src,
        dst=dst,
        r=g.edata["r"],
        shift=g.edata["shift"],
        edge_graph=torch.repeat_interleave(graph_ids, n_edges),
        lg_src=lg_src,
        lg_dst=lg_dst,
        lg_cos=lg.edata[ANGLE_FIELD],
        cell=pair.cell,
        volume=pair.volume,
        n_atoms=n_atoms,
        n_edges=n_edges,
        n_triplets=lg.batch_num_edges(),
    )


def collate_pairs(pairs: Sequence[DGLGraphPair]) -> DGLGraphPair:
    """``dgl.batch`` both graphs: node ids of ``lg`` shift by edge counts, as edge ids of ``g``."""
    if len(pairs) == 1:
        return pairs[0]
    return DGLGraphPair(
        g=dgl.batch([p.g for p in pairs]),
        lg=dgl.batch([p.lg for p in pairs]),
        cell=torch.cat([p.cell for p in pairs]),
        volume=torch.cat([p.volume for p in pairs]),
    )


class DGLGraphBackend:
    """GraphBackend ``dgl``: :class:`DGLGraphPair` for the DGL model ``alignn_atomwise``.

    ``version`` is part of every cache manifest; bump it when a built graph's contents change.
    The flat arrays are the torch backend's format, so a cache could hold either.
    """

    name = "dgl"
    version = "1"
    neighbor_strategies = SUPPORTED_STRATEGIES

    def build(self, structure: Structure, settings: GraphSettings) -> DGLGraphPair:
        """The torch backend's graph of ``structure``, as DGL graphs."""
        return from_atom_graph(build_graph(structure, settings))

    collate = staticmethod(collate_pairs)

    def to_arrays(self, graph: DGLGraphPair) -> dict[str, np.ndarray]:
        """Every field as a numpy array (dtype kept); no pickled DGL objects in caches."""
        return graph_to_arrays(to_atom_graph(graph))

    def from_arrays(self, arrays: Mapping[str, np.ndarray]) -> DGLGraphPair:
        """Inverse of :meth:`to_arrays`."""
        return from_atom_graph(graph_from_arrays(arrays))
