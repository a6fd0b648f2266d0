"""Fixed-size graphs: :func:`pad_graph` appends one inert structure so that a graph (or batch)
fills given capacities of atoms, edges and triplets.

Why: a captured CUDA graph (``alignn_torch.model.cuda_graphs``) replays kernels on fixed tensor
shapes, while the number of edges and triplets of a structure changes as its atoms move. Padding
each call up to a capacity bucket (:func:`capacity_for`) lets one capture serve every
configuration whose counts fall in that bucket.

The padding is an extra structure, index ``B`` after the B real ones: ``n`` atoms (copies of atom
0's features and element), edges from its first atom to itself with ``r = (1 Å, 0, 0)``, and
triplets joining its first edge to itself. Every message-passing step, readout, penalty, ZBL,
force and stress term of the model is indexed per atom, per edge or per structure, and none of
these indices leads from the padding into a real structure, so the real structures' outputs are
those of the unpadded graph (float rounding aside: a matrix product over more rows may block its
sums differently). The padding's own outputs are finite and are dropped by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignn_core.cuda_graphs import PaddedGraph
from alignn_torch.graphs.graph import AtomGraph

_DUMMY_BOND = 1.0
"""Å, length of every padding edge: finite features, no zero-length division anywhere."""


@dataclass(frozen=True)
class Capacity:
    """Sizes of a padded graph: atoms, edges and triplets, padding included."""

    atoms: int
    edges: int
    triplets: int


def round_up(count: int) -> int:
    """``count`` rounded up to a bucket boundary: a multiple of 16 below 512, above that of 1/16
    of the power of two below ``count``. A bucket wastes less than 1/16 of its size, and a count
    that drifts by a few percent (an MD run) stays in one or two buckets."""
    if count <= 0:
        return 0
    step = max(16, 1 << max(count.bit_length() - 5, 0))
    return -(-count // step) * step


def capacity_for(graph: AtomGraph) -> Capacity:
    """The bucket of ``graph``: room for at least one padding atom and one padding edge (the
    padding triplets need an edge to point at), triplets rounded up."""
    return Capacity(
        atoms=round_up(graph.num_nodes + 1),
        edges=round_up(graph.num_edges + 1),
        triplets=round_up(int(graph.lg_src.shape[0])),
    )


def pad_graph(graph: AtomGraph, capacity: Capacity) -> AtomGraph:
    """``graph`` plus one padding structure (see the module docstring) filling ``capacity``.

    Raises ``ValueError`` when the graph does not fit (at least one padding atom and edge are
    required). Tensors stay on the graph's device and in its dtypes.
    """
    n, e, t = graph.num_nodes, graph.num_edges, int(graph.lg_src.shape[0])
    pad_n, pad_e, pad_t = capacity.atoms - n, capacity.edges - e, capacity.triplets - t
    if n == 0 or pad_n < 1 or pad_e < 1 or pad_t < 0:
        raise ValueError(
            f"a graph of {n} atoms, {e} edges and {t} triplets does not fit {capacity} "
            "with one padding atom and edge"
        )
    b = graph.num_graphs
    index = graph.src.dtype
    device = graph.positions.device

    def rows(tensor: torch.Tensor, count: int, fill: torch.Tensor | float) -> torch.Tensor:
        extra = tensor.new_empty((count, *tensor.shape[1:]))
        if isinstance(fill, torch.Tensor):
            extra.copy_(fill)  # broadcast over the new rows
        else:
            extra.fill_(fill)
        return torch.cat([tensor, extra])

    def constant(value: int, count: int) -> torch.Tensor:
        return torch.full((count,), value, dtype=index, device=device)

    bond = torch.zeros(3, dtype=graph.r.dtype, device=device)
    bond[0] = _DUMMY_BOND
    eye = torch.eye(3, dtype=graph.cell.dtype, device=device)
    return AtomGraph(
        atom_features=rows(graph.atom_features, pad_n, graph.atom_features[:1]),
        numbers=rows(graph.numbers, pad_n, graph.numbers[:1]),
        positions=rows(graph.positions, pad_n, 0.0),
        node_graph=torch.cat([graph.node_graph, constant(b, pad_n)]),
        src=torch.cat([graph.src, constant(n, pad_e)]),
        dst=torch.cat([graph.dst, constant(n, pad_e)]),
        r=rows(graph.r, pad_e, bond),
        shift=rows(graph.shift, pad_e, 0.0),
        edge_graph=torch.cat([graph.edge_graph, constant(b, pad_e)]),
        lg_src=torch.cat([graph.lg_src, constant(e, pad_t)]),
        lg_dst=torch.cat([graph.lg_dst, constant(e, pad_t)]),
        lg_cos=rows(graph.lg_cos, pad_t, -1.0),
        cell=rows(graph.cell, 1, eye),
        volume=rows(graph.volume, 1, 1.0),
        n_atoms=torch.cat([graph.n_atoms, constant(pad_n, 1).to(graph.n_atoms.dtype)]),
        n_edges=torch.cat([graph.n_edges, constant(pad_e, 1).to(graph.n_edges.dtype)]),
        n_triplets=torch.cat([graph.n_triplets, constant(pad_t, 1).to(graph.n_triplets.dtype)]),
    )


def pad_to_bucket(graph: AtomGraph) -> PaddedGraph:
    """``graph`` padded to its bucket (:func:`capacity_for`), with the bucket key: graphs with
    equal keys have tensors of equal shapes."""
    capacity = capacity_for(graph)
    return PaddedGraph(pad_graph(graph, capacity), bucket=(graph.num_graphs, capacity),
                       graphs=graph.num_graphs + 1, nodes=capacity.atoms)  # fmt: skip
