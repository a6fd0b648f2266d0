"""Neighbour-list reuse between MD/relaxation steps, exactly equal to a fresh rebuild.

Why not the usual Verlet list: a graph built from a list at ``cutoff + skin`` is only exact for an
uncapped radius graph. ``pure_torch`` caps each atom at ``max_neighbors``, ``k-nearest`` keeps
complete shells of the K nearest and may grow its cutoff, and ``radius_graph`` grows its cutoff
until every atom has a neighbour; which pairs survive those rules changes as atoms move.

So only the expensive part is cached: the *candidate pairs* (``src, dst, shift``) within a radius
``R`` (the query radius plus ``skin``), found by the binned search. Every later radius query
re-runs the cheap exact part on them at the current positions -- edge vectors, the
``min_d2 < |r|² <= cutoff²`` test, the sort and the K cap -- with the same functions
(:func:`~alignn_torch.graphs.neighbors.pairs_within`, :func:`finish_edges`) that a fresh
search uses, and the strategy code (cutoff growth, shells, canonising, triplets, angle cosines)
runs unchanged on top. The result is bit-identical to a fresh build as long as the candidates
still contain every pair within the query radius, which holds while

    2 · (largest displacement since the candidates were built) <= R - cutoff

(a pair's distance changes by at most the sum of its two atoms' displacements). The cached list
is rebuilt when that fails, when a query asks for a larger radius than ``R - 2·displacement``
(k-nearest cutoff growth), or when the cell, periodicity or atom count changes at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.structures import Structure
from alignn_torch.graphs.neighbors import (
    NeighborList,
    finish_edges,
    pairs_within,
    radius_neighbors,
)

#: relative and absolute slack on the validity test, so float rounding can never admit a
#: displacement that sits exactly on the bound
_SAFETY = 1e-9


@dataclass
class _Candidates:
    src: np.ndarray
    dst: np.ndarray
    shift: np.ndarray
    radius: float
    positions: np.ndarray
    cell: np.ndarray
    pbc: tuple[bool, bool, bool]


class NeighborCache:
    """A :data:`~alignn_torch.graphs.strategies.RadiusSearch` that answers from cached pairs.

    ``skin`` (Å) is how much farther than the query radius the cached search reaches; atoms may
    then move up to ``skin / 2`` before a rebuild. ``rebuilds`` and ``reuses`` count the searches
    that ran the full binned search and those answered from the cache.
    """

    def __init__(self, skin: float) -> None:
        if not skin >= 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.skin = float(skin)
        self.rebuilds = 0
        self.reuses = 0
        self._cached: _Candidates | None = None

    def _usable(
        self, positions: np.ndarray, cell: np.ndarray, pbc: tuple[bool, bool, bool], cutoff: float
    ) -> bool:
        c = self._cached
        if c is None or c.pbc != pbc or c.positions.shape != positions.shape:
            return False
        if not np.array_equal(c.cell, cell):
            return False
        moved = np.sqrt(np.einsum("ij,ij->i", positions - c.positions, positions - c.positions))
        largest = float(moved.max()) if moved.size else 0.0
        margin = (c.radius - cutoff) * (1 - _SAFETY) - _SAFETY
        return 2.0 * largest <= margin

    def __call__(
        self,
        positions: np.ndarray,
        cell: np.ndarray,
        pbc: tuple[bool, bool, bool],
        cutoff: float,
        *,
        min_d2: float,
        max_neighbors: int | None = None,
    ) -> NeighborList:
        """Same contract and same result as :func:`radius_neighbors` with these arguments."""
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        pbc = (bool(pbc[0]), bool(pbc[1]), bool(pbc[2]))
        n = positions.shape[0]
        if n == 0 or not cutoff > 0:
            return radius_neighbors(positions, cell, pbc, cutoff, min_d2=min_d2,
                                    max_neighbors=max_neighbors)  # fmt: skip
        if self._usable(positions, cell, pbc, float(cutoff)):
            self.reuses += 1
        else:
            self.rebuilds += 1
            radius = float(cutoff) + self.skin
            # min_d2 < 0 keeps every pair, coincident ones included: which of them a query
            # accepts is decided below at the *current* positions, as a fresh search would.
            found = radius_neighbors(positions, cell, pbc, radius, min_d2=-1.0)
            self._cached = _Candidates(found.src, found.dst, found.shift, radius,
                                       positions.copy(), cell.copy(), pbc)  # fmt: skip
        c = self._cached
        assert c is not None
        pairs = pairs_within(positions, cell, c.src, c.dst, c.shift, cutoff, min_d2)
        return finish_edges([pairs], n, max_neighbors)


class ReusingGraphBuilder:
    """Builds graphs of successive configurations of one system, reusing neighbour searches.

    ``build(structure)`` returns exactly what ``TorchGraphBackend.build(structure, settings)``
    returns (tested bit for bit over MD trajectories for every strategy); only the binned pair
    search is skipped while the atoms stay within ``skin / 2`` of where it last ran.
    """

    def __init__(self, settings: GraphSettings, skin: float) -> None:
        self.settings = settings
        self.cache = NeighborCache(skin)

    @property
    def rebuilds(self) -> int:
        return self.cache.rebuilds

    @property
    def reuses(self) -> int:
        return self.cache.reuses

    def build(self, structure: Structure):
        from alignn_torch.graphs.backend import build_graph

        return build_graph(structure, self.settings, search=self.cache)
