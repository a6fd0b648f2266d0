"""Periodic radius neighbour search in O(N), vectorised with numpy.

Why not upstream's approach: upstream's torch path compares every atom with every image of every
atom (O(K·N²) time and memory) and assumes wrapped coordinates. Here atoms are binned in
*fractional* space so that a bin is at least one cutoff "thick" along every lattice direction
(measured along the plane normal, so triclinic cells are exact); each atom then only meets the
atoms of the adjacent bins, and each pair is met in one direction only (the forward half of the
bin offsets): the reverse edge is its mirror, ``-r`` exactly, which halves the candidates.
Periodicity is handled by wrapping bin indices. Small structures
(up to a few hundred atoms, or any cell the cell lists would cut into at most two bins per
axis) take a dense path instead,
which has less bookkeeping: every pair at its nearest image (the rounded fractional difference),
plus the few further images a cell narrower than two cutoffs needs, so cells in which an atom
sees its own images work too. In both paths offsets whose nearest possible pair is beyond the
cutoff are dropped (the image box is trimmed towards a sphere).

A search capped at K neighbours per atom first searches a radius that holds about 2K atoms at the
cell's mean density and keeps the result only if it provably equals the full search's
(:func:`_nearest_if_complete`); at cutoff 8 Å this finds ~10x fewer pairs.

No Python loop runs over atoms, edges or images; the only loops are over chunks of source atoms,
which bound memory for very large structures.

Conventions (shared with :mod:`alignn_torch.graphs.graph`): for an edge ``src -> dst`` with integer
image ``shift`` of ``dst``, ``r = positions[dst] - positions[src] + shift @ cell``. Input
coordinates may be unwrapped: atoms are wrapped internally for binning (the dense path rounds
differences, which needs no wrap), the wrap is folded back into ``shift``, and ``r`` is always
computed from the *given* positions, so it is what upstream computes for the same
(src, dst, shift).

Everything is computed in float64; the backend casts to the model dtype afterwards.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from alignn_core.errors import DataError

#: upstream's torch search keeps pairs with ``d² > 1e-8`` (only exact self-overlaps are dropped)
PURE_TORCH_MIN_D2 = 1e-8
#: distances closer than this (in Å) count as ties for ordering, the K-cap and shell completion;
#: float noise (~1e-15 Å) would otherwise decide between symmetry-equivalent neighbours
TIE_TOLERANCE = 1e-8
#: upper bound on candidate pairs materialised at once (memory stays ~ a few hundred MB)
_CANDIDATE_BUDGET = 2_000_000
#: relative safety margin on the search radius so that rounding never loses a neighbour
_MARGIN = 1e-9
#: bins per cutoff along each axis; 2 would search a smaller volume (125 bins of (rc/2)³ instead
#: of 27 of rc³) but measured 2-4x slower: the per-(atom, bin) bookkeeping then dominates
_BINS_PER_CUTOFF = 1
#: atoms the first, inner search of a K-capped search expects per source, in units of K (see
#: :func:`_inner_radius`); larger wastes work, smaller makes the fallback to the full radius common
_INNER_COUNT = 2.0
#: the dense path (every atom against every atom at every needed image) is taken when the cell
#: lists would have at most two bins per axis (:func:`_few_bins`), or while it has at most this
#: many candidates: beyond, the cell lists' fixed bookkeeping pays off (measured after the cell
#: lists' one-way search, capped at 8 Å, fcc Cu: 256 atoms, 65,536 candidates, 1.45x faster dense;
#: 320 atoms, 102,400, 1.1x; 400, 160,000, even; 500, 250,000, 1.5x faster binned)
_DENSE_CANDIDATES = 131_072
#: periodic images a search may need for one cell before it is refused as malformed. Real cells
#: need far fewer (a 1 Å cell at a 20 Å cutoff: 41³ = 68,921); a nearly flat lattice, which still
#: passes the degeneracy test of :func:`search_cell`, would need millions and exhaust memory
MAX_IMAGES = 1_000_000
_CORNERS = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=float)


@dataclass(frozen=True)
class NeighborList:
    """Directed edges sorted by ``(src, distance, dst, shift)``; all arrays share the edge axis.

    The sort order is part of the contract: edges are grouped by ``src`` (nearest first), which the
    K-nearest caps rely on and which makes graphs reproducible bit for bit.
    """

    src: np.ndarray  # [E] int64
    dst: np.ndarray  # [E] int64
    shift: np.ndarray  # [E, 3] int64 image of dst
    r: np.ndarray  # [E, 3] float64

    @property
    def distance(self) -> np.ndarray:
        """``|r|`` per edge (float64)."""
        return np.sqrt(np.einsum("ij,ij->i", self.r, self.r))

    def __len__(self) -> int:
        return int(self.src.shape[0])

    def select(self, keep: np.ndarray) -> NeighborList:
        """Subset by a boolean mask or index array (order of ``keep`` is kept)."""
        index = np.flatnonzero(keep) if keep.dtype == bool else keep
        return NeighborList(*(_take(a, index) for a in (self.src, self.dst, self.shift, self.r)))


def edge_vectors(
    positions: np.ndarray, cell: np.ndarray, src: np.ndarray, dst: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """``positions[dst] - positions[src] + shift @ cell`` (the one edge convention)."""
    return _take(positions, dst) - _take(positions, src) + _shift_vectors(shift, cell)


def _shift_vectors(shift: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """``shift @ cell`` for integer image shifts ``[E, 3]``, bit for bit :func:`_times_cell`'s.

    Why: einsum costs ~20 ns per row, yet a graph's shifts take few distinct values. The product
    is taken once per image of the smallest cube holding them all and gathered by the image's
    index. The same einsum computes the cube, and it computes every output element on its own
    (``((0 + s0 c0) + s1 c1) + s2 c2``, checked on millions of rows), so the bits are the same.
    """
    largest = int(np.abs(shift).max()) if len(shift) else 0
    side = 2 * largest + 1
    if side**3 * 4 > len(shift):  # the cube is not much smaller than the list: einsum it directly
        return _times_cell(shift, cell)
    index = shift[:, 0] * side
    index += shift[:, 1]
    index *= side
    index += shift[:, 2]
    index += largest * (side * side + side + 1)
    return _take(_times_cell(_offset_grid(largest, largest, largest), cell), index)


def _take(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``array[index]`` along the first axis; ``take`` copies rows of ``[E, 3]`` arrays ~4x
    faster than fancy indexing."""
    return array.take(index, axis=0)


def _times_cell(vectors: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """``vectors @ cell`` for ``[..., 3]`` arrays.

    einsum, because numpy's ``matmul`` for tall ``[M, 3] @ [3, 3]`` products is ~20x slower here.
    """
    return np.einsum("...j,jk->...k", vectors.astype(np.float64), cell)


def search_cell(cell: np.ndarray, pbc: tuple[bool, bool, bool]) -> np.ndarray:
    """A non-singular basis equal to ``cell`` on periodic axes.

    Non-periodic rows never carry an image shift, so their value only matters for binning; they are
    replaced by orthonormal vectors perpendicular to the periodic ones. This accepts molecules with
    a zero cell and slabs whose vacuum vector is zero, and makes the in-plane bin thickness the true
    in-plane spacing.
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    periodic = [k for k in range(3) if pbc[k]]
    rows = cell if len(periodic) == 3 else cell[periodic]  # (a copy costs more than the check)
    if periodic:
        # Gram determinant = squared volume of the periodic vectors, relative to their lengths.
        lengths = np.prod(np.einsum("ij,ij->i", rows, rows))
        if not np.linalg.det(rows @ rows.T) > 1e-12 * lengths:
            raise DataError(
                f"periodic lattice vectors {rows.tolist()} are degenerate; "
                "set pbc False on axes without a lattice vector"
            )
    basis = cell.copy()
    free = [k for k in range(3) if not pbc[k]]
    if not free:
        return basis
    # Orthonormal complement of the periodic span, from the SVD of the periodic rows.
    if periodic:
        _, _, vt = np.linalg.svd(rows)
        complement = vt[len(periodic) :]
    else:
        complement = np.eye(3)
    for k, vec in zip(free, complement, strict=True):
        basis[k] = vec
    return basis


def _bin_layout(
    frac: np.ndarray, pbc: tuple[bool, bool, bool], reach: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-axis bin counts, atom bin indices, neighbour-bin reach and bin widths.

    ``reach[k]`` is the largest fractional displacement along axis ``k`` of any pair within the
    cutoff (``cutoff · |b_k|`` with ``b`` the dual basis). With bins ``w`` wide (fractional units)
    a pair's bin indices differ by at most ``floor(reach / w) + 1``, returned as ``span``.
    """
    n_bins = np.ones(3, dtype=np.int64)
    bins = np.zeros(frac.shape, dtype=np.int64)
    span = np.zeros(3, dtype=np.int64)
    widths = np.ones(3)
    for k in range(3):
        if pbc[k]:
            m = int(_periodic_bins(reach[k]))
            if m > 1:
                bins[:, k] = np.clip(np.floor(frac[:, k] * m).astype(np.int64), 0, m - 1)
            width = 1.0 / m
        else:
            low = float(frac[:, k].min())
            extent = float(frac[:, k].max()) - low
            # Cap the bin count so that a very sparse molecule cannot overflow the linear bin id.
            width = max(reach[k] / _BINS_PER_CUTOFF * (1 + 1e-6), extent / 2**16, 1e-12)
            idx = np.floor((frac[:, k] - low) / width).astype(np.int64)
            m = int(idx.max()) + 1
            bins[:, k] = idx
        n_bins[k] = m
        widths[k] = width
        span[k] = int(np.floor(reach[k] / width)) + 1
    return n_bins, bins, span, widths


def _periodic_bins(reach: np.ndarray | float) -> np.ndarray:
    """Bins along a periodic axis of fractional ``reach``: strictly fewer than
    ``_BINS_PER_CUTOFF / reach``, so that ``span <= _BINS_PER_CUTOFF`` (:func:`_bin_layout`)."""
    return np.maximum(1, np.ceil(_BINS_PER_CUTOFF / np.asarray(reach)).astype(np.int64) - 1)


def _bin_offsets(
    span: np.ndarray,
    widths: np.ndarray,
    basis: np.ndarray,
    cutoff: float,
    pbc: tuple[bool, bool, bool],
    n_bins: np.ndarray,
) -> np.ndarray:
    """Bin offsets ``[O, 3]`` that can hold a neighbour, box corners beyond reach dropped.

    Two points in bins ``o`` apart differ by ``(o + u) * w`` in fractional coordinates with
    ``|u_k| < 1``, so ``|r| >= |(o * w) @ basis| - max_u |(u * w) @ basis|`` (the max is at a corner
    of the box). Offsets whose lower bound exceeds the cutoff are dropped; this trims the
    image box of small cells towards a sphere (~40% fewer candidates at cutoff 8).
    """
    axes = []
    for k in range(3):
        if not pbc[k] and n_bins[k] == 1:
            axes.append(np.zeros(1, dtype=np.int64))  # one non-periodic bin: nothing beside it
        else:
            axes.append(np.arange(-span[k], span[k] + 1))
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    box_radius = np.linalg.norm(_times_cell(_CORNERS * widths, basis), axis=1).max()
    centre = np.linalg.norm(_times_cell(grid * widths, basis), axis=1)
    return grid[centre - box_radius <= cutoff * (1 + _MARGIN) + 1e-9]


def sort_edges(
    src: np.ndarray,
    dst: np.ndarray,
    shift: np.ndarray,
    r: np.ndarray,
    distance2: np.ndarray | None = None,
) -> NeighborList:
    """Sort by ``(src, distance within TIE_TOLERANCE, dst, shift)``.

    ``distance2`` (``|r|²``, if already known) saves recomputing it.
    """
    if len(src) == 0:
        return NeighborList(src, dst, shift, r)
    if distance2 is None:
        distance2 = np.einsum("ij,ij->i", r, r)
    order = _edge_order(src, dst, shift, _quantise(distance2))
    return NeighborList(*(_take(a, order) for a in (src, dst, shift, r)))


def _edge_order(
    src: np.ndarray, dst: np.ndarray, shift: np.ndarray, quantised: np.ndarray
) -> np.ndarray:
    """The permutation sorting (non-empty) edges by ``(src, quantised, dst, shift)``.

    The six keys are packed into one int64 when they fit (small cells: always) or else two
    (cutoffs below ~40 Å and fewer than ~10⁸ atoms); one argsort is ~2x cheaper than a two-key
    lexsort, which is 3x cheaper than the six-key lexsort left for the rest; the stable sort
    (timsort) is ~2x faster than the default on pairs that arrive grouped by source, as the
    dense search yields them. Pairs that do not (mirrored ones) are grouped by source first
    with a radix sort of 16-bit sources (Si 512: 0.26 instead of 0.42 ms). (src, dst, shift) is
    unique per edge, so every variant gives the same permutation.
    """
    n = int(max(src.max(), dst.max())) + 1
    largest = int(np.abs(shift).max())
    base = 2 * largest + 1
    width = int(quantised.max()) + 1
    limit = 2**62
    if n * width * n * base**3 < limit or (n * width < limit and n * base**3 < limit):
        code = (shift[:, 0] + largest) * base**2 + (shift[:, 1] + largest) * base + shift[:, 2]
        code += largest
        first = src * width + quantised
        if n * width * n * base**3 < limit:
            key = (first * n + dst) * base**3 + code
            if n <= 1 << 16 and np.any(src[1:] < src[:-1]):
                by_source = np.argsort(src.astype(np.uint16), kind="stable")  # a radix sort
                return by_source.take(np.argsort(key.take(by_source), kind="stable"))
            return np.argsort(key, kind="stable")
        return np.lexsort((dst * base**3 + code, first))
    return np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], dst, quantised, src))


def radius_neighbors(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: tuple[bool, bool, bool],
    cutoff: float,
    *,
    min_d2: float = PURE_TORCH_MIN_D2,
    max_neighbors: int | None = None,
) -> NeighborList:
    """All directed pairs with ``min_d2 < |r|² <= cutoff²`` (inclusive cutoff, as upstream).

    ``min_d2`` drops coincident points (upstream's torch path: 1e-8, i.e. only an atom and itself at
    zero shift); jarvis' k-nearest search uses 0.15² here. ``max_neighbors`` (None or 0: no cap)
    keeps the K nearest per source; ties are broken by ``(dst, shift)``, deterministically, whereas
    upstream's unstable argsort picks arbitrarily among equidistant neighbours.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = (bool(pbc[0]), bool(pbc[1]), bool(pbc[2]))
    n = positions.shape[0]
    if n == 0 or not cutoff > 0:
        return _empty()
    frame = _Frame.of(positions, cell, pbc)
    _refuse_flat_cells(frame, float(cutoff))
    k = int(max_neighbors or 0)
    inner = _inner_radius(frame, k, float(cutoff))
    if inner is not None:
        edges = _nearest_if_complete(_pairs(frame, inner, min_d2), n, k, inner)
        if edges is not None:
            return edges
    return finish_edges(_pairs(frame, float(cutoff), min_d2), n, k or None)


@dataclass(frozen=True)
class _Frame:
    """A structure prepared for searches at any radius."""

    positions: np.ndarray  # [N, 3] as given
    cell: np.ndarray  # [3, 3] as given
    pbc: tuple[bool, bool, bool]
    basis: np.ndarray  # search_cell(cell, pbc)
    inverse: np.ndarray  # basis⁻¹
    frac: np.ndarray  # [N, 3] fractional coordinates of the given positions
    periodic: np.ndarray  # [3] bool, pbc as an array
    dual_lengths: np.ndarray  # [3] |b_k| of the dual basis: a radius r reaches r·|b_k| along k

    @classmethod
    def of(cls, positions: np.ndarray, cell: np.ndarray, pbc: tuple[bool, bool, bool]) -> _Frame:
        basis = search_cell(cell, pbc)
        inverse = np.linalg.inv(basis)
        frac = _times_cell(positions, inverse)
        dual_lengths = np.linalg.norm(inverse, axis=0)
        return cls(positions, cell, pbc, basis, inverse, frac, np.array(pbc), dual_lengths)


def _inner_radius(frame: _Frame, k: int, cutoff: float) -> float | None:
    """A radius that usually holds every atom's ``k`` nearest neighbours, or None to skip.

    Why: a K-capped search keeps ~k pairs per atom, yet at cutoff 8 Å it finds ~15x more; the
    candidate work grows with the cube of the radius. The radius of a sphere holding
    ``_INNER_COUNT · k`` atoms at the cell's mean density is searched first, and
    :func:`_nearest_if_complete` proves (or refutes) that it holds every kept pair.
    """
    if not k or not all(frame.pbc):
        return None
    density = frame.positions.shape[0] / abs(float(np.linalg.det(frame.cell)))
    radius = (3.0 * _INNER_COUNT * k / (4.0 * np.pi * density)) ** (1.0 / 3.0)
    return radius if radius < cutoff else None


def _pairs(frame: _Frame, radius: float, min_d2: float) -> list[Pairs]:
    """Accepted pairs within ``radius`` (in chunks), from the cheaper candidate generator."""
    reach = radius * frame.dual_lengths * (1 + _MARGIN)
    periodic = frame.periodic
    n = frame.frac.shape[0]
    images = _dense_images(frame.frac, periodic, frame.basis, reach, radius)
    if n * n * len(images) <= _DENSE_CANDIDATES or _few_bins(frame.frac, periodic, reach):
        candidates = _dense_candidates(frame.frac, periodic, frame.basis, images, radius, min_d2)
        return [
            pairs_within(frame.positions, frame.cell, i, j, shift, radius, min_d2)
            for i, j, shift in candidates
        ]
    pieces = []
    for i, j, shift in _binned_search(frame, periodic, reach, radius, min_d2):
        pairs = pairs_within(frame.positions, frame.cell, i, j, shift, radius, min_d2)
        # every pair but i -> i at shift 0 (only min_d2 < 0 admits it), its own reverse
        mirror = None if min_d2 >= 0 else np.flatnonzero((pairs[0] != pairs[1]) | pairs[2].any(1))
        pieces.append(with_mirrors(pairs, mirror))
    return pieces


def _few_bins(frac: np.ndarray, periodic: np.ndarray, reach: np.ndarray) -> bool:
    """Whether :func:`_bin_layout` would cut no periodic axis into more than two bins and leave
    every other axis one bin; then the dense path screens fewer candidates than the cell lists.

    With ``m <= 2`` bins on an axis, the three bins an atom scans (offsets -1, 0, +1) span 1.5
    cell widths or more, against the one width of a nearest image (which such a cell, at least
    twice the reach wide, needs alone). Measured on fcc cells of 500-1,372 atoms, uncapped at
    8-10 Å with two bins per axis: the dense path 1.2-1.33x faster; with one or two bins mixed,
    0.93-1.16x; from three bins per axis the cell lists win (1.34x at 1,372 atoms).
    """
    one_bin = np.ptp(frac, axis=0) < reach  # a non-periodic axis: its extent within the reach
    return bool(np.all(np.where(periodic, _periodic_bins(reach) <= 2, one_bin)))


def _binned_search(
    frame: _Frame, periodic: np.ndarray, reach: np.ndarray, radius: float, min_d2: float
) -> Candidates:
    """:func:`_binned_candidates` on atoms wrapped into the cell, the wrap folded into shifts."""
    wrap = np.where(periodic, np.floor(frame.frac), 0.0)
    frac = frame.frac - wrap
    wrap = wrap.astype(np.int64)
    n_bins, bins, span, widths = _bin_layout(frac, frame.pbc, reach)
    offsets = _forward_half(_bin_offsets(span, widths, frame.basis, radius, frame.pbc, n_bins))
    wrapped = _times_cell(frac, frame.basis)
    for i, j, image in _binned_candidates(
        wrapped, bins, n_bins, offsets, periodic, frame.basis, radius, min_d2
    ):
        image -= _take(wrap, j)
        image += _take(wrap, i)
        yield i, j, image


def _forward_half(offsets: np.ndarray) -> np.ndarray:
    """Of a set of bin offsets closed under negation, ``0`` and the lexicographically positive
    one of each pair ``(o, -o)``.

    A pair ``i -> j`` at image ``s`` is met at exactly one bin offset ``o`` (the bins' difference
    plus ``s`` times the bin count per periodic axis), and ``j -> i`` at ``-s`` at ``-o``; so
    these offsets meet every pair once, except in the atom's own bin (``o = 0``), which holds
    both directions (:func:`_binned_candidates` keeps one).
    """
    x, y, z = offsets.T
    return offsets[(x > 0) | ((x == 0) & ((y > 0) | ((y == 0) & (z >= 0))))]


Pairs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def with_mirrors(pairs: Pairs, mirror: np.ndarray | None = None) -> Pairs:
    """``pairs`` found in one direction, plus the reverse edge ``j -> i`` at image ``-shift``
    of each pair ``mirror`` indexes (None: of every pair): the edges a search in both directions
    finds, from half its candidates (the reverse of a pair within the cutoff is within it too).

    The reverse vector is ``-r`` bit for bit, zeros aside: ``r`` is ``(p_j - p_i) + shift @ cell``
    (:func:`edge_vectors`) and negating every operand of an IEEE sum or product negates its
    result exactly, except that a sum of zero is ``+0`` either way (``shift @ cell`` is never
    ``-0``: einsum starts its sums from ``+0``). ``+ 0.0`` turns exactly the ``-0`` of ``-r``
    back into ``+0``. ``|r|²`` is the same. So the edges, their vectors and (after sorting)
    their order are those of a search in both directions, bit for bit.
    """
    src, dst, shift, r, d2 = pairs
    if mirror is None:
        back_src, back_dst, back_shift, back_r, back_d2 = dst, src, shift, r, d2
    else:
        back_src, back_dst, back_d2 = dst.take(mirror), src.take(mirror), d2.take(mirror)
        back_shift, back_r = _take(shift, mirror), _take(r, mirror)
    reverse = -back_r
    reverse += 0.0
    return (
        np.concatenate([src, back_src]),
        np.concatenate([dst, back_dst]),
        np.concatenate([shift, -back_shift]),
        np.concatenate([r, reverse]),
        np.concatenate([d2, back_d2]),
    )


def pairs_within(
    positions: np.ndarray,
    cell: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    shift: np.ndarray,
    cutoff: float,
    min_d2: float,
) -> Pairs:
    """The candidate pairs with ``min_d2 < |r|² <= cutoff²``: ``(src, dst, shift, r, |r|²)``.

    The one place where a pair is accepted: :func:`radius_neighbors` and the neighbour-list cache
    (:mod:`alignn_torch.graphs.reuse`) both call it, so a cached list gives bit-identical edges.
    """
    r = edge_vectors(positions, cell, src, dst, shift)
    d2 = _row_sq(r)
    keep = (d2 > min_d2) & (d2 <= float(cutoff) ** 2)
    if keep.all():  # the usual case after a screen: skip five copies
        return src, dst, shift, r, d2
    index = np.flatnonzero(keep)
    return _take(src, index), _take(dst, index), _take(shift, index), _take(r, index), d2[index]


def finish_edges(pieces: list[Pairs], n_atoms: int, max_neighbors: int | None) -> NeighborList:
    """Accepted pairs (in chunks) -> the sorted, optionally K-capped :class:`NeighborList`."""
    pairs = _concatenate(pieces)
    if pairs is None:
        return _empty()
    if max_neighbors:
        pairs = _nearest_shells(pairs, n_atoms, int(max_neighbors))
    edges = sort_edges(*pairs)
    if max_neighbors:
        edges = cap_nearest(edges, n_atoms, int(max_neighbors))
    return edges


def _concatenate(pieces: list[Pairs]) -> Pairs | None:
    """One :data:`Pairs` from chunks, or None for no chunk."""
    if not pieces:
        return None
    if len(pieces) == 1:
        return pieces[0]
    return tuple(np.concatenate(p) for p in zip(*pieces, strict=True))  # type: ignore[return-value]


def _quantise(d2: np.ndarray) -> np.ndarray:
    """Distance in ``TIE_TOLERANCE`` steps (int64), the ordering key of :func:`sort_edges`."""
    steps = np.sqrt(d2)
    steps /= TIE_TOLERANCE
    return np.floor(steps, out=steps).astype(np.int64)


def _nearest_shells(pairs: Pairs, n_atoms: int, k: int) -> Pairs:
    """Drop the pairs that cannot be among the first ``k`` of their source after
    :func:`sort_edges`: keep those not farther (in ``TIE_TOLERANCE`` steps) than the source's
    ``k``-th nearest, ties included, so the capped list is unchanged.

    Why: a capped search at cutoff 8 Å finds ~15x more pairs than it keeps, and the full
    multi-key sort of all of them was ~16% of a graph build; one single-key sort here
    leaves only ~k pairs per atom for it.
    """
    src = pairs[0]
    if len(src) <= k:
        return pairs
    quantised = _quantise(pairs[4])
    width = int(quantised.max()) + 1
    if n_atoms * width >= 2**62:
        return pairs
    key = src * width + quantised
    ordered = np.sort(key, kind="stable")  # timsort: pairs arrive grouped by source
    counts = np.bincount(src, minlength=n_atoms)
    starts = np.cumsum(counts) - counts
    bound = np.full(n_atoms, np.iinfo(np.int64).max)
    full = counts > k
    bound[full] = ordered[starts[full] + k - 1]
    keep = np.flatnonzero(key <= bound[src])
    return tuple(_take(a, keep) for a in pairs)  # type: ignore[return-value]


def _nearest_if_complete(
    pieces: list[Pairs], n_atoms: int, k: int, radius: float
) -> NeighborList | None:
    """The K-capped list from the pairs within ``radius`` if they provably hold it, else None.

    A kept pair is no farther (in ``TIE_TOLERANCE`` steps) than its source's ``k``-th nearest.
    A pair the search did not find has ``|r|² > radius²``, so its step is at least that of
    ``radius²`` (steps are monotone in ``|r|²``). When every source has ``k`` found pairs with
    steps strictly below that, no unfound pair can precede or tie with a kept one: the capped
    list equals the one a search at the full cutoff gives.
    """
    pairs = _concatenate(pieces)
    if pairs is None:
        return None
    counts = np.bincount(pairs[0], minlength=n_atoms)
    if counts.min() < k:
        return None
    order, starts, kth = kth_nearest_steps(pairs, counts, k)
    horizon = int(_quantise(np.array([float(radius) ** 2]))[0])
    if int(kth.max()) >= horizon:
        return None
    return first_k_edges(pairs, order, starts, k)


def kth_nearest_steps(
    pairs: Pairs, counts: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort pairs as :func:`sort_edges` does; return that order, each source's first position in
    it, and each source's ``k``-th nearest distance in ``TIE_TOLERANCE`` steps (int64 max for a
    source with fewer than ``k`` pairs). ``counts``: pairs per source atom."""
    src, dst, shift, _, d2 = pairs
    quantised = _quantise(d2)
    order = _edge_order(src, dst, shift, quantised)
    starts = np.cumsum(counts) - counts
    kth = np.full(len(counts), np.iinfo(np.int64).max)
    full = counts >= k
    kth[full] = quantised.take(order.take(starts[full] + (k - 1)))
    return order, starts, kth


def first_k_edges(pairs: Pairs, order: np.ndarray, starts: np.ndarray, k: int) -> NeighborList:
    """The first ``k`` pairs (in ``order``) of every source whose first position is in
    ``starts``; each of them has at least ``k``."""
    kept = order.take((starts[:, None] + np.arange(k)).reshape(-1))
    return NeighborList(*(_take(a, kept) for a in pairs[:4]))


def _empty() -> NeighborList:
    """A fresh edge-less list (fresh arrays: callers may wrap them in writable tensors)."""
    return NeighborList(
        np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.int64), np.zeros((0, 3))
    )


Candidates = Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]


def _screen(d2: np.ndarray, cutoff: float, min_d2: float) -> np.ndarray:
    """Loose pre-filter on screened squared distances; the exact test follows on survivors.

    The slack covers rounding differences between wrapped and given coordinates (and the
    expanded-square formula below), so no pair inside the cutoff is ever lost here.
    """
    return (d2 <= cutoff**2 * (1 + 1e-8) + 1e-12) & (d2 > 0.5 * min_d2)


def _dense_images(
    frac: np.ndarray, periodic: np.ndarray, basis: np.ndarray, reach: np.ndarray, radius: float
) -> np.ndarray:
    """Image offsets ``[O, 3]`` that a pair taken at its nearest image may need within ``radius``.

    At the nearest image a pair's fractional difference ``d`` lies in [-1/2, 1/2] on periodic
    axes (in the coordinates' extent on the others, which carry no image), and a pair within
    ``radius`` at image ``o`` has ``|d + o| <= reach`` per axis, so ``|o| <= reach + 1/2``. An
    offset is also dropped when even the nearest point of the box of ``d`` is beyond ``radius``
    (``|o @ basis| - max |d @ basis| > radius``): the image box becomes close to a sphere.
    """
    counts = np.where(periodic, np.floor(reach + 0.5), 0).astype(np.int64)
    grid = _offset_grid(int(counts[0]), int(counts[1]), int(counts[2]))
    if len(grid) == 1:
        return grid
    half = 0.5 if periodic.all() else np.where(periodic, 0.5, np.ptp(frac, axis=0))
    box_radius = np.sqrt(_row_sq(_times_cell(_CORNERS * half, basis)).max())
    centre = np.sqrt(_row_sq(_times_cell(grid, basis)))
    return grid[centre - box_radius <= radius * (1 + _MARGIN) + 1e-9]


def _refuse_flat_cells(frame: _Frame, cutoff: float) -> None:
    """Raise :class:`DataError` when searching ``cutoff`` would need more than
    :data:`MAX_IMAGES` periodic images, before any array that large exists.

    Checked at the full cutoff, so a K-capped search, which may finish within a smaller first
    radius, refuses the same cells as an uncapped one. The cell lists would scan as many bins.
    """
    # the image box of _dense_images at the cutoff, in Python floats (numpy: ~2% of a small build)
    images = 1
    for periodic, dual_length in zip(frame.pbc, frame.dual_lengths.tolist(), strict=True):
        if periodic:
            images *= 2 * math.floor(cutoff * dual_length * (1 + _MARGIN) + 0.5) + 1
    if images <= MAX_IMAGES:
        return
    width = 1.0 / float(frame.dual_lengths[frame.periodic].max())  # between lattice planes
    raise DataError(
        f"the periodic cell is only {width:.3g} Å wide between lattice planes and would need "
        f"over {MAX_IMAGES:,} periodic images; check its lattice vectors, or set pbc False on an "
        "axis without one"
    )


@functools.lru_cache(maxsize=64)
def _offset_grid(a: int, b: int, c: int) -> np.ndarray:
    """All integer offsets in ``[-a, a] x [-b, b] x [-c, c]``, ``[O, 3]`` (read-only: cached,
    since building it costs more than using it for a small cell)."""
    axes = [np.arange(-m, m + 1) for m in (a, b, c)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    grid.flags.writeable = False
    return grid


def _row_sq(vectors: np.ndarray) -> np.ndarray:
    """Squared norm of each row of ``[M, 3]`` vectors."""
    return np.einsum("ij,ij->i", vectors, vectors)


def _dense_candidates(
    frac: np.ndarray,
    periodic: np.ndarray,
    basis: np.ndarray,
    images: np.ndarray,
    radius: float,
    min_d2: float,
) -> Candidates:
    """Small cells: every atom against every atom, at its nearest image plus ``images``.

    Rounding the fractional difference of a pair gives its nearest image, so a cell wider than
    two radii needs no other image and a small one only those of :func:`_dense_images`. Arrays
    are axis first (``[3, sources, atoms]``): numpy broadcasts over a trailing axis of 3 several
    times slower. ``|v + w|²`` of the nearest-image vector ``v`` and an image vector ``w`` is
    ``|v|² + 2 v·w + |w|²``, with ``v·w`` one BLAS matmul. Chunked over source atoms.
    """
    n = frac.shape[0]
    axes = np.ascontiguousarray(frac.T)
    if len(images) > 1:
        image_vectors = _times_cell(images, basis)  # [O, 3]
        image_sq = _row_sq(image_vectors)
    rows = max(1, _CANDIDATE_BUDGET // (n * len(images)))
    for first in range(0, n, rows):
        diff = axes[:, None, :] - axes[:, first : first + rows, None]  # [3, c, N]: j - i
        nearest = np.rint(diff)
        if not periodic.all():
            nearest[~periodic] = 0.0
        diff -= nearest
        vectors = basis.T @ diff.reshape(3, -1)  # [3, c·N]
        d2 = np.einsum("kp,kp->p", vectors, vectors)  # [c·N]
        if len(images) > 1:
            d2 = d2[:, None] + vectors.T @ (2.0 * image_vectors.T)  # [c·N, O]
            d2 += image_sq
            pair, o = np.nonzero(_screen(d2, radius, min_d2))
            shift = _take(images, o) - _gather_columns(nearest, pair)
        else:  # the nearest image only (cells wider than two radii): 1-d, ~2x cheaper
            pair = np.flatnonzero(_screen(d2, radius, min_d2))
            shift = -_gather_columns(nearest, pair)
        i, j = np.divmod(pair, n)
        i += first
        yield i, j, shift


def _gather_columns(axes: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` of an axis-first ``[3, ...]`` float array of integers, as int64 ``[M, 3]``."""
    return axes.reshape(3, -1).take(index, axis=1).T.astype(np.int64)


def _binned_candidates(
    wrapped: np.ndarray,
    bins: np.ndarray,
    n_bins: np.ndarray,
    offsets: np.ndarray,
    periodic: np.ndarray,
    basis: np.ndarray,
    cutoff: float,
    min_d2: float,
) -> Candidates:
    """Cell-list candidates: each atom against the atoms of the bins within ``offsets``.

    Atoms are sorted by linear bin id, so a bin's atoms are a contiguous run found with
    ``searchsorted``; runs are expanded without Python loops (repeat + arange). Periodic bin
    indices wrap, and the wrap count is the image of the neighbour. Chunked over source atoms to
    bound memory; the screen gathers and adds one coordinate at a time. With the forward half of
    the offsets (:func:`_forward_half`) and, in the atom's own bin, only ``j >= i``, each pair is
    a candidate in one direction (``i -> i`` at image 0 only passes the screen if ``min_d2 < 0``).
    """
    n = wrapped.shape[0]
    own = int(np.flatnonzero(~offsets.any(axis=1))[0])

    def linear(b: np.ndarray) -> np.ndarray:
        return (b[..., 0] * n_bins[1] + b[..., 1]) * n_bins[2] + b[..., 2]

    atom_ids = linear(bins)
    order = np.argsort(atom_ids, kind="stable")
    sorted_ids = atom_ids[order]
    # Where an offset leads depends on the bin only: work it out per occupied bin (B of them,
    # several atoms each), then give each atom its bin's row.
    opens = np.empty(n, dtype=bool)
    opens[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=opens[1:])
    bin_of = np.empty(n, dtype=np.int64)
    bin_of[order] = np.cumsum(opens) - 1  # each atom's occupied bin
    target = _take(bins, order[opens])[:, None, :] + offsets[None, :, :]  # [B, O, 3], unwrapped
    image = np.where(periodic, np.floor_divide(target, n_bins), 0)
    target = np.where(periodic, target - image * n_bins, target)
    valid = np.all((target >= 0) & (target < n_bins), axis=-1)
    tid = linear(np.clip(target, 0, n_bins - 1))
    start = np.searchsorted(sorted_ids, tid, side="left")
    count = np.where(valid, np.searchsorted(sorted_ids, tid, side="right") - start, 0)
    start, count = start.take(bin_of, axis=0), count.take(bin_of, axis=0)  # [N, O]

    # Axis first ([3, ...]): the screen below gathers and adds single columns, ~7x faster than
    # rows of three with an einsum for |r|² (measured on Si 512's 57,000 candidates).
    sorted_axes = np.ascontiguousarray(_take(wrapped, order).T)
    # image offset - own position, per atom and offset ([N, O, 3]), then axis first [3, N, O]
    slot_base = _take(_times_cell(image, basis), bin_of) - wrapped[:, None, :]
    base_axes = np.ascontiguousarray(slot_base.transpose(2, 0, 1))
    n_off = len(offsets)
    chunk_of = np.cumsum(count.sum(axis=1)) // _CANDIDATE_BUDGET
    for atoms in np.split(np.arange(n), np.flatnonzero(np.diff(chunk_of)) + 1):
        c = count[atoms].reshape(-1)
        slots = np.flatnonzero(c)
        c = c[slots]
        total = int(c.sum())
        if total == 0:
            continue
        jpos = np.repeat(start[atoms].reshape(-1)[slots] - (np.cumsum(c) - c), c)
        jpos += np.arange(total)
        bases = base_axes[:, atoms[0] : atoms[-1] + 1].reshape(3, -1).take(slots, axis=1)
        d2 = np.zeros(total)
        for axis in range(3):
            delta = sorted_axes[axis].take(jpos)
            delta += np.repeat(bases[axis], c)
            delta *= delta
            d2 += delta
        near = np.flatnonzero(_screen(d2, cutoff, min_d2))
        slot = np.repeat(slots, c).take(near)
        i = atoms[slot // n_off]
        j = order[jpos[near]]
        one_way = np.flatnonzero((slot % n_off != own) | (j >= i))
        i, j, slot = i.take(one_way), j.take(one_way), slot.take(one_way)
        yield i, j, _take(image.reshape(-1, 3), bin_of.take(i) * n_off + slot % n_off)


def _rank_in_source(src: np.ndarray, n_atoms: int) -> np.ndarray:
    """Position of each edge inside its (contiguous) source group."""
    counts = np.bincount(src, minlength=n_atoms)
    starts = np.cumsum(counts) - counts
    return np.arange(src.shape[0]) - starts[src]


def cap_nearest(edges: NeighborList, n_atoms: int, k: int) -> NeighborList:
    """Keep the first ``k`` edges of every source (edges must be sorted as radius_neighbors does).

    This is upstream's pure_torch cap: no shell completion, so the graph may be asymmetric.
    """
    rank = _rank_in_source(edges.src, n_atoms)
    return edges.select(rank < k)


def cap_shell(edges: NeighborList, n_atoms: int, k: int) -> NeighborList:
    """Per source keep every edge not farther than its ``k``-th nearest (jarvis k-nearest).

    A complete shell is kept, so a site can have more than ``k`` edges; sources with fewer than
    ``k`` edges keep them all. Distances within :data:`TIE_TOLERANCE` count as equal.
    """
    if len(edges) == 0:
        return edges
    counts = np.bincount(edges.src, minlength=n_atoms)
    starts = np.cumsum(counts) - counts
    q = np.floor(edges.distance / TIE_TOLERANCE).astype(np.int64)
    kth = np.full(n_atoms, np.iinfo(np.int64).max)
    full = counts >= k
    kth[full] = q[starts[full] + k - 1]
    return edges.select(q <= kth[edges.src])


def neighbor_counts(edges: NeighborList, n_atoms: int) -> np.ndarray:
    """Edges per source atom, ``[n_atoms]``."""
    return np.bincount(edges.src, minlength=n_atoms)
