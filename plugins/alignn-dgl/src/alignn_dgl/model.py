"""``ALIGNNAtomWise``: the ALIGNN force-field / property model on DGL message passing.

The equations are those of :class:`alignn_torch.model.ALIGNNAtomWisePure` (see its docstrings:
gated edge convolution, ALIGNN blocks on graph + line graph, mean pooling, energy = out x N +
per-graph penalty, forces and stress from dE/dr). Here every aggregation is a DGL operation
(``apply_edges``/``update_all`` with ``dgl.function`` builtins, ``readout_*``,
``broadcast_edges``), which is what DGL-era users and checkpoints expect, and what makes it an
independent check of the pure implementation: the two share the math, not the scatter code.

Compatibility, by construction:

* the module tree and every parameter/buffer name and shape equal ``alignn_atomwise_pure``'s,
  and modules are created in the same order, so the same seed gives the same initial weights and
  a checkpoint of either model loads into the other with ``strict=True``;
* the state dict includes ``_species_table`` (pure's exporter table, unused by this forward) so
  our two backends' checkpoints are key-identical; upstream's DGL checkpoints lack it, and load
  anyway (the missing table is filled with zeros, see :meth:`ALIGNNAtomWise._load_from_state_dict`);
* same output keys (``out``, ``energy``, ``grad``, ``stresses``, ``atomwise_pred``,
  ``additional``) and the same per-graph fixes as the pure model: the penalty is summed per graph
  and ``force_mult_natoms`` uses each structure's own atom count (upstream's DGL model couples
  the structures of a batch), and stress is per graph whatever ``batch_stress`` says.

Not available, as in upstream's DGL model: ZBL (``use_zbl``), ``conv_type`` other than
``alignn``, and a model-side ``three_body_cutoff`` (triplets are whatever the graph holds).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from alignn_torch.model.alignn_atomwise_pure import SPECIES_TABLE_ROWS
from alignn_torch.model.layers import MLPLayer, RBFExpansion
from alignn_torch.model.physics import cutoff_envelope
from torch import nn
from torch.nn import functional as F

from alignn_core.units import EV_PER_A3_TO_GPA
from alignn_dgl.availability import import_dgl
from alignn_dgl.config import ALIGNNAtomWiseConfig
from alignn_dgl.graphs import ANGLE_FIELD, DGLGraphPair

dgl = import_dgl()
fn = dgl.function

SPECIES_TABLE = "_species_table"


class EdgeGatedGraphConv(nn.Module):
    """Edge-gated graph convolution with residuals, as DGL message passing.

    For edge e = (u -> v): ``m_e = W_srcgate x_u + W_dstgate x_v + W_edgegate y_e``;
    ``h_v = sum_e sigmoid(m_e) W_dstupdate x_u / (sum_e sigmoid(m_e) + 1e-6)``;
    ``x' = x + SiLU(LN(W_srcupdate x + h))``, ``y' = y + SiLU(LN(m))``. Submodule names and
    creation order are the pure model's (hence upstream's), so weights map one to one.
    """

    def __init__(self, input_features: int, output_features: int, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.src_gate = nn.Linear(input_features, output_features)
        self.dst_gate = nn.Linear(input_features, output_features)
        self.edge_gate = nn.Linear(input_features, output_features)
        self.bn_edges = nn.LayerNorm(output_features)
        self.src_update = nn.Linear(input_features, output_features)
        self.dst_update = nn.Linear(input_features, output_features)
        self.bn_nodes = nn.LayerNorm(output_features)

    def forward(
        self, g: Any, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``g`` a DGL graph, x [N, H] node features, y [E, H] edge features -> new (x, y)."""
        with g.local_scope():
            g.ndata["gate_src"] = self.src_gate(x)
            g.ndata["gate_dst"] = self.dst_gate(x)
            g.apply_edges(fn.u_add_v("gate_src", "gate_dst", "gate_nodes"))
            m = g.edata["gate_nodes"] + self.edge_gate(y)  # [E, H]
            g.edata["sigma"] = torch.sigmoid(m)
            g.ndata["value"] = self.dst_update(x)
            g.update_all(fn.u_mul_e("value", "sigma", "msg"), fn.sum("msg", "numerator"))
            g.update_all(fn.copy_e("sigma", "msg"), fn.sum("msg", "denominator"))
            h = g.ndata["numerator"] / (g.ndata["denominator"] + 1e-6)  # [N, H]
        x_new = F.silu(self.bn_nodes(self.src_update(x) + h))
        y_new = F.silu(self.bn_edges(m))
        if self.residual:
            x_new = x + x_new
            y_new = y + y_new
        return x_new, y_new


class ALIGNNConv(nn.Module):
    """One ALIGNN block: a conv on the crystal graph, then one on its line graph, whose nodes
    are the bonds, so the bond features just produced are refined by the angles."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.node_update = EdgeGatedGraphConv(features, features)
        self.edge_update = EdgeGatedGraphConv(features, features)

    def forward(
        self, g: Any, lg: Any, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, H] atoms, y [E, H] bonds, z [T, H] triplets -> updated (x, y, z)."""
        x, m = self.node_update(g, x, y)
        y, z = self.edge_update(lg, m, z)
        return x, y, z


def bond_cosines(lg: Any, r: torch.Tensor) -> torch.Tensor:
    """``cos = -(r_A . r_B) / (|r_A| |r_B|)`` per line-graph edge (A -> B), clamped to [-1, 1].

    Computed with ``u_dot_v``/``u_mul_v`` on the line graph, differentiable in ``r`` (so forces
    include the angular terms); the norm floor 1e-12 is the pure model's (and upstream's).
    """
    with lg.local_scope():
        lg.ndata["r"] = r
        lg.ndata["norm"] = torch.linalg.vector_norm(r, dim=-1).clamp_min(1e-12)
        lg.apply_edges(fn.u_dot_v("r", "r", "dot"))  # [T, 1]
        lg.apply_edges(fn.u_mul_v("norm", "norm", "norms"))  # [T]
        cos = -lg.edata["dot"].squeeze(-1) / lg.edata["norms"]
    return torch.clamp(cos, -1.0, 1.0)


class ALIGNNAtomWise(nn.Module):
    """ALIGNN with forces (autograd through edge vectors), stress and the short-bond penalty."""

    def __init__(self, config: ALIGNNAtomWiseConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_features
        self.computes_gradient = config.computes_gradient
        self.stress_by_default = config.computes_gradient and config.stresswise_weight != 0
        # Same scale as the pure model: -160.2 GPa per eV/Å^3 times the user's multiplier.
        self.stress_scale = -EV_PER_A3_TO_GPA * float(config.stress_multiplier)

        # Creation order is the pure model's: equal seeds give equal initial weights.
        self.register_buffer(
            SPECIES_TABLE, torch.zeros(SPECIES_TABLE_ROWS, config.atom_input_features)
        )
        self.atom_embedding = MLPLayer(config.atom_input_features, hidden)
        # Bond RBF range is 0..8 Å whatever the graph cutoff is (as pure and upstream).
        self.edge_embedding = nn.Sequential(
            RBFExpansion(vmin=0, vmax=8.0, bins=config.edge_input_features),
            MLPLayer(config.edge_input_features, config.embedding_features),
            MLPLayer(config.embedding_features, hidden),
        )
        self.angle_embedding = nn.Sequential(
            RBFExpansion(vmin=-1, vmax=1.0, bins=config.triplet_input_features),
            MLPLayer(config.triplet_input_features, config.embedding_features),
            MLPLayer(config.embedding_features, hidden),
        )
        self.alignn_layers = nn.ModuleList(ALIGNNConv(hidden) for _ in range(config.alignn_layers))
        self.gcn_layers = nn.ModuleList(
            EdgeGatedGraphConv(hidden, hidden) for _ in range(config.gcn_layers)
        )
        self.fc_atomwise: nn.Linear | None = None
        if config.atomwise_output_features > 0:
            self.fc_atomwise = nn.Linear(hidden, config.atomwise_output_features)
        self.fc_additional_output: nn.Linear | None = None
        if config.additional_output_features > 0:
            self.fc_additional_output = nn.Linear(hidden, config.additional_output_features)
        self.fc = nn.Linear(hidden, 2 if config.classification else config.output_features)
        if config.link == "log":
            # A 0-d bias ln(0.7), as the pure model and upstream store it.
            self.fc.bias = nn.Parameter(torch.tensor(math.log(0.7)))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Accept upstream DGL checkpoints, which have no ``_species_table``.

        The table only serves exporters of the pure model; this forward never reads it, so a
        zero table is exact. ``load_state_dict`` passes a copy, so the caller's dict is unchanged.
        """
        key = prefix + SPECIES_TABLE
        if key not in state_dict:
            state_dict[key] = torch.zeros_like(getattr(self, SPECIES_TABLE))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------ pieces
    def _node_features(
        self, pair: DGLGraphPair, r: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """Embeddings plus ALIGNN and GCN blocks -> final atom features x [N, H]."""
        config = self.config
        g, lg = pair.g, pair.lg
        distance = torch.linalg.norm(r, dim=1)  # [E]
        x = self.atom_embedding(g.ndata["atom_features"].to(dtype))  # [N, H]
        if config.use_cutoff_function:
            envelope = cutoff_envelope(distance, float(config.inner_cutoff), config.exponent)
            if config.multiply_cutoff:
                y = self.edge_embedding(distance) * envelope.unsqueeze(1)  # [E, H]
            else:
                # As pure and upstream: the envelope *value* goes into the bond RBF.
                y = self.edge_embedding(envelope)
        else:
            y = self.edge_embedding(distance)  # [E, H]
        if len(self.alignn_layers) > 0:
            # lg_on_fly false: stored cosines, no gradient, forces miss the angular terms.
            cos = bond_cosines(lg, r) if config.lg_on_fly else lg.edata[ANGLE_FIELD].to(dtype)
            z = self.angle_embedding(cos)  # [T, H]
            for block in self.alignn_layers:
                x, y, z = block(g, lg, x, y, z)
        for conv in self.gcn_layers:
            x, y = conv(g, x, y)
        return x

    def _energy(self, g: Any, out: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """Total energy per graph: out x N (``energy_mult_natoms``) + the graph's own penalty."""
        config = self.config
        count = g.batch_num_nodes().to(out.dtype)  # [B]
        if out.dim() == 2:
            count = count.unsqueeze(1)
        energy = out * count if config.energy_mult_natoms else out
        if config.use_penalty:
            threshold = float(config.penalty_threshold)
            g.edata["penalty"] = torch.where(
                distance < threshold,
                float(config.penalty_factor) * (threshold - distance),
                torch.zeros_like(distance),
            )
            penalty = dgl.readout_edges(g, "penalty", op="sum")  # [B], per graph
            energy = energy + (penalty.unsqueeze(1) if out.dim() == 2 else penalty)
        return energy

    def _forces_and_stress(
        self,
        pair: DGLGraphPair,
        energy: torch.Tensor,
        r: torch.Tensor,
        compute_stress: bool,
        create_graph: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forces [N, 3] and optionally stress [B, 3, 3] (GPa) from the pair forces -dE/dr.

        With ``r = x[dst] - x[src] + ...``, atom i gets the pair forces of its incoming edges
        minus those of its outgoing ones (the latter only with ``add_reverse_forces``); stress is
        the per-graph virial ``-160.2 sum_e r_e (x) pf_e / V``.
        """
        config = self.config
        g = pair.g
        (grad_r,) = torch.autograd.grad(
            [energy.sum()], [r], create_graph=create_graph, allow_unused=True
        )
        if grad_r is None:  # energy independent of geometry (e.g. no edges)
            grad_r = torch.zeros_like(r)
        pair_forces = float(config.grad_multiplier) * grad_r  # [E, 3]
        if config.force_mult_natoms:
            natoms = g.batch_num_nodes().to(pair_forces.dtype)  # [B]: each graph's own count
            pair_forces = pair_forces * dgl.broadcast_edges(g, natoms).unsqueeze(1)
        g.edata["pair_forces"] = pair_forces
        g.update_all(fn.copy_e("pair_forces", "msg"), fn.sum("msg", "forces_in"))
        forces = g.ndata["forces_in"]  # [N, 3]
        if config.add_reverse_forces:
            reverse = dgl.reverse(g, copy_ndata=False, copy_edata=False)  # same edge ids
            reverse.edata["pair_forces"] = pair_forces
            reverse.update_all(fn.copy_e("pair_forces", "msg"), fn.sum("msg", "forces_out"))
            forces = forces - reverse.ndata["forces_out"]
        stress: torch.Tensor | None = None
        if compute_stress:
            vectors = r if create_graph else r.detach()
            g.edata["virial"] = vectors.unsqueeze(2) * pair_forces.unsqueeze(1)  # [E, 3, 3]
            per_graph = dgl.readout_edges(g, "virial", op="sum")  # [B, 3, 3]
            volume = pair.volume.to(per_graph.dtype).view(-1, 1, 1)
            stress = self.stress_scale * per_graph / volume
        return forces, stress

    # ------------------------------------------------------------------ entry point
    def forward(
        self, pair: DGLGraphPair, compute_stress: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Predict for a :class:`DGLGraphPair` (one structure or a batch).

        Returns exactly what ``alignn_atomwise_pure`` returns: ``out`` [B] ([B, D], or [B, 2]
        log-probabilities for classification), ``energy``, and when computed ``grad`` [N, 3]
        (eV/Å), ``stresses`` [B, 3, 3] (GPa), ``atomwise_pred`` [N, k], ``additional``
        [B, D_add]. ``compute_stress`` as in the pure model: None follows the config, True forces
        stress (and forces), False skips stress.
        """
        config = self.config
        want_stress = self.stress_by_default if compute_stress is None else compute_stress
        want_grad = self.computes_gradient or want_stress
        dtype = self.fc.weight.dtype
        outer_grad = torch.is_grad_enabled()
        g = pair.g
        with torch.set_grad_enabled(want_grad or outer_grad), g.local_scope():
            r = g.edata["r"].to(dtype)
            if want_grad and not r.requires_grad:
                r = r.detach().requires_grad_()  # leaf: dE/dr is the pair force
            x = self._node_features(pair, r, dtype)
            g.ndata["x"] = x
            pooled = dgl.readout_nodes(g, "x", op="mean")  # [B, H]
            out = self.fc(pooled)  # [B, D]
            if out.shape[1] == 1:
                out = out.squeeze(1)  # [B]
            energy = self._energy(g, out, torch.linalg.norm(r, dim=1))
            result: dict[str, torch.Tensor] = {}
            if want_grad:
                forces, stress = self._forces_and_stress(
                    pair, energy, r, want_stress, self.training
                )
                result["grad"] = forces
                if stress is not None:
                    result["stresses"] = stress
            if self.fc_atomwise is not None:
                result["atomwise_pred"] = self.fc_atomwise(x)  # [N, k]
            if self.fc_additional_output is not None:
                result["additional"] = self.fc_additional_output(pooled)  # [B, D_add]
        if config.link == "log":
            out = torch.exp(out)
        elif config.link == "logit":
            out = torch.sigmoid(out)
        if config.classification:
            out = torch.log_softmax(out, dim=-1)
        result = {"out": out, "energy": energy, **result}
        if not outer_grad:
            # Grad mode was only switched on internally to get forces: hand back plain values.
            result = {key: value.detach() for key, value in result.items()}
        return result
