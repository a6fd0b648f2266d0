"""Line graph (bond-angle triplets) and their angle cosines, vectorised in torch.

The line graph's nodes are the crystal graph's directed edges. Triplet ``t`` joins edge
``A = lg_src[t] = (u -> v)`` to every edge ``B = lg_dst[t] = (v -> w)`` leaving ``A``'s end atom;
the back-tracking edge ``w == u`` is included, as in upstream (DGL ``line_graph(backtracking=True)``
and upstream's torch builder). A self-image edge ``(i -> i)`` therefore also pairs with itself.

:func:`angle_cosines` is the single definition of the angle feature; the model calls it inside
autograd (``lg_on_fly``) so that stored and recomputed cosines cannot drift apart.
"""

from __future__ import annotations

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
