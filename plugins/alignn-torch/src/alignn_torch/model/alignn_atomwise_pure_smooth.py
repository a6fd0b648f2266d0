"""``ALIGNNAtomWisePureSmooth``: upstream's ``alignn_atomwise_pure_smooth`` on our pure model.

Same conv stack, forces, stress, penalty, batching and output keys as
:class:`~alignn_torch.model.alignn_atomwise_pure.ALIGNNAtomWisePure` (it is a subclass and
overrides only the tensor-only steps whose math differs), with:

* bond features from a learnable Bessel basis (:class:`~.smooth_bases.BesselBasis`, or
  upstream's Gaussian RBF on 0..``radial_cutoff`` with ``radial_basis: "gaussian"``) times the
  polynomial envelope of order ``smooth_cutoff_coeff``, zero for d >= ``radial_cutoff``, then two
  MLPLayers (``edge_embedding``; no RBF inside);
* triplet features from a learnable Fourier series of the bond angle
  (:class:`~.smooth_bases.FourierAngularBasis`, or upstream's RBF on cos theta with
  ``angular_basis: "cosine"``), then two MLPLayers (``angle_embedding``);
* an AtomRef baseline ``atomref`` = bias-free Linear(atom features -> 1), zero-initialised;
* ``mlp_first`` true: site energies fc(x_i) + atomref(a_i) summed per structure; false: the pure
  model's fc(mean x) plus the mean of atomref(a_i) (a per-atom quantity);
* the penalty per structure and no ZBL.

``energy`` (what forces differentiate) and ``out`` (what the graph loss sees) are one quantity:
``energy`` = the readout (times N when it is per atom and ``energy_mult_natoms``) + penalty, and
``out`` = ``energy`` / N if ``energy_mult_natoms`` else ``energy``. With the defaults
(``mlp_first`` true, ``energy_mult_natoms`` false) ``out`` *is* the total energy, penalty
included: targets are total energies, and the ASE calculator reports ``energy`` = ``out``
(upstream's calculator multiplied it by N).

State dict: the pure model's keys with ``edge_embedding.{0,1}`` and ``angle_embedding.{0,1}``
(the RBF entries are gone, indices shift), plus ``radial.frequencies`` (``radial.centers`` for
the Gaussian fallback), ``angular.frequencies`` (``angular.centers`` for the cosine fallback)
and ``atomref.weight`` (when ``use_atomref``).
"""

from __future__ import annotations

import torch
from torch import nn

from alignn_torch.config import ALIGNNAtomWisePureConfig, ALIGNNAtomWisePureSmoothConfig
from alignn_torch.model.alignn_atomwise_pure import ALIGNNAtomWisePure
from alignn_torch.model.layers import MLPLayer, RBFExpansion
from alignn_torch.model.physics import any_shorter, penalty_energy
from alignn_torch.model.smooth_bases import (
    BesselBasis,
    FourierAngularBasis,
    polynomial_envelope,
)


def pure_equivalent(config: ALIGNNAtomWisePureSmoothConfig) -> ALIGNNAtomWisePureConfig:
    """The ``alignn_atomwise_pure`` config that builds the shared parts (conv stack, heads,
    node update) of a smooth model: its common fields, no cutoff function and no ZBL."""
    common = {
        key: getattr(config, key)
        for key in ALIGNNAtomWisePureConfig.model_fields
        if key in type(config).model_fields and key != "name"
    }
    return ALIGNNAtomWisePureConfig.model_construct(
        **common,
        name="alignn_atomwise_pure",
        use_cutoff_function=False,
        multiply_cutoff=False,
        use_zbl=False,
    )


class ALIGNNAtomWisePureSmooth(ALIGNNAtomWisePure):
    """ALIGNN with smooth learnable bases, AtomRef and a site-energy readout (see module doc)."""

    def __init__(self, config: ALIGNNAtomWisePureSmoothConfig) -> None:
        super().__init__(pure_equivalent(config))  # type: ignore[arg-type]
        self.config = config
        hidden = config.hidden_features
        embedding = config.embedding_features
        self.radial_cutoff: float = float(config.radial_cutoff)
        self.envelope_order: float = float(config.smooth_cutoff_coeff)
        self.mlp_first: bool = config.mlp_first
        self.use_atomref: bool = config.use_atomref
        # Not a model setting here: triplets come with the graph (training, inference) or from
        # the exporter's neighbour contract, both built from the top-level three_body_cutoff.
        self.three_body_cutoff = float("inf")

        # The parent built RBF embeddings; replace them by bases + two MLPLayers each.
        if config.radial_basis == "bessel":
            self.radial: nn.Module = BesselBasis(
                config.radial_cutoff, config.radial_features, config.radial_learnable
            )
        else:
            self.radial = RBFExpansion(0.0, config.radial_cutoff, config.radial_features)
        if config.angular_basis == "fourier":
            order = (config.angular_features - 1) // 2
            self.angular: nn.Module = FourierAngularBasis(order, config.angular_learnable)
        else:
            self.angular = RBFExpansion(-1.0, 1.0, config.angular_features)
        self.edge_embedding = nn.Sequential(
            MLPLayer(config.radial_features, embedding), MLPLayer(embedding, hidden)
        )
        self.angle_embedding = nn.Sequential(
            MLPLayer(config.angular_features, embedding), MLPLayer(embedding, hidden)
        )
        self.atomref: nn.Linear | None = None
        if config.use_atomref:
            self.atomref = nn.Linear(config.atom_input_features, 1, bias=False)
            nn.init.zeros_(self.atomref.weight)

    # ------------------------------------------------------------------ tensor-only overrides
    def _edge_features(self, distance: torch.Tensor) -> torch.Tensor:
        """Bond lengths [E] -> basis [E, N] x envelope -> two MLPLayers -> [E, H]."""
        envelope = polynomial_envelope(distance, self.radial_cutoff, self.envelope_order)
        return self.edge_embedding(self.radial(distance) * envelope.unsqueeze(1))

    def _angle_features(self, cos: torch.Tensor) -> torch.Tensor:
        """Bond-angle cosines [T] -> angular basis -> two MLPLayers -> [T, H]."""
        return self.angle_embedding(self.angular(cos))

    def _readout(
        self,
        x: torch.Tensor,
        atom_features: torch.Tensor,
        node_graph: torch.Tensor,
        n_atoms: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(readout [B] or [B, D], mean atom features [B, H]).

        ``mlp_first``: sum over each structure of fc(x_i) + atomref(a_i), an extensive energy.
        Otherwise fc(mean x) + mean atomref(a_i), a per-atom quantity (scaled in
        :meth:`_energies`).
        """
        num_graphs = int(n_atoms.shape[0])
        count = n_atoms.to(x.dtype).clamp(min=1).unsqueeze(1)  # [B, 1]
        pooled = x.new_zeros((num_graphs, x.shape[1])).index_add_(0, node_graph, x) / count
        atomref = self.atomref
        if self.mlp_first:
            site = self.fc(x)  # [N, D]
            if atomref is not None:
                site = site + atomref(atom_features)  # [N, 1] broadcasts over D
            out = site.new_zeros((num_graphs, site.shape[1])).index_add_(0, node_graph, site)
        else:
            out = self.fc(pooled)  # [B, D]
            if atomref is not None:
                reference = atomref(atom_features)  # [N, 1]
                summed = reference.new_zeros((num_graphs, 1)).index_add_(0, node_graph, reference)
                out = out + summed / count
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
        """Readout -> (``out``, total ``energy``), per graph; see the module docstring.

        ``numbers``, ``src`` and ``dst`` are unused (they feed the pure model's ZBL term).
        """
        num_graphs = int(n_atoms.shape[0])
        count = n_atoms.to(out.dtype).clamp(min=1)  # [B]
        if out.dim() == 2:
            count = count.unsqueeze(1)  # [B, 1] broadcasts over D outputs
        energy = out * count if self.energy_mult_natoms and not self.mlp_first else out
        if self.use_penalty and any_shorter(distance, self.penalty_threshold):
            penalty = penalty_energy(
                distance, edge_graph, num_graphs, self.penalty_factor, self.penalty_threshold
            )  # [B]
            energy = energy + (penalty.unsqueeze(1) if out.dim() == 2 else penalty)
        out = energy / count if self.energy_mult_natoms else energy
        return out, energy
