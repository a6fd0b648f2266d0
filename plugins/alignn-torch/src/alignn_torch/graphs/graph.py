"""``AtomGraph``: a crystal graph plus its line graph, as flat tensors.

One class serves a single structure and a batch: a batch is the concatenation of its members with
index offsets, plus per-graph counts. Shapes: N atoms, E directed edges, T triplets, B graphs.

Edge convention: ``r[e] = positions[dst[e]] - positions[src[e]] + shift[e] @ cell[g(e)]``.
Triplet ``t`` joins edge ``lg_src[t] = (u -> v)`` to edge ``lg_dst[t] = (v -> w)``; its cosine is
``-(r_A . r_B) / (|r_A| |r_B|)``, the angle at the shared atom ``v``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

NODE_FIELDS = ("atom_features", "numbers", "positions", "node_graph")
EDGE_FIELDS = ("src", "dst", "r", "shift", "edge_graph")
TRIPLET_FIELDS = ("lg_src", "lg_dst", "lg_cos")
GRAPH_FIELDS = ("cell", "volume", "n_atoms", "n_edges", "n_triplets")


@dataclass
class AtomGraph:
    atom_features: torch.Tensor  # [N, F] float
    numbers: torch.Tensor  # [N] int64 atomic numbers
    positions: torch.Tensor  # [N, 3] float, Å
    node_graph: torch.Tensor  # [N] int64 graph index of each atom
    src: torch.Tensor  # [E] int64
    dst: torch.Tensor  # [E] int64
    r: torch.Tensor  # [E, 3] float edge vectors
    shift: torch.Tensor  # [E, 3] float integer image offsets of dst
    edge_graph: torch.Tensor  # [E] int64
    lg_src: torch.Tensor  # [T] int64 edge index
    lg_dst: torch.Tensor  # [T] int64 edge index
    lg_cos: torch.Tensor  # [T] float stored angle cosines
    cell: torch.Tensor  # [B, 3, 3] rows are lattice vectors
    volume: torch.Tensor  # [B] |det cell|
    n_atoms: torch.Tensor  # [B] int64
    n_edges: torch.Tensor  # [B] int64
    n_triplets: torch.Tensor  # [B] int64

    @property
    def num_graphs(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def num_nodes(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.src.shape[0])

    def atoms_per_graph(self) -> torch.Tensor:
        return self.n_atoms

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> AtomGraph:
        """Move to ``device``; with ``dtype``, cast the floating-point tensors too."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dtype is not None and value.is_floating_point():
                changes[f.name] = value.to(device=device, dtype=dtype)
            else:
                changes[f.name] = value.to(device)
        return replace(self, **changes)

    def edge_vectors(self, positions: torch.Tensor | None = None, cell: torch.Tensor | None = None):
        """Recompute ``r`` from positions/cell (both may carry autograd) with this topology."""
        positions = self.positions if positions is None else positions
        cell = self.cell if cell is None else cell
        offsets = torch.einsum("ej,ejk->ek", self.shift.to(cell.dtype), cell[self.edge_graph])
        return positions[self.dst] - positions[self.src] + offsets

    def with_positions(
        self, positions: torch.Tensor, cell: torch.Tensor | None = None
    ) -> AtomGraph:
        """Same topology, new geometry (for finite differences and MD steps)."""
        cell = self.cell if cell is None else cell
        volume = torch.abs(torch.linalg.det(cell))
        r = self.edge_vectors(positions, cell)
        return replace(self, positions=positions, cell=cell, volume=volume, r=r)


def collate_graphs(graphs: Sequence[AtomGraph]) -> AtomGraph:
    """Concatenate graphs; node indices shift by atom counts, triplet indices by edge counts."""
    if len(graphs) == 1:
        return graphs[0]
    n_atoms = torch.cat([g.n_atoms for g in graphs])
    n_edges = torch.cat([g.n_edges for g in graphs])
    atom_offsets = _exclusive_cumsum(torch.stack([torch.tensor(g.num_nodes) for g in graphs]))
    edge_offsets = _exclusive_cumsum(torch.stack([torch.tensor(g.num_edges) for g in graphs]))
    graph_offsets = _exclusive_cumsum(torch.tensor([g.num_graphs for g in graphs]))
    cat = torch.cat
    return AtomGraph(
        atom_features=cat([g.atom_features for g in graphs]),
        numbers=cat([g.numbers for g in graphs]),
        positions=cat([g.positions for g in graphs]),
        node_graph=cat([g.node_graph + o for g, o in zip(graphs, graph_offsets, strict=True)]),
        src=cat([g.src + o for g, o in zip(graphs, atom_offsets, strict=True)]),
        dst=cat([g.dst + o for g, o in zip(graphs, atom_offsets, strict=True)]),
        r=cat([g.r for g in graphs]),
        shift=cat([g.shift for g in graphs]),
        edge_graph=cat([g.edge_graph + o for g, o in zip(graphs, graph_offsets, strict=True)]),
        lg_src=cat([g.lg_src + o for g, o in zip(graphs, edge_offsets, strict=True)]),
        lg_dst=cat([g.lg_dst + o for g, o in zip(graphs, edge_offsets, strict=True)]),
        lg_cos=cat([g.lg_cos for g in graphs]),
        cell=cat([g.cell for g in graphs]),
        volume=cat([g.volume for g in graphs]),
        n_atoms=n_atoms,
        n_edges=n_edges,
        n_triplets=cat([g.n_triplets for g in graphs]),
    )


def _exclusive_cumsum(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts
