"""Many small periodic graphs in one set of array operations: :func:`build_graphs`.

Why: a small structure (1-30 atoms) costs ~0.4 ms in
:func:`~alignn_torch.graphs.backend.build_graph`, almost all of it the fixed cost of ~400
numpy/torch calls, not arithmetic. Here the structures of
a chunk share those calls: atoms and edges get global indices (per-structure offsets), ragged
sets (atom pairs, image offsets, candidates) are expanded with ``repeat``/``cumsum``, one packed
sort key starting with the global source atom orders every structure's edges at once, and the
arrays are split per structure at the end.

The result is bit for bit ``[build_graph(s, settings) for s in structures]``: every float that
reaches a graph is computed by the same elementwise operation as there (``r`` from the given
positions and ``shift @ cell`` in einsum's order, the same casts, :func:`stored_cosines` on the
concatenated edges), and the edge set and order follow from exact tests: the candidates are a
superset of every pair within the radius, accepted by the same ``min_d2 < |r|² <= radius²`` test
and ordered by the same key. Each pair of atoms is searched in one direction only and the
reverse edges are added by negating ``r``, which is exact (:func:`with_mirrors`): half the
candidates, and the 50 example POSCARs build 1.2x (``retain`` allocator) to 1.6x (glibc's
default) faster. The K-capped search takes the same two stages
(:func:`~alignn_torch.graphs.neighbors._nearest_if_complete`'s proof); which stage answers a
structure does not change its edges. Structures this path does not cover (other strategies,
non-periodic or degenerate cells, cells too large for an all-pairs search, unknown elements) are
built by :func:`build_graph`, one by one, in their place.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.errors import DataError
from alignn_core.features import atom_features
from alignn_core.structures import Structure
from alignn_torch.graphs.backend import _floats, build_graph, line_graph_fields
from alignn_torch.graphs.graph import AtomGraph
from alignn_torch.graphs.neighbors import (
    _INNER_COUNT,
    _MARGIN,
    PURE_TORCH_MIN_D2,
    NeighborList,
    Pairs,
    _concatenate,
    _offset_grid,
    _quantise,
    _row_sq,
    _screen,
    _take,
    finish_edges,
    first_k_edges,
    kth_nearest_steps,
    with_mirrors,
)
from alignn_torch.graphs.strategies import pure_torch_triplet_limit

#: structures with more candidates than this (at their first search radius) are built one by one:
#: per candidate the batched screen costs ~100-200 ns (ragged gathers), the per-structure dense
#: screen (broadcasts) a fraction of that, so beyond a few thousand candidates the saved per-call
#: overhead (~0.35 ms a structure) is spent again (measured: cost <= 1,568 5-6x faster batched,
#: 1,728-3,136 1.5x, 3,200-18,432 1.1x, Si 64 at 4,096 0.8x, mlearn Cu at 11,449 0.3x). Searching
#: each pair in one direction (:func:`with_mirrors`) moved the crossover little: ten random
#: cells of 16/32/48/64/80/96/108/128 atoms at Cu and Si densities, 3x/1.5-2.3x/1.0-2.0x/
#: 0.7-1.5x/0.65-1.2x/0.55-0.97x/0.5x/0.3-0.4x faster batched, so the limits stay
_BATCHED_CANDIDATES = 8_000
#: ... except cells of at most this many atoms, up to :data:`_FEW_ATOMS_CANDIDATES`: the batched
#: cost also grows with the atom pairs (n², each expanded to its images), the bound above
#: over-counts the images of oblique or mid-sized cells, and these cells gain from batching
#: (measured: the four 35-64-atom POSCARs of examples/props, bounds 8,192-18,432, 1.24x faster
#: batched; ten 107-atom mlearn Cu cells at 11,449 stay 0.52x, so they stay one by one)
_FEW_ATOMS = 64
_FEW_ATOMS_CANDIDATES = 20_000
#: candidates screened at once (a chunk's arrays, tens of MB at most). Larger chunks share more
#: per-call overhead: one chunk for the 50 POSCARs instead of three is 1.17x faster, 400 small
#: cells 1.17x; mlearn Cu cells do not change (measured 32,768 to 1,048,576)
_CHUNK_CANDIDATES = 262_144

_FLOATS = {"float32": torch.float32, "float64": torch.float64}


def build_graphs(structures: Sequence[Structure], settings: GraphSettings) -> list[AtomGraph]:
    """``[build_graph(s, settings) for s in structures]``, bit for bit, in far fewer calls.

    Covered: ``pure_torch`` graphs in float32/float64 of fully periodic, non-degenerate cells small
    enough for an all-pairs search (the cells :func:`build_graph` searches densely). Everything
    else, and every structure of a call whose elements lack atom features, goes through
    :func:`build_graph` in its place, so its errors are raised as there.
    """
    structures = list(structures)
    if len(structures) < 2:
        return [build_graph(structure, settings) for structure in structures]
    graphs: list[AtomGraph | None] = [None] * len(structures)
    for group in _covered(structures, settings):
        chosen = [structures[i] for i in group]
        try:
            built = _build_covered(chosen, settings)
        except DataError:  # an element without features: build_graph names it
            built = [None] * len(chosen)
        for index, graph in zip(group, built, strict=True):
            graphs[index] = graph
    return [
        graph if graph is not None else build_graph(structure, settings)
        for graph, structure in zip(graphs, structures, strict=True)
    ]


def _covered(structures: list[Structure], settings: GraphSettings) -> list[np.ndarray]:
    """Indices of the structures :func:`build_graphs` builds in batch (see there), in groups of
    about ``_CHUNK_CANDIDATES`` candidates, which bounds the memory of a group's arrays."""
    if not _settings_covered(settings):
        return []
    n_atoms = np.array([s.n_atoms for s in structures])
    fit = (n_atoms > 0) & np.array([all(s.pbc) for s in structures])
    cells = np.stack([s.cell for s in structures])
    fit &= _regular(cells)
    index = np.flatnonzero(fit)
    cells = cells[index]
    radius = _first_radius(n_atoms[index], cells, settings)
    dual_lengths = np.linalg.norm(np.linalg.inv(cells), axis=1)
    bound = _candidate_bound(n_atoms[index], dual_lengths, radius)
    few_atoms = (n_atoms[index] <= _FEW_ATOMS) & (bound <= _FEW_ATOMS_CANDIDATES)
    small = (bound <= _BATCHED_CANDIDATES) | few_atoms
    index, bound = index[small], bound[small]
    if len(index) < 2:
        return []
    group = np.cumsum(bound) // _CHUNK_CANDIDATES
    return np.split(index, np.flatnonzero(np.diff(group)) + 1)


def _candidate_bound(n_atoms: np.ndarray, dual_lengths: np.ndarray, radius: np.ndarray):
    """Per structure an upper bound on its candidates (atom pairs x images) within ``radius``:
    a pair's box of images spans at most ``2·reach + 1`` per axis (:func:`_pair_images`).

    It counts ordered pairs (n²), about twice the pairs the one-direction search screens
    (:func:`with_mirrors`). It stays so: the limits above and the chunk size were measured
    against this bound, so a chunk now screens about half of ``_CHUNK_CANDIDATES``."""
    spans = np.floor(2 * _reach(dual_lengths, radius)) + 1
    return n_atoms * n_atoms * np.prod(spans, axis=1)


def _settings_covered(settings: GraphSettings) -> bool:
    """Settings whose graphs the batched path reproduces; the rest (other strategies with their
    growing cutoffs, half precision, invalid settings that build_graph reports) go one by one."""
    limit = settings.triplet_cutoff
    return (
        settings.neighbor_strategy == "pure_torch"
        and settings.dtype in _FLOATS
        and settings.cutoff > 0
        and (limit is None or limit <= settings.cutoff)
    )


def _regular(cells: np.ndarray) -> np.ndarray:
    """Per cell: whether :func:`~alignn_torch.graphs.neighbors.search_cell` accepts it as a fully
    periodic lattice (its Gram determinant test, with a factor 2 of margin: a cell near the
    threshold, where batched and single rounding could decide differently, is left to
    build_graph, which builds it or raises exactly as it always does)."""
    lengths = np.prod(np.einsum("sij,sij->si", cells, cells), axis=1)
    gram = np.linalg.det(np.einsum("sij,skj->sik", cells, cells))
    return gram > 2e-12 * lengths


def _first_radius(n_atoms: np.ndarray, cells: np.ndarray, settings: GraphSettings) -> np.ndarray:
    """Per structure the radius searched first: the cutoff, or for a K-capped search the smaller
    radius that usually holds every atom's K nearest (``_inner_radius`` in neighbors.py)."""
    cutoff = float(settings.cutoff)
    k = int(settings.max_neighbors or 0)
    if not k:
        return np.full(len(n_atoms), cutoff)
    density = n_atoms / np.abs(np.linalg.det(cells))
    inner = (3.0 * _INNER_COUNT * k / (4.0 * np.pi * density)) ** (1.0 / 3.0)
    return np.minimum(inner, cutoff)


def _image_counts(dual_lengths: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Per structure and axis the image range ``[-c, c]`` a pair at its nearest image may need
    (as ``_dense_images``): ``radius`` reaches ``radius · |b_k|`` along axis ``k``."""
    return np.floor(_reach(dual_lengths, radius) + 0.5).astype(np.int64)


def _reach(dual_lengths: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Largest fractional difference along each axis of a pair within ``radius``, plus margin."""
    return radius[:, None] * dual_lengths * (1 + _MARGIN)


@dataclass(frozen=True)
class _Stack:
    """Covered structures side by side: atoms concatenated (global indices), cells stacked."""

    positions: np.ndarray  # [N, 3] as given
    cells: np.ndarray  # [S, 3, 3]
    n_atoms: np.ndarray  # [S]
    first_atom: np.ndarray  # [S] global index of each structure's atom 0
    owner: np.ndarray  # [N] structure of each atom
    frac: np.ndarray  # [N, 3] fractional coordinates (for the candidate screen only)
    dual_lengths: np.ndarray  # [S, 3] |b_k| of each dual basis

    @classmethod
    def of(cls, structures: list[Structure]) -> _Stack:
        positions = np.concatenate([s.positions for s in structures])
        cells = np.stack([s.cell for s in structures])
        n_atoms = np.array([s.n_atoms for s in structures])
        owner = np.repeat(np.arange(len(structures)), n_atoms)
        inverses = np.linalg.inv(cells)
        frac = np.einsum("nj,njk->nk", positions, inverses.take(owner, axis=0))
        first_atom = np.cumsum(n_atoms) - n_atoms
        dual_lengths = np.linalg.norm(inverses, axis=1)
        return cls(positions, cells, n_atoms, first_atom, owner, frac, dual_lengths)


def _times_cells(vectors: np.ndarray, cells: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Row ``e`` of ``vectors`` times ``cells[which[e]]``, bit for bit ``_times_cell``: the
    batched einsum forms each element as the two-operand one does (``((0 + v0 c0) + v1 c1) +
    v2 c2``, checked by the identity tests)."""
    return np.einsum("nj,njk->nk", vectors.astype(np.float64), cells.take(which, axis=0))


def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of ``counts`` rows: each row's group and its index inside the group."""
    group = np.repeat(np.arange(len(counts)), counts)
    index = np.arange(group.shape[0])
    index -= np.repeat(np.cumsum(counts) - counts, counts)
    return group, index


@dataclass(frozen=True)
class _Images:
    """Every image offset in a box ``[-c, c]³`` per structure, in C order, ``c`` the largest
    :func:`_image_counts` of the structures (one side for all keeps strides constant)."""

    count: int  # c
    first: np.ndarray  # [S'] row of each structure's image (-c, -c, -c)
    offsets: np.ndarray  # [S' · side³, 3] int64
    vectors: np.ndarray  # [S' · side³, 3] offset @ cell

    @property
    def side(self) -> int:
        return 2 * self.count + 1

    @classmethod
    def of(cls, stack: _Stack, which: np.ndarray, radius: np.ndarray) -> _Images:
        count = int(_image_counts(stack.dual_lengths.take(which, axis=0), radius).max())
        box = _offset_grid(count, count, count)
        offsets = np.tile(box, (len(which), 1))
        structure = np.repeat(which, len(box))
        vectors = _times_cells(offsets, stack.cells, structure)
        return cls(count, np.arange(len(which)) * len(box), offsets, vectors)


def _pairs_within(
    stack: _Stack, which: np.ndarray, radius: np.ndarray, min_d2: float
) -> list[Pairs]:
    """Every pair of the structures ``which`` with ``min_d2 < |r|² <= radius[s]²``, global atom
    indices, in chunks of about ``_CHUNK_CANDIDATES`` candidates (structures are not split).

    Each atom pair is taken at its nearest image (rounded fractional difference ``d``) and at
    each image ``o`` with ``|d_k + o_k| <= reach_k`` on every axis (a box per pair, a few images
    instead of the structure's whole box), screened loosely (``_screen``) and then tested exactly
    on ``r`` computed as :func:`~alignn_torch.graphs.neighbors.pairs_within` computes it.
    """
    images = _Images.of(stack, which, radius)
    n_atoms = stack.n_atoms.take(which)
    bound = _candidate_bound(n_atoms, stack.dual_lengths.take(which, axis=0), radius)
    chunk = np.cumsum(bound) // _CHUNK_CANDIDATES
    return [
        _chunk_pairs(stack, which, radius, images, part, min_d2)
        for part in np.split(np.arange(len(which)), np.flatnonzero(np.diff(chunk)) + 1)
    ]


def _chunk_pairs(
    stack: _Stack,
    which: np.ndarray,
    radius: np.ndarray,
    images: _Images,
    part: np.ndarray,
    min_d2: float,
) -> Pairs:
    """:func:`_pairs_within` for the structures ``which[part]``."""
    structures = which.take(part)
    n_atoms = stack.n_atoms.take(structures)
    owner, local = _ragged(n_atoms * (n_atoms + 1) // 2)
    owner = part.take(owner)  # position in ``which`` of each pair's structure
    structure = which.take(owner)
    first, second = _atom_pairs(int(n_atoms.max()))
    i = first.take(local)
    j = second.take(local)
    base = stack.first_atom.take(structure)
    i += base
    j += base
    diff = _take(stack.frac, j) - _take(stack.frac, i)
    nearest = np.rint(diff)
    diff -= nearest
    near_vectors = _times_cells(diff, stack.cells, structure)
    reach = _reach(stack.dual_lengths.take(which, axis=0), radius).take(owner, axis=0)
    pair, row = _pair_images(diff, reach, images, owner)
    close = _take(near_vectors, pair)
    close += _take(images.vectors, row)
    keep = np.flatnonzero(_screen(_row_sq(close), radius.take(owner.take(pair)), min_d2))
    pair, row = pair.take(keep), row.take(keep)
    src, dst, structure = i.take(pair), j.take(pair), structure.take(pair)
    shift = _take(images.offsets, row) - _take(nearest, pair).astype(np.int64)
    r = _take(stack.positions, dst) - _take(stack.positions, src)
    r += _times_cells(shift, stack.cells, structure)
    d2 = _row_sq(r)
    bound = radius.take(owner.take(pair))
    accept = np.flatnonzero((d2 > min_d2) & (d2 <= bound * bound))
    src, dst = src.take(accept), dst.take(accept)
    pairs = (src, dst, _take(shift, accept), _take(r, accept), d2[accept])
    return with_mirrors(pairs, np.flatnonzero(src != dst))  # i -> i: searched at every image


@functools.lru_cache(maxsize=16)
def _atom_pairs(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Local atom indices ``(i, j)``, ``i <= j < n_atoms``, ordered by ``j`` then ``i``, so that
    the first ``n (n + 1) / 2`` entries are the pairs of an ``n``-atom structure for any
    ``n <= n_atoms``. Read-only: cached."""
    second = np.repeat(np.arange(n_atoms), np.arange(1, n_atoms + 1))
    first = np.arange(second.shape[0]) - second * (second + 1) // 2
    first.flags.writeable = False
    second.flags.writeable = False
    return first, second


def _pair_images(
    diff: np.ndarray, reach: np.ndarray, images: _Images, owner: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``(pair, image row)``: per pair the offsets ``o`` with ``|diff + o| <= reach``
    on each axis (an exact bound: ``|(r · b_k)| <= |r| |b_k|``), as rows of ``images``.

    A pair's offsets are a box of spans ``(a, b, c)`` from its low corner; its rows are the
    corner's row plus the offsets of :func:`_box_rows` for that span, so expanding them is one
    ``repeat`` and two gathers per candidate.
    """
    side = images.side
    low = np.ceil(-reach - diff)
    span = np.floor(reach - diff) - low + 1
    np.maximum(span, 0, out=span)
    span = span.astype(np.int64)
    low = low.astype(np.int64)
    low += images.count
    corner = (low[:, 0] * side + low[:, 1]) * side + low[:, 2] + images.first.take(owner)
    rows, first_row = _box_rows(side)
    code = (span[:, 0] * (side + 1) + span[:, 1]) * (side + 1) + span[:, 2]
    count = span[:, 0] * span[:, 1] * span[:, 2]
    pair = np.repeat(np.arange(len(count)), count)
    position = np.arange(pair.shape[0])
    position += np.repeat(first_row.take(code) - (np.cumsum(count) - count), count)
    row = rows.take(position)
    row += np.repeat(corner, count)
    return pair, row


@functools.lru_cache(maxsize=16)
def _box_rows(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Row offsets ``(x · side + y) · side + z`` of the points ``x < a, y < b, z < c`` of a box
    of spans ``(a, b, c)`` inside a cube of ``side``, for every span up to ``side`` per axis:
    all of them concatenated, and where each span's begin (index ``(a·(side+1) + b)·(side+1) + c``).
    Read-only: cached."""
    spans = range(side + 1)
    pieces = [
        ((np.arange(a)[:, None, None] * side + np.arange(b)[:, None]) * side + np.arange(c)).ravel()
        for a in spans
        for b in spans
        for c in spans
    ]
    sizes = np.array([len(piece) for piece in pieces])
    rows = np.concatenate(pieces)
    first = np.cumsum(sizes) - sizes
    rows.flags.writeable = False
    first.flags.writeable = False
    return rows, first


def _neighbor_lists(stack: _Stack, settings: GraphSettings) -> NeighborList:
    """The pure_torch edges of every structure of ``stack``, concatenated in structure order, each
    structure's edges exactly those (and in the order) ``radius_neighbors`` gives it."""
    cutoff = float(settings.cutoff)
    k = int(settings.max_neighbors or 0)
    everyone = np.arange(len(stack.n_atoms))
    radius = _first_radius(stack.n_atoms, stack.cells, settings)
    pieces = _pairs_within(stack, everyone, radius, PURE_TORCH_MIN_D2)
    inner = radius < cutoff
    if not inner.any():
        return finish_edges(pieces, len(stack.owner), k or None)
    complete, kept = _nearest_if_complete(stack, _concatenate(pieces), k, radius, inner)
    at_cutoff = _select_structures(pieces, stack.owner, ~inner)
    again = np.flatnonzero(inner & ~complete)
    if len(again):
        at_cutoff += _pairs_within(stack, again, np.full(len(again), cutoff), PURE_TORCH_MIN_D2)
    full = finish_edges(at_cutoff, len(stack.owner), k)
    return _merge(kept, full)


def _nearest_if_complete(
    stack: _Stack, pairs: Pairs, k: int, radius: np.ndarray, inner: np.ndarray
) -> tuple[np.ndarray, NeighborList]:
    """Per structure: whether it is ``inner`` (searched below the cutoff) and its pairs within
    ``radius[s]`` provably hold its K-capped list (``neighbors._nearest_if_complete``'s proof, per
    structure), and the capped edges of the structures for which both hold."""
    if len(pairs[0]) == 0:
        return np.zeros(len(stack.n_atoms), dtype=bool), NeighborList(*pairs[:4])
    counts = np.bincount(pairs[0], minlength=len(stack.owner))
    order, starts, kth = kth_nearest_steps(pairs, counts, k)
    atom_complete = kth < _quantise(radius * radius).take(stack.owner)
    complete = np.logical_and.reduceat(atom_complete, stack.first_atom) & inner
    atoms = np.flatnonzero(complete.take(stack.owner))
    return complete, first_k_edges(pairs, order, starts.take(atoms), k)


def _select_structures(pieces: list[Pairs], owner: np.ndarray, chosen: np.ndarray) -> list[Pairs]:
    """The pairs whose source belongs to a ``chosen`` structure (bool per structure)."""
    selected = []
    for pairs in pieces:
        keep = np.flatnonzero(chosen.take(owner.take(pairs[0])))
        if len(keep):
            selected.append(tuple(_take(a, keep) for a in pairs))
    return selected


def _merge(first: NeighborList, second: NeighborList) -> NeighborList:
    """Two edge lists of disjoint structures, each sorted by global source, as one so sorted."""
    order = np.argsort(np.concatenate([first.src, second.src]), kind="stable")
    return NeighborList(
        *(
            np.concatenate(pair).take(order, axis=0)
            for pair in zip(
                (first.src, first.dst, first.shift, first.r),
                (second.src, second.dst, second.shift, second.r),
                strict=True,
            )
        )
    )


def _build_covered(structures: list[Structure], settings: GraphSettings) -> list[AtomGraph]:
    """:func:`build_graphs` for covered structures: global arrays, then one graph per structure."""
    dtype = _FLOATS[settings.dtype]
    numbers = np.concatenate([s.numbers for s in structures])
    features = atom_features(numbers, settings.atom_features)  # first: it raises for bad elements
    stack = _Stack.of(structures)
    edges = _neighbor_lists(stack, settings)
    r = _floats(edges.r, dtype, copy=False)
    limit = pure_torch_triplet_limit(settings, float(settings.cutoff))
    lg_src, lg_dst, lg_cos = line_graph_fields(edges, r, limit, settings)
    n_structures = len(structures)
    edge_owner = stack.owner.take(edges.src)
    n_edges = np.bincount(edge_owner, minlength=n_structures)
    triplet_owner = edge_owner.take(lg_src.numpy())
    n_triplets = np.bincount(triplet_owner, minlength=n_structures)
    first_edge = (np.cumsum(n_edges) - n_edges).take(triplet_owner)
    first_atom = stack.first_atom.take(edge_owner)
    volume = np.abs(np.linalg.det(stack.cells))
    per_graph = np.ones(n_structures, dtype=np.int64)
    splits = [
        _split(stack.n_atoms, features, dtype),
        _split(stack.n_atoms, numbers),
        _split(stack.n_atoms, stack.positions, dtype),
        _split(stack.n_atoms, np.zeros(len(numbers), np.int64)),
        _split(n_edges, edges.src - first_atom),
        _split(n_edges, edges.dst - first_atom),
        r.split(n_edges.tolist()),
        _split(n_edges, edges.shift, dtype),
        _split(n_edges, np.zeros(len(edge_owner), np.int64)),
        _split(n_triplets, lg_src.numpy() - first_edge),
        _split(n_triplets, lg_dst.numpy() - first_edge),
        lg_cos.split(n_triplets.tolist()),
        _split(per_graph, stack.cells, dtype),
        _split(per_graph, volume, dtype),
        _split(per_graph, stack.n_atoms.astype(np.int64)),
        _split(per_graph, n_edges),
        _split(per_graph, n_triplets),
    ]
    return [AtomGraph(*fields) for fields in zip(*splits, strict=True)]


def _split(
    counts: np.ndarray, array: np.ndarray, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, ...]:
    """``array`` (cast to float ``dtype`` as build_graph casts it, if given) as one tensor per
    group of ``counts`` leading rows. The tensors are views of one buffer per field (one split
    call instead of a copy and a tensor per graph); groups never overlap. ``array`` must be a
    fresh array: it is not copied."""
    tensor = torch.from_numpy(array) if dtype is None else _floats(array, dtype, copy=False)
    return tensor.split(counts.tolist())
