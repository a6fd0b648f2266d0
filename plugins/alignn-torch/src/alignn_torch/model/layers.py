"""Building blocks of the ALIGNN model, on flat edge lists.

Every layer takes plain tensors (features plus ``src``/``dst`` index vectors) instead of a graph
object, so the same code serves the crystal graph and the line graph, single structures and
batches, and can later be compiled by TorchScript. Aggregation over incoming edges uses native
``index_add_``/``scatter_reduce`` (no torch-scatter, no Python loop over graphs or edges).

Module and parameter names are upstream's (``src_gate``, ``bn_nodes``, ...), because checkpoints
trained with upstream ALIGNN must load with ``strict=True``. Shapes: N nodes, E edges, H features,
K heads.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from alignn_torch.model.second_order import layer_norm_silu


def scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Sum rows of ``values`` [E, ...] into ``size`` buckets by ``index`` [E] -> [size, ...].

    Buckets nobody writes to stay zero, which is upstream's convention for isolated nodes.
    """
    shape = list(values.shape)
    shape[0] = size
    return values.new_zeros(shape).index_add_(0, index, values)


def scatter_max(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Row-wise maximum of ``values`` [E, K] per bucket -> [size, K] (empty buckets: -inf).

    Used to shift softmax logits. It is *not* detached: with the +1e-8 in the softmax
    denominator the shift does not cancel exactly, and upstream lets gradient flow through it,
    so detaching would change forces at the 1e-9 relative level.
    """
    out = values.new_full((size, values.shape[1]), float("-inf"))
    expanded = index.unsqueeze(1).expand_as(values)  # [E, K]
    return out.scatter_reduce(0, expanded, values, reduce="amax", include_self=True)


def edge_messages(
    at_src: torch.Tensor,
    at_dst: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """``at_src[src] + at_dst[dst] + (y W^T + b)`` -> [E, H]: node terms [N, H], y [E, H], and
    the edge gate's ``weight``/``bias`` (tensors, not the module, so TorchScript compiles it).

    Built in one [E, H] buffer: the edge gate's bias is added to the [N, H] source term before
    the gather, the destination term is added in place and ``y W^T`` is accumulated by an in-place
    ``addmm_``. The sum is the same up to float32 rounding order; what it saves is two [E, H]
    temporaries, which on the line graph (E = triplets) are the largest tensors of the model.
    """
    dtype = at_src.dtype  # under autocast the projections are bf16 while bias/weight stay fp32
    m = (at_src + bias.to(dtype)).index_select(0, src)
    m.add_(at_dst.index_select(0, dst))
    return m.addmm_(y.to(dtype), weight.t().to(dtype))  # [E, H]


class MLPLayer(nn.Module):
    """Linear -> LayerNorm -> SiLU, the unit of every embedding (``layer.{0,1}`` in checkpoints)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Linear(in_features, out_features),
            nn.LayerNorm(out_features),
            nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[*, in] -> [*, out]; while training, with the cheap double backward (second_order)."""
        norm = self.layer[1]
        return layer_norm_silu(self.layer[0](x), norm.weight, norm.bias, norm.eps, self.training)


class RBFExpansion(nn.Module):
    """Gaussian radial basis ``exp(-gamma (d - c_k)^2)`` on fixed centres.

    ``centers`` is a buffer because upstream saves it in the state dict. ``gamma`` is
    ``1 / spacing`` (not ``1 / spacing^2``), with the spacing measured as the mean difference of
    the centre tensor as constructed (default dtype), exactly how upstream derives it: in
    float32 that gives gamma = 9.874999751... instead of 9.875 for 0..8 Å with 80 bins, which
    matters for bit-level parity of converted checkpoints. It is a plain float, so loading a
    state dict or casting the module does not change it (upstream behaves the same).

    The exponent is clamped at ``exponent_floor`` (-87): on CPU ``torch.exp`` takes a slow
    path, about 10x per element, wherever its result underflows below float32's smallest
    normal number (argument < ln(FLT_MIN) = -87.34), and with gamma ~10 per Å^2 over 0..8 Å
    many bins of a distance are that far from it (29% of a Si 64 expansion's entries; a
    [768, 80] tensor of such exponents takes 634 µs, of larger ones 62 µs). The clamp raises
    an entry below exp(-87) = 1.6e-38 to exactly that and zeroes its derivative (below ~2e-36
    before): both vanish in every float32 or float64 sum the entry enters next to the
    O(1) bins near the distance (tested: a layer's outputs and derivatives are bit-identical).
    """

    def __init__(self, vmin: float = 0.0, vmax: float = 8.0, bins: int = 40) -> None:
        super().__init__()
        self.vmin = vmin
        self.vmax = vmax
        self.bins = bins
        self.register_buffer("centers", torch.linspace(vmin, vmax, bins))
        self.gamma = 1.0 / float(torch.diff(self.centers).mean())
        self.exponent_floor = -87.0  # just above ln(FLT_MIN), see the class docstring

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        # [E] -> [E, bins]
        exponent = -self.gamma * (distance.unsqueeze(-1) - self.centers) ** 2
        return torch.exp(exponent.clamp_min(self.exponent_floor))


NODE_UPDATES = ("upstream", "gated_sum")
"""Aggregations of the crystal-graph conv (``model.node_update``), see EdgeGatedGraphConv."""


class EdgeGatedGraphConv(nn.Module):
    """Edge-gated graph convolution with residuals (ALIGNN's message-passing unit).

    For edge e = (src -> dst):
        m_e = W_srcgate x[src] + W_dstgate x[dst] + W_edgegate y_e
        h_v = sum_{e -> v} sigmoid(m_e) * W_dstupdate x[src] / (sum_{e -> v} sigmoid(m_e) + eps)
        x'  = x + SiLU(LN_nodes(W_srcupdate x + h))
        y'  = y + SiLU(LN_edges(m))
    The ``dst_update`` weight acts on *source* features and ``src_update`` on the node itself:
    upstream's naming, kept so checkpoints map weight for weight. eps = 1e-6 keeps isolated or
    fully-closed gates finite and is part of the numerics we must reproduce.

    ``aggregation="gated_sum"`` replaces the gated mean by a gated sum over a fixed divisor,
    h_v = sum_{e -> v} sigmoid(m_e) * W_dstupdate x[src] / ``sum_norm``. The mean is blind to
    geometry when every x[src] is the same vector (one element): it returns W x whatever the
    gates are, up to eps. The sum keeps the gates' dependence on bond lengths, with the same
    parameters (so the layout of a checkpoint does not tell the two apart; the model records
    which one it was trained with).
    """

    def __init__(
        self,
        input_features: int,
        output_features: int,
        residual: bool = True,
        aggregation: str = "upstream",
        eps: float = 1e-6,
        sum_norm: float = 1.0,
    ) -> None:
        super().__init__()
        if aggregation not in NODE_UPDATES:
            raise ValueError(f"unknown aggregation {aggregation!r}; use one of {NODE_UPDATES}")
        self.residual = residual
        self.gated_sum: bool = aggregation == "gated_sum"
        self.eps: float = float(eps)
        self.sum_norm: float = float(sum_norm)
        self.src_gate = nn.Linear(input_features, output_features)
        self.dst_gate = nn.Linear(input_features, output_features)
        self.edge_gate = nn.Linear(input_features, output_features)
        self.bn_edges = nn.LayerNorm(output_features)
        self.src_update = nn.Linear(input_features, output_features)
        self.dst_update = nn.Linear(input_features, output_features)
        self.bn_nodes = nn.LayerNorm(output_features)

    def _gates(
        self, x: torch.Tensor, y: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activation edge messages ``m`` [E, H] and projected node features [N, H]."""
        m = edge_messages(
            self.src_gate(x),
            self.dst_gate(x),
            src,
            dst,
            y,
            self.edge_gate.weight,
            self.edge_gate.bias,
        )
        return m, self.dst_update(x)  # [E, H], [N, H]

    def _finish(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        m: torch.Tensor,
        gate: torch.Tensor,
        values: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        update_edges: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated mean (or sum) at the destination, then the two residual updates.

        With ``update_edges`` false the edge update is skipped and ``y`` comes back as it came
        in: the caller has no further use for edge features (the last conv of a stack), and
        the skipped LayerNorm/SiLU on [E, H] would only cost time (no parameter it uses would
        get a gradient either way).
        """
        n = x.shape[0]
        numerator = scatter_sum(gate * values.index_select(0, src), dst, n)  # [N, H]
        if self.gated_sum:
            h = numerator / self.sum_norm
        else:
            h = numerator / (scatter_sum(gate, dst, n) + self.eps)  # [N, H]
        x_new = layer_norm_silu(
            self.src_update(x) + h,
            self.bn_nodes.weight,
            self.bn_nodes.bias,
            self.bn_nodes.eps,
            self.training,
        )  # [N, H]
        # Residuals are added in place: SiLU keeps its input, not its output, for backward.
        if self.residual:
            x_new = x_new.add_(x)
        if not update_edges:
            return x_new, y
        y_new = layer_norm_silu(
            m, self.bn_edges.weight, self.bn_edges.bias, self.bn_edges.eps, self.training
        )  # [E, H]
        if self.residual:
            y_new = y_new.add_(y)
        return x_new, y_new

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        update_edges: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, H] node features, y [E, H] edge features -> updated (x, y); ``y`` unchanged
        when ``update_edges`` is false (see :meth:`_finish`)."""
        m, values = self._gates(x, y, src, dst)
        return self._finish(x, y, m, torch.sigmoid(m), values, src, dst, update_edges)


class NodeAttentionGraphConv(EdgeGatedGraphConv):
    """``n_alignn`` (NAL): the edge-gated conv with per-head node attention on the gates.

    ``attn_src`` and ``attn_dst`` map node features to one score per head; their sigmoids scale
    the source and destination gate projections (each head covers H/K consecutive channels)
    before the edge gate is formed. Everything else is :class:`EdgeGatedGraphConv`.
    """

    def __init__(
        self,
        input_features: int,
        output_features: int,
        num_heads: int = 1,
        residual: bool = True,
        aggregation: str = "upstream",
        eps: float = 1e-6,
        sum_norm: float = 1.0,
    ) -> None:
        super().__init__(input_features, output_features, residual, aggregation, eps, sum_norm)
        if output_features % num_heads:
            raise ValueError(f"{output_features} features do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.attn_src = nn.Linear(input_features, num_heads)
        self.attn_dst = nn.Linear(input_features, num_heads)

    def _head_scale(self, projected: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Multiply [N, H] features by sigmoid(score) [N, K], broadcast over each head's slice."""
        n, width = projected.shape
        heads = projected.view(n, self.num_heads, width // self.num_heads)  # [N, K, H/K]
        return (heads * torch.sigmoid(score).unsqueeze(-1)).reshape(n, width)

    def _gates(
        self, x: torch.Tensor, y: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gate_src = self._head_scale(self.src_gate(x), self.attn_src(x))  # [N, H]
        gate_dst = self._head_scale(self.dst_gate(x), self.attn_dst(x))  # [N, H]
        m = edge_messages(
            gate_src, gate_dst, src, dst, y, self.edge_gate.weight, self.edge_gate.bias
        )  # [E, H]
        return m, self.dst_update(x)


class SelfAttentionGraphConv(nn.Module):
    """``t_alignn`` (SAL): multi-head attention over incoming edges, keyed by edge features.

    Per head k of width d = H/K, for e = (src -> dst):
        logit_e = sum_d (W_q x[dst]) (W_k x[src]) (W_ke y_e) / sqrt(d)
        a_e     = exp(logit - max) / (sum_{e -> dst} exp(logit - max) + 1e-8), max per dst
        x'      = fc_node(x) + SiLU(LN_nodes(sum_{e -> v} a_e W_v x[src]))
        y'      = fc_edge(y) + SiLU(LN_edges(a_e repeated over its head's d channels))
    There is no identity residual: ``fc_node``/``fc_edge`` play that role.
    """

    def __init__(self, input_features: int, output_features: int, num_heads: int = 1) -> None:
        super().__init__()
        if output_features % num_heads:
            raise ValueError(f"{output_features} features do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = output_features // num_heads
        self.W_q = nn.Linear(input_features, output_features)
        self.W_k = nn.Linear(input_features, output_features)
        self.W_v = nn.Linear(input_features, output_features)
        self.W_ke = nn.Linear(input_features, output_features)
        self.fc_node = nn.Linear(input_features, output_features)
        self.fc_edge = nn.Linear(input_features, output_features)
        self.bn_nodes = nn.LayerNorm(output_features)
        self.bn_edges = nn.LayerNorm(output_features)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        update_edges: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, H], y [E, H] -> updated (x, y); ``y`` unchanged when ``update_edges`` is false
        (the caller reads no edge features after this conv)."""
        n = x.shape[0]
        e = y.shape[0]
        k, d = self.num_heads, self.head_dim
        q = self.W_q(x).index_select(0, dst).view(e, k, d)
        key = self.W_k(x).index_select(0, src).view(e, k, d)
        key_edge = self.W_ke(y).view(e, k, d)
        logits = (q * key * key_edge).sum(-1) / math.sqrt(d)  # [E, K]
        shift = scatter_max(logits, dst, n).index_select(0, dst)  # [E, K]
        weights = torch.exp(logits - shift)
        attn = weights / (scatter_sum(weights, dst, n).index_select(0, dst) + 1e-8)  # [E, K]
        values = self.W_v(x).index_select(0, src).view(e, k, d)
        h = scatter_sum((attn.unsqueeze(-1) * values).reshape(e, k * d), dst, n)  # [N, H]
        x_new = self.fc_node(x) + layer_norm_silu(
            h, self.bn_nodes.weight, self.bn_nodes.bias, self.bn_nodes.eps, self.training
        )
        if not update_edges:
            return x_new, y
        attn_wide = attn.unsqueeze(-1).expand(e, k, d).reshape(e, k * d)  # [E, H]
        y_new = self.fc_edge(y) + layer_norm_silu(
            attn_wide, self.bn_edges.weight, self.bn_edges.bias, self.bn_edges.eps, self.training
        )
        return x_new, y_new


def make_conv(
    conv_type: str,
    features: int,
    num_heads: int,
    aggregation: str = "upstream",
    eps: float = 1e-6,
    sum_norm: float = 1.0,
) -> nn.Module:
    """The graph conv selected by ``conv_type`` (alignn, n_alignn, t_alignn).

    ``aggregation``/``eps``/``sum_norm`` configure the edge-gated convs (see
    :class:`EdgeGatedGraphConv`); ``t_alignn`` normalises by softmax and has no such option.
    """
    if conv_type == "alignn":
        return EdgeGatedGraphConv(features, features, True, aggregation, eps, sum_norm)
    if conv_type == "n_alignn":
        return NodeAttentionGraphConv(
            features, features, num_heads, True, aggregation, eps, sum_norm
        )
    if conv_type == "t_alignn":
        if aggregation != "upstream":
            raise ValueError("t_alignn normalises by softmax: only node_update 'upstream' applies")
        return SelfAttentionGraphConv(features, features, num_heads)
    raise ValueError(f"unknown conv_type {conv_type!r}; use alignn, n_alignn or t_alignn")


class ALIGNNConv(nn.Module):
    """One ALIGNN block: a conv on the crystal graph, then one on its line graph.

    The line-graph conv treats bonds as nodes and triplets as edges, so the bond features that
    the first conv produced are refined with angle information; that is the whole point of
    ALIGNN over plain edge-gated GNNs.

    ``aggregation``/``eps``/``sum_norm`` apply to the crystal-graph conv only: the line-graph
    conv averages bond features that already differ by bond length, so its mean is not blind.
    """

    def __init__(
        self,
        features: int,
        conv_type: str = "alignn",
        num_heads: int = 1,
        aggregation: str = "upstream",
        eps: float = 1e-6,
        sum_norm: float = 1.0,
    ) -> None:
        super().__init__()
        self.node_update = make_conv(conv_type, features, num_heads, aggregation, eps, sum_norm)
        self.edge_update = make_conv(conv_type, features, num_heads, "upstream", eps)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        z: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        lg_src: torch.Tensor,
        lg_dst: torch.Tensor,
        bonds_needed: bool = True,
        triplets_needed: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, H] atoms, y [E, H] bonds, z [T, H] triplets -> updated (x, y, z).

        The flags say whether the caller reads the returned bond / triplet features; what
        nobody reads is not computed (and returned unchanged). The last block of a model never
        needs its triplets, and without GCN layers not its bonds either, in which case the whole
        line-graph conv is skipped: these outputs feed no energy, so skipping them changes no
        result and no gradient.
        """
        if not bonds_needed:
            x, y = self.node_update(x, y, src, dst, False)
            return x, y, z
        x, m = self.node_update(x, y, src, dst)
        y, z = self.edge_update(m, z, lg_src, lg_dst, triplets_needed)
        return x, y, z
