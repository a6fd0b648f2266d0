"""The neighbour strategies of the torch backend, each reproducing an upstream edge set.

Every strategy returns a :class:`~alignn_torch.graphs.neighbors.NeighborList` (edges sorted by
source, nearest first) plus the triplet restriction for its line graph:

- ``pure_torch`` (upstream ``build_pure_torch_graph``, the ALIGNN 2.0 / force-field graph):
  radius ``cutoff`` (inclusive), optional per-source cap ``max_neighbors`` without shell
  completion (so the graph can be asymmetric), triplets only among edges ``|r| <= triplet_cutoff``.
- ``k-nearest`` (the 2021 jarvis graph, TrainingConfig's default): ``max_neighbors`` nearest per
  site with complete shells, an automatically extended cutoff, canonised and symmetrised edges,
  all triplets.
- ``radius_graph``: every pair within ``cutoff``; the cutoff grows by ``cutoff_extra`` until every
  atom has a neighbour; all triplets.

Differences from upstream, all deliberate:

- Ties at the K-th neighbour (pure_torch) are broken by ``(dst, shift)``; upstream's unstable
  argsort picks arbitrarily. Distances within 1e-8 Å count as ties everywhere (ordering, the K
  cap, k-nearest shells), so float noise between symmetry-equivalent neighbours decides nothing.
- k-nearest reverse edges carry the correct image ``-shift``; upstream stores ``+shift`` on both
  directions (``r`` is right upstream, only ``images`` is wrong). ``r`` is identical.
- radius_graph retries until *every* atom has an edge; upstream only checks the highest-index
  atom, so another isolated atom could slip through there.
- Non-periodic structures: k-nearest and radius_graph stop growing the cutoff once it spans the
  whole structure (upstream would loop forever on a molecule with too few atoms).
- Unwrapped coordinates are handled exactly (upstream's torch search can miss neighbours).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.errors import ConfigError
from alignn_core.structures import Structure
from alignn_torch.graphs.neighbors import (
    PURE_TORCH_MIN_D2,
    NeighborList,
    cap_shell,
    edge_vectors,
    neighbor_counts,
    radius_neighbors,
    sort_edges,
)

#: jarvis' ``get_all_neighbors`` ignores pairs closer than this ``bond_tol`` (Å)
KNN_MIN_DISTANCE = 0.15
#: upstream's radius_graph keeps ``|d| > 1e-5`` Å
RADIUS_GRAPH_MIN_DISTANCE = 1e-5

SUPPORTED_STRATEGIES = frozenset({"pure_torch", "k-nearest", "radius_graph"})

RadiusSearch = Callable[..., NeighborList]
"""Signature of :func:`~alignn_torch.graphs.neighbors.radius_neighbors`: ``(positions, cell, pbc,
cutoff, *, min_d2, max_neighbors=None) -> NeighborList``. Every strategy gets its pairs through
one, so a neighbour-list cache (:mod:`alignn_torch.graphs.reuse`) can answer the same queries from
a stored superset and the strategies' logic (cutoff growth, shells, canonising) runs unchanged."""


def neighbor_list(
    structure: Structure, settings: GraphSettings, search: RadiusSearch = radius_neighbors
) -> tuple[NeighborList, float | None]:
    """Edges of ``structure`` for ``settings.neighbor_strategy`` and the triplet bond limit.

    The second value is the longest bond allowed in a triplet, or None for no limit. ``search``
    answers every radius query (default: a fresh :func:`radius_neighbors`).
    """
    strategy = settings.neighbor_strategy
    if strategy not in SUPPORTED_STRATEGIES:
        raise ConfigError(
            f"neighbor_strategy {strategy!r} is not supported by the torch graph backend; "
            f"use one of {sorted(SUPPORTED_STRATEGIES)}"
        )
    if not settings.cutoff > 0:
        raise ConfigError(f"cutoff must be positive, got {settings.cutoff}")
    args = (structure.positions, structure.cell, structure.pbc)
    if strategy == "pure_torch":
        return pure_torch_edges(
            *args, settings.cutoff, settings.max_neighbors, settings, search=search
        )
    if strategy == "k-nearest":
        edges = k_nearest_edges(
            *args, settings.cutoff, settings.max_neighbors, use_canonize=settings.use_canonize,
            search=search,
        )  # fmt: skip
        return edges, None
    return radius_graph_edges(*args, settings.cutoff, settings.cutoff_extra, search=search), None


def pure_torch_edges(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: tuple[bool, bool, bool],
    cutoff: float,
    max_neighbors: int | None,
    settings: GraphSettings,
    *,
    search: RadiusSearch = radius_neighbors,
) -> tuple[NeighborList, float | None]:
    """Upstream's pure_torch graph: radius + optional K cap; triplet limit from the settings.

    An atom with no neighbour inside ``cutoff`` stays an isolated node (no error, no retry), as
    upstream. The triplet limit is None when it is not below ``cutoff`` (upstream skips the filter
    when the cutoffs are equal); a limit above ``cutoff`` is a config error (upstream: ValueError).
    """
    limit = pure_torch_triplet_limit(settings, cutoff)
    edges = search(
        positions, cell, pbc, cutoff, min_d2=PURE_TORCH_MIN_D2, max_neighbors=max_neighbors
    )
    return edges, limit


def pure_torch_triplet_limit(settings: GraphSettings, cutoff: float) -> float | None:
    """The longest bond of a pure_torch triplet, or None for no limit (:func:`pure_torch_edges`)."""
    limit = settings.triplet_cutoff
    if limit is not None and limit > cutoff:
        raise ConfigError(
            f"three_body_cutoff {limit} exceeds cutoff {cutoff}; triplets can only use graph edges"
        )
    return None if limit is None or limit >= cutoff else limit


def _extent(positions: np.ndarray) -> float:
    """Diagonal of the bounding box: no pair in a non-periodic structure is farther apart."""
    if len(positions) == 0:
        return 0.0
    return float(np.linalg.norm(positions.max(axis=0) - positions.min(axis=0)))


def k_nearest_edges(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: tuple[bool, bool, bool],
    cutoff: float,
    max_neighbors: int | None,
    *,
    use_canonize: bool = True,
    search: RadiusSearch = radius_neighbors,
) -> NeighborList:
    """The jarvis k-nearest graph (upstream ``nearest_neighbor_edges`` + undirected expansion).

    1. Neighbours within ``cutoff`` (inclusive), ignoring pairs closer than 0.15 Å.
    2. While some site has fewer than K neighbours, grow the cutoff: to the longest lattice vector
       if the cutoff is shorter, else double it.
    3. Per site keep every neighbour not farther than its K-th (complete shells: may exceed K).
    4. ``use_canonize``: store each bond once as (low id, high id, image of the high id). A bond of
       an atom with its own image is stored for ``+shift`` and ``-shift``, as upstream, so such
       bonds end up twice in each direction. Without canonising, a bond found from both ends is
       stored twice.
    5. Emit every stored bond in both directions, the reverse with image ``-shift``.

    ``max_neighbors`` None or 0 keeps all neighbours within ``cutoff`` (no growth, no shells).
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    n = positions.shape[0]
    k = int(max_neighbors or 0)
    longest = float(np.linalg.norm(cell, axis=1).max())
    bounded = not any(pbc)
    while True:
        edges = search(positions, cell, pbc, cutoff, min_d2=KNN_MIN_DISTANCE**2)
        if k == 0 or n == 0 or neighbor_counts(edges, n).min() >= k:
            break
        if bounded and cutoff >= _extent(positions):
            break  # a molecule with too few atoms: every other atom is already a neighbour
        cutoff = longest if cutoff < longest else 2 * cutoff
    if k:
        edges = cap_shell(edges, n, k)

    src, dst, shift = edges.src, edges.dst, edges.shift
    if use_canonize:
        swap = dst < src
        low = np.where(swap, dst, src)
        high = np.where(swap, src, dst)
        shift = np.where(swap[:, None], -shift, shift)
        bonds = np.unique(np.column_stack([low, high, shift]), axis=0)
        src, dst, shift = bonds[:, 0], bonds[:, 1], bonds[:, 2:]
    all_src = np.concatenate([src, dst])
    all_dst = np.concatenate([dst, src])
    all_shift = np.concatenate([shift, -shift])
    r = edge_vectors(positions, cell, all_src, all_dst, all_shift)
    return sort_edges(all_src, all_dst, all_shift, r)


def radius_graph_edges(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: tuple[bool, bool, bool],
    cutoff: float,
    cutoff_extra: float,
    *,
    search: RadiusSearch = radius_neighbors,
) -> NeighborList:
    """All pairs within ``cutoff``; grow it by ``cutoff_extra`` until every atom has an edge.

    Upstream only requires the highest-index atom to have an edge; requiring all atoms is the
    intent and differs only where upstream would leave an isolated atom.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    n = positions.shape[0]
    bounded = not any(pbc)
    while True:
        edges = search(positions, cell, pbc, cutoff, min_d2=RADIUS_GRAPH_MIN_DISTANCE**2)
        if n == 0 or neighbor_counts(edges, n).min() > 0:
            return edges
        if bounded and cutoff >= _extent(positions):
            return edges  # an atom that is alone in space keeps no edge
        if not cutoff_extra > 0:
            raise ConfigError(
                f"an atom has no neighbour within cutoff {cutoff} and cutoff_extra "
                f"{cutoff_extra} cannot grow it; raise cutoff or cutoff_extra"
            )
        cutoff += cutoff_extra
