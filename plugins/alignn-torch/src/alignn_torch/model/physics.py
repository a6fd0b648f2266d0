"""Physics terms of the force-field model: cutoff envelope, short-bond penalty, ZBL repulsion.

All functions take flat edge tensors and return **per-graph** energies ``[B]`` by summing each
edge into its own graph (``edge_graph``). Upstream ALIGNN sums the penalty and ZBL over the whole
batch and adds that single number to every graph, so a structure's energy and its repulsive
forces depend on which structures share its batch (measured: 17.9 eV/Å alone, 35.9 eV/Å in a
batch of two). We fix that: a batch gives exactly what each structure gives alone. For a single
structure the numbers equal upstream's.

Every function is tensor-only (no config objects) so it can be compiled by TorchScript.
"""

from __future__ import annotations

import torch


def per_graph_sum(values: torch.Tensor, index: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Sum ``values`` [E] into graphs by ``index`` [E] -> [B]."""
    return values.new_zeros(num_graphs).index_add_(0, index, values)


def any_shorter(distance: torch.Tensor, limit: float) -> bool:
    """Whether a short-range term (penalty below 1 Å, ZBL below 0.9 Å by default) can be nonzero:
    False only when every edge is at least ``limit`` long, on the CPU.

    Why: both terms are exactly zero on every edge of a structure without short bonds (nearly
    all of them), yet computing them and their derivatives costs ~75 operators, ~6% of a
    64-atom CPU inference call. Skipping them then changes no bit: the energy gains ``+ 0``
    and the forces a zero gradient. On other devices it answers True without looking: the
    check would make the host wait for the device and cannot run inside a CUDA graph capture,
    so there the terms are computed, as zeros.
    """
    if distance.device.type != "cpu":
        return True
    return bool((distance < limit).any())


def cutoff_envelope(distance: torch.Tensor, cutoff: float, exponent: int) -> torch.Tensor:
    """Polynomial envelope that goes smoothly from 1 at d = 0 to 0 at ``cutoff``.

    With t = d / cutoff and p = ``exponent``:
    env = 1 - (p+1)(p+2)/2 t^p + p(p+2) t^(p+1) - p(p+1)/2 t^(p+2), and 0 beyond the cutoff.
    Value, first and second derivative vanish at the cutoff, so energies stay smooth as bonds
    leave the sphere. Shapes: [E] -> [E].
    """
    p = float(exponent)
    c1 = -(p + 1.0) * (p + 2.0) / 2.0
    c2 = p * (p + 2.0)
    c3 = -p * (p + 1.0) / 2.0
    t = distance / cutoff
    env = 1.0 + c1 * t**exponent + c2 * t ** (exponent + 1) + c3 * t ** (exponent + 2)
    return torch.where(distance < cutoff, env, torch.zeros_like(env))


def penalty_energy(
    distance: torch.Tensor,
    edge_graph: torch.Tensor,
    num_graphs: int,
    factor: float,
    threshold: float,
) -> torch.Tensor:
    """Linear repulsion ``factor * (threshold - d)`` for every directed edge shorter than
    ``threshold``, summed **per graph** -> [B].

    It keeps atoms from collapsing where the network has never seen short bonds. Each pair is
    counted twice (both directed edges), as upstream does. Upstream adds the *batch* total to
    every graph; we do not (see the module docstring).
    """
    short = distance < threshold
    per_edge = torch.where(short, factor * (threshold - distance), torch.zeros_like(distance))
    return per_graph_sum(per_edge, edge_graph, num_graphs)


def zbl_energy(
    distance: torch.Tensor,
    z_src: torch.Tensor,
    z_dst: torch.Tensor,
    edge_graph: torch.Tensor,
    num_graphs: int,
    cutoff: float,
) -> torch.Tensor:
    """ZBL screened-nuclear repulsion, switched off smoothly at ``cutoff``, **per graph** -> [B].

    Per directed edge with d < cutoff: a = 0.46850 / (Z_i^0.23 + Z_j^0.23), x = d / a,
    phi = sum_k c_k exp(-b_k x), E = 14.399645 Z_i Z_j phi / d (d clamped >= 1e-6), times the
    switch 1 - 15 t^4 + 24 t^5 - 10 t^6 (t = d / cutoff clamped to [0, 1]); the total is half the
    sum over directed edges, i.e. once per pair. Upstream sums it over the whole batch and adds
    the total to every graph; we keep each graph's own share.
    """
    zi = z_src.to(distance.dtype)
    zj = z_dst.to(distance.dtype)
    d = distance.clamp(min=1e-6)
    # Constants are literals (not module globals) so that TorchScript can compile this function.
    a = 0.46850 / (zi**0.23 + zj**0.23)  # Å, universal screening length
    x = d / a
    phi = (  # Ziegler-Biersack-Littmark universal screening function
        0.18175 * torch.exp(-3.19980 * x)
        + 0.50986 * torch.exp(-0.94229 * x)
        + 0.28022 * torch.exp(-0.40290 * x)
        + 0.02817 * torch.exp(-0.20162 * x)
    )
    pair = 14.399645 * zi * zj * phi / d  # e^2 / (4 pi eps0) = 14.399645 eV·Å
    t = (d / cutoff).clamp(0.0, 1.0)
    switch = 1.0 - 15.0 * t**4 + 24.0 * t**5 - 10.0 * t**6
    inside = distance < cutoff
    per_edge = torch.where(inside, 0.5 * pair * switch, torch.zeros_like(d))
    return per_graph_sum(per_edge, edge_graph, num_graphs)
