"""Line graph (bond-angle triplets) and their angle cosines, vectorised in torch.

The line graph's nodes are the crystal graph's directed edges. Triplet ``t`` joins edge
``A = lg_src[t] = (u -> v)`` to every edge ``B = lg_dst[t] = (v -> w)`` leaving ``A``'s end atom;
the back-tracking edge ``w == u`` is included, as in upstream (DGL ``line_graph(backtracking=True)``
and upstream's torch builder). A self-image edge ``(i -> i)`` therefore also pairs with itself.

:func:`angle_cosines` is the single definition of the angle feature; the model calls it inside
autograd (``lg_on_fly``) so that stored and recomputed cosines cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import torch


def line_graph_triplets(
    src: torch.Tensor,
    dst: torch.Tensor,
    allowed: torch.Tensor | None = None,
    self_pairs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triplets ``(A, B)`` of edge indices with ``dst[A] == src[B]``, both edges allowed.

    ``self_pairs`` keeps ``(A, A)``, which exists only for a bond from an atom to its own periodic
    image (``src == dst``). Upstream's torch builder (``pure_torch`` graphs) keeps it; DGL's
    ``line_graph``, which upstream uses for ``k-nearest`` and ``radius_graph``, never pairs an
    edge with itself.

    ``allowed`` (bool ``[E]``) restricts both members (upstream's three-body cutoff); a disallowed
    edge is simply an isolated line-graph node. Triplets are ordered by ``A`` and then by ``B``, so
    the result is deterministic for a given edge order. No loop over edges: allowed edges are
    sorted by source, each ``A`` finds the run of edges leaving ``dst[A]`` by ``searchsorted``, and
    the runs are expanded with ``repeat_interleave``.

    Torch and TorchScript-compilable: the exported model rebuilds its line graph with it on the
    host's device. Graph building on the CPU uses its numpy twin :func:`triplet_arrays` (same
    triplets, same order: tested), where numpy's per-call cost is a fraction of torch's.
    """
    device = src.device
    idx = torch.arange(src.shape[0], device=device)
    if allowed is not None:
        idx = idx[allowed]
    if idx.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    edge_src = src[idx]
    order = torch.argsort(edge_src, stable=True)
    sorted_idx = idx[order]
    sorted_src = edge_src[order]
    ends = dst[idx]
    first = torch.searchsorted(sorted_src, ends, side="left")
    count = torch.searchsorted(sorted_src, ends, side="right") - first
    lg_src = torch.repeat_interleave(idx, count)
    run_start = torch.cumsum(count, 0) - count
    within = torch.arange(lg_src.shape[0], device=device) - torch.repeat_interleave(
        run_start, count
    )
    lg_dst = sorted_idx[torch.repeat_interleave(first, count) + within]
    if not self_pairs:
        keep = lg_src != lg_dst
        lg_src, lg_dst = lg_src[keep], lg_dst[keep]
    return lg_src, lg_dst


def triplet_arrays(
    src: np.ndarray, dst: np.ndarray, allowed: np.ndarray | None = None, self_pairs: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`line_graph_triplets` on int64 numpy arrays (the CPU graph builder's version).

    No loop over edges: allowed edges are grouped by source (a stable sort, skipped when they
    already are, as every :class:`~alignn_torch.graphs.neighbors.NeighborList` is), each ``A``
    finds the run of edges leaving ``dst[A]`` from per-atom counts, and the runs are expanded
    with ``repeat``.
    """
    first_edges = np.arange(src.shape[0]) if allowed is None else np.flatnonzero(allowed)
    if first_edges.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    edge_src = src.take(first_edges)
    second_edges = first_edges
    if np.any(edge_src[1:] < edge_src[:-1]):
        order = np.argsort(edge_src, kind="stable")
        second_edges, edge_src = first_edges.take(order), edge_src.take(order)
    n_atoms = int(max(src.max(), dst.max())) + 1
    leaving = np.bincount(edge_src, minlength=n_atoms)
    run_start = np.cumsum(leaving) - leaving
    ends = dst.take(first_edges)
    count = leaving.take(ends)
    lg_src = np.repeat(first_edges, count)
    offset = run_start.take(ends) - (np.cumsum(count) - count)
    # take() and in-place adds: these arrays have one entry per triplet, the bulk of the work
    position = np.arange(lg_src.shape[0])
    position += np.repeat(offset, count)
    lg_dst = second_edges.take(position)
    if not self_pairs:
        keep = lg_src != lg_dst
        lg_src, lg_dst = lg_src[keep], lg_dst[keep]
    return lg_src, lg_dst


def angle_cosines(r: torch.Tensor, lg_src: torch.Tensor, lg_dst: torch.Tensor) -> torch.Tensor:
    """``cos θ = -(r_A · r_B) / (|r_A| |r_B|)`` clamped to ``[-1, 1]``, per triplet.

    ``θ`` is the angle at the shared atom ``v`` between ``v -> u`` (that is ``-r_A``) and
    ``v -> w`` (``r_B``); back-tracking triplets give +1. Differentiable in ``r`` (the clamp's
    gradient is zero only at exactly ±1, as upstream's).
    """
    r_a = r[lg_src]
    r_b = r[lg_dst]
    # upstream's floor (a literal, so TorchScript can compile this): zero vectors give cos 0
    norm_a = torch.linalg.vector_norm(r_a, dim=-1).clamp_min(1e-12)
    norm_b = torch.linalg.vector_norm(r_b, dim=-1).clamp_min(1e-12)
    cos = -(r_a * r_b).sum(dim=-1) / (norm_a * norm_b)
    return torch.clamp(cos, -1.0, 1.0)


def stored_cosines(r: torch.Tensor, lg_src: torch.Tensor, lg_dst: torch.Tensor) -> torch.Tensor:
    """:func:`angle_cosines` bit for bit, without autograd, for the cosines a graph stores.

    Why: torch's advanced indexing, its reductions over a last axis of 3 and its per-call cost
    dominate :func:`angle_cosines` on small CPU graphs. Here the norms are taken once per edge
    (torch's kernel, so the same bits) and stored beside ``r`` as a fourth column, each triplet
    gathers its two rows in one ``take`` per side (~2x cheaper than eight column gathers), and the
    rest is elementwise IEEE arithmetic in numpy, which rounds exactly as torch does: the products
    ``r_A * r_B`` and ``|r_A| |r_B|`` come out of one multiply, the dot product is
    ``p0 + p1 + p2 + 0``, the order torch's sum adds in (from +0, so an all ``-0`` product sums
    to +0). Half precision sums in float inside torch, so it takes :func:`angle_cosines`.
    """
    if r.requires_grad or r.dtype not in (torch.float32, torch.float64) or r.device.type != "cpu":
        return angle_cosines(r, lg_src, lg_dst)
    rows = np.empty((r.shape[0], 4), dtype=r.numpy().dtype)  # x, y, z, |r| of each edge
    rows[:, :3] = r.numpy()
    np.maximum(torch.linalg.vector_norm(r, dim=-1).numpy(), 1e-12, out=rows[:, 3])
    products = rows.take(lg_src.numpy(), axis=0)
    products *= rows.take(lg_dst.numpy(), axis=0)
    cos = products[:, 0] + products[:, 1]
    cos += products[:, 2]
    cos += 0.0
    np.negative(cos, out=cos)
    cos /= products[:, 3]
    return torch.from_numpy(np.clip(cos, -1.0, 1.0, out=cos))
