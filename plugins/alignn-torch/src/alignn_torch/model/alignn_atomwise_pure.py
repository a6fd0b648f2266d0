"""``ALIGNNAtomWisePure``: the DGL-free ALIGNN force-field / property model.

Reads an :class:`~alignn_torch.graphs.graph.AtomGraph` (single structure or batch) and returns
upstream's output dict. The module tree and every parameter/buffer name match upstream's
``alignn_atomwise_pure`` so its checkpoints load with ``strict=True``.

Deliberate differences from upstream (each documented where it happens):

* penalty, ZBL and ``force_mult_natoms`` act per graph, so a batch gives exactly each structure's
  single-structure result (upstream couples the structures of a batch);
* an extra key ``energy`` [B]: the total energy whose negative gradient is ``grad`` (upstream's
  ``out`` leaves the penalty out, so ``out * N`` and the forces disagree when a bond is < 1 Å);
* keys that were not computed are absent instead of ``torch.empty(1)``;
* forces use ``create_graph=self.training``: evaluation builds no double-backward graph;
* ``atomwise_pred`` is returned whenever the per-atom head exists (upstream needs
  ``atomwise_weight != 0`` as well, so inference with a zero weight got nothing).

The per-structure math lives in tensor-only methods (``_node_features`` with
``_edge_features``/``_angle_features``, ``_readout``, ``_energies``, ``_forces_and_stress``) that
take no config objects, so a TorchScript exporter can reuse them and a variant
(``alignn_atomwise_pure_smooth``) overrides only the ones whose math differs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from alignn_core.units import EV_PER_A3_TO_GPA
from alignn_torch.config import ALIGNNAtomWisePureConfig
from alignn_torch.graphs.graph import AtomGraph
from alignn_torch.graphs.line_graph import angle_cosines
from alignn_torch.model.layers import ALIGNNConv, MLPLayer, RBFExpansion, make_conv
from alignn_torch.model.node_update import register_node_update
from alignn_torch.model.physics import (
    any_shorter,
    cutoff_envelope,
    penalty_energy,
    zbl_energy,
)

SPECIES_TABLE_ROWS = 120
"""Rows of ``_species_table`` (Z = 0..119), upstream's size, so checkpoints load strictly."""


class ALIGNNAtomWisePure(nn.Module):
    """ALIGNN with forces (autograd through edge vectors), stress, penalty and ZBL."""

    def __init__(self, config: ALIGNNAtomWisePureConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_features
        # Typed copies of the config: the tensor-only helpers read these, never ``config``.
        self.computes_gradient: bool = config.computes_gradient
        self.stress_by_default: bool = config.computes_gradient and config.stresswise_weight != 0
        self.lg_on_fly: bool = config.lg_on_fly
        self.use_cutoff_function: bool = config.use_cutoff_function
        self.multiply_cutoff: bool = config.multiply_cutoff
        self.inner_cutoff: float = float(config.inner_cutoff)
        self.exponent: int = int(config.exponent)
        self.energy_mult_natoms: bool = config.energy_mult_natoms
        self.use_penalty: bool = config.use_penalty
        self.penalty_factor: float = float(config.penalty_factor)
        self.penalty_threshold: float = float(config.penalty_threshold)
        self.use_zbl: bool = config.zbl_enabled
        self.zbl_cutoff: float = float(config.zbl_cutoff)
        self.grad_multiplier: float = float(config.grad_multiplier)
        self.force_mult_natoms: bool = config.force_mult_natoms
        self.add_reverse_forces: bool = config.add_reverse_forces
        self.stress_multiplier: float = float(config.stress_multiplier)
        # -160.2 GPa per eV/Å^3 times the user's multiplier (an attribute, not a module global,
        # so TorchScript can compile the helpers that use it).
        self.stress_scale: float = -EV_PER_A3_TO_GPA * float(config.stress_multiplier)
        self.classification: bool = config.classification
        self.link: str = config.link
        self.three_body_cutoff: float = float(config.three_body_cutoff)

        # Registration order follows upstream's, so ``parameters()`` lists tensors in the same
        # order (optimizer states saved by upstream map onto ours index by index).
        self.register_buffer(
            "_species_table", torch.zeros(SPECIES_TABLE_ROWS, config.atom_input_features)
        )
        self.atom_embedding = MLPLayer(config.atom_input_features, hidden)
        # Bond RBF range is 0..8 Å whatever the graph cutoff is (upstream fixes it).
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
        update = (config.node_update, config.node_update_eps, config.node_update_norm)
        self.alignn_layers = nn.ModuleList(
            ALIGNNConv(hidden, config.conv_type, config.num_heads, *update)
            for _ in range(config.alignn_layers)
        )
        self.gcn_layers = nn.ModuleList(
            make_conv(config.conv_type, hidden, config.num_heads, *update)
            for _ in range(config.gcn_layers)
        )
        self.fc_atomwise: nn.Linear | None = None
        if config.atomwise_output_features > 0:
            self.fc_atomwise = nn.Linear(hidden, config.atomwise_output_features)
        self.fc_additional_output: nn.Linear | None = None
        if config.additional_output_features > 0:
            self.fc_additional_output = nn.Linear(hidden, config.additional_output_features)
        self.fc = nn.Linear(hidden, 2 if config.classification else config.output_features)
        if config.link == "log":
            # Upstream replaces the bias by a 0-d parameter ln(0.7) so exp(out) starts near 0.7;
            # checkpoints store it with shape (), so we must too.
            self.fc.bias = nn.Parameter(torch.tensor(math.log(0.7)))
        register_node_update(self, config.node_update, config.node_update_norm)

    # ------------------------------------------------------------------ species table
    def set_species_table(self, table: torch.Tensor) -> None:
        """Fill ``_species_table`` rows Z (``table`` [R, F], R <= 120) for exporters that look
        atom features up by atomic number; the eager forward reads ``atom_features`` instead."""
        rows = min(int(table.shape[0]), SPECIES_TABLE_ROWS)
        with torch.no_grad():
            self._species_table.zero_()
            self._species_table[:rows] = table[:rows].to(self._species_table)

    # ------------------------------------------------------------------ tensor-only core
    def _node_features(
        self,
        atom_features: torch.Tensor,
        r: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        lg_src: torch.Tensor,
        lg_dst: torch.Tensor,
        lg_cos: torch.Tensor,
    ) -> torch.Tensor:
        """Embeddings plus ALIGNN and GCN blocks -> final atom features x [N, H].

        ``lg_cos`` [T] is used only when ``lg_on_fly`` is false; then the cosines carry no
        gradient and the forces/stress miss the angular terms (upstream's behaviour too).
        """
        distance = torch.linalg.norm(r, dim=1)  # [E]
        x = self.atom_embedding(atom_features)  # [N, H]
        y = self._edge_features(distance)  # [E, H]
        if len(self.alignn_layers) > 0:
            cos = angle_cosines(r, lg_src, lg_dst) if self.lg_on_fly else lg_cos  # [T]
            z = self._angle_features(cos)  # [T, H]
            last_block = len(self.alignn_layers) - 1
            for i, block in enumerate(self.alignn_layers):
                # Only x reaches the energy: the last block's triplets (and its bonds, when no
                # GCN layer follows) are never read, so they are not computed.
                bonds_needed = i < last_block or len(self.gcn_layers) > 0
                x, y, z = block(x, y, z, src, dst, lg_src, lg_dst, bonds_needed, i < last_block)
        last_conv = len(self.gcn_layers) - 1
        for i, conv in enumerate(self.gcn_layers):
            x, y = conv(x, y, src, dst, i < last_conv)
        return x

    def _edge_features(self, distance: torch.Tensor) -> torch.Tensor:
        """Bond lengths [E] -> embedded bond features [E, H] (RBF, optional envelope)."""
        if self.use_cutoff_function:
            envelope = cutoff_envelope(distance, self.inner_cutoff, self.exponent)  # [E]
            if self.multiply_cutoff:
                return self.edge_embedding(distance) * envelope.unsqueeze(1)  # [E, H]
            # Upstream feeds the envelope *value* (in [0, 1]) to the bond RBF, so only the
            # lowest bins are ever active. Kept for checkpoint compatibility.
            return self.edge_embedding(envelope)
        return self.edge_embedding(distance)  # [E, H]

    def _angle_features(self, cos: torch.Tensor) -> torch.Tensor:
        """Bond-angle cosines [T] -> embedded triplet features [T, H]."""
        return self.angle_embedding(cos)

    def _readout(
        self,
        x: torch.Tensor,
        atom_features: torch.Tensor,
        node_graph: torch.Tensor,
        n_atoms: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Atom features x [N, H] -> (raw head ``out`` [B] or [B, D], pooled features [B, H]).

        Mean over each graph's atoms, then ``fc``. ``atom_features`` is unused here; a subclass
        may read it (the smooth model's AtomRef baseline).
        """
        num_graphs = int(n_atoms.shape[0])
        count = n_atoms.to(x.dtype).clamp(min=1)  # [B]
        pooled = x.new_zeros((num_graphs, x.shape[1])).index_add_(0, node_graph, x)
        pooled = pooled / count.unsqueeze(1)  # [B, H] mean over each graph's atoms
        out = self.fc(pooled)  # [B, D]
        if out.shape[1] == 1:
            out = out.squeeze(1)  # [B]
        return out, pooled

    def _energies(
        self,
        out: torch.Tensor,
        distance: torch.Tensor,
        numbers: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        edge_graph: torch.Tensor,
        n_atoms: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw head ``out`` [B] or [B, D] -> (``out`` with the ZBL share, total ``energy``).

        energy = out * N (if ``energy_mult_natoms``) + penalty + ZBL, each per graph; ``out``
        gains ZBL / N like upstream's, and no penalty (upstream's ``out`` has none). A term
        that is zero on every edge is skipped on the CPU (:func:`any_shorter`).
        """
        num_graphs = int(n_atoms.shape[0])
        count = n_atoms.to(out.dtype)  # [B]
        if out.dim() == 2:
            count = count.unsqueeze(1)  # [B, 1] broadcasts over D outputs
        energy = out * count if self.energy_mult_natoms else out
        if self.use_penalty and any_shorter(distance, self.penalty_threshold):
            penalty = penalty_energy(
                distance, edge_graph, num_graphs, self.penalty_factor, self.penalty_threshold
            )  # [B]
            energy = energy + (penalty.unsqueeze(1) if out.dim() == 2 else penalty)
        if self.use_zbl and any_shorter(distance, self.zbl_cutoff):
            zbl = zbl_energy(
                distance, numbers[src], numbers[dst], edge_graph, num_graphs, self.zbl_cutoff
            )  # [B]
            if out.dim() == 2:
                zbl = zbl.unsqueeze(1)
            energy = energy + zbl
            out = out + zbl / count.clamp(min=1)
        return out, energy

    def _forces_and_stress(
        self,
        energy: torch.Tensor,
        r: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        edge_graph: torch.Tensor,
        n_atoms: torch.Tensor,
        volume: torch.Tensor,
        num_nodes: int,
        compute_stress: bool,
        create_graph: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forces [N, 3] (eV/Å) and optionally stress [B, 3, 3] (GPa) from dE/dr.

        Since r_e = x[dst] - x[src] + shift @ cell, -dE/dx_i = sum_{e: dst=i} pf_e -
        sum_{e: src=i} pf_e with pf = -dE/dr (``grad_multiplier`` = -1); with
        ``add_reverse_forces`` false only the first sum is kept (upstream's option; not a
        gradient). Stress per graph is -160.2 * sum_e r_e (x) pf_e / V: the virial through the
        edge vectors, i.e. (1/V) dE/d(strain), tensile positive.
        """
        (grad_r,) = torch.autograd.grad(
            [energy.sum()], [r], create_graph=create_graph, allow_unused=True
        )
        if grad_r is None:  # energy independent of geometry (e.g. no edges)
            grad_r = torch.zeros_like(r)
        pair = self.grad_multiplier * grad_r  # [E, 3]
        if self.force_mult_natoms:
            # Per graph: each edge is scaled by its own structure's atom count (upstream uses the
            # batch's total, which couples structures).
            pair = pair * n_atoms.index_select(0, edge_graph).to(pair.dtype).unsqueeze(1)
        forces = pair.new_zeros((num_nodes, 3)).index_add_(0, dst, pair)  # [N, 3]
        if self.add_reverse_forces:
            forces = forces.index_add(0, src, -pair)
        stress: torch.Tensor | None = None
        if compute_stress:
            num_graphs = int(n_atoms.shape[0])
            virial = (r.detach() if not create_graph else r).unsqueeze(2) * pair.unsqueeze(1)
            per_graph = virial.new_zeros((num_graphs, 3, 3)).index_add_(
                0, edge_graph, virial
            )  # [B, 3, 3]
            stress = self.stress_scale * per_graph / volume.to(per_graph.dtype).view(-1, 1, 1)
        return forces, stress

    # ------------------------------------------------------------------ graph entry point
    def forward(
        self, graph: AtomGraph, compute_stress: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Predict for a graph or batch.

        Returns ``out`` [B] ([B, D] when D > 1, [B, 2] log-probabilities for classification),
        ``energy`` (same shape as ``out`` before the link: the quantity whose negative gradient
        is ``grad``), and when computed ``grad`` [N, 3] forces in eV/Å, ``stresses`` [B, 3, 3]
        in GPa, ``atomwise_pred`` [N, k], ``additional`` [B, D_add].

        ``compute_stress``: None follows upstream (stress when forces are on and
        ``stresswise_weight != 0``); True computes stress (and forces) regardless, which an ASE
        calculator needs; False skips it.
        """
        want_stress = self.stress_by_default if compute_stress is None else compute_stress
        want_grad = self.computes_gradient or want_stress
        dtype = self.fc.weight.dtype
        outer_grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(want_grad or outer_grad):
            r = graph.r.to(dtype)
            if want_grad and not r.requires_grad:
                r = r.detach().requires_grad_()  # leaf: dE/dr is the pair force
            features = graph.atom_features.to(dtype)  # [N, F]
            x = self._node_features(
                features,
                r,
                graph.src,
                graph.dst,
                graph.lg_src,
                graph.lg_dst,
                graph.lg_cos.to(dtype),
            )
            out, pooled = self._readout(x, features, graph.node_graph, graph.n_atoms)
            out, energy = self._energies(
                out,
                torch.linalg.norm(r, dim=1),
                graph.numbers,
                graph.src,
                graph.dst,
                graph.edge_graph,
                graph.n_atoms,
            )
            result: dict[str, torch.Tensor] = {}
            if want_grad:
                forces, stress = self._forces_and_stress(
                    energy,
                    r,
                    graph.src,
                    graph.dst,
                    graph.edge_graph,
                    graph.n_atoms,
                    graph.volume,
                    graph.num_nodes,
                    want_stress,
                    self.training,
                )
                result["grad"] = forces
                if stress is not None:
                    result["stresses"] = stress
            if self.fc_atomwise is not None:
                result["atomwise_pred"] = self.fc_atomwise(x)  # [N, k]
            if self.fc_additional_output is not None:
                result["additional"] = self.fc_additional_output(pooled)  # [B, D_add]
        if self.link == "log":
            out = torch.exp(out)
        elif self.link == "logit":
            out = torch.sigmoid(out)
        if self.classification:
            out = torch.log_softmax(out, dim=-1)
        result = {"out": out, "energy": energy, **result}
        if not outer_grad:
            # The caller asked for no autograd (e.g. validation under ``torch.no_grad``); grad
            # mode was only switched on internally to get forces, so hand back plain values.
            result = {key: value.detach() for key, value in result.items()}
        return result
