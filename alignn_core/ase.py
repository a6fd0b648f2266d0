"""ASE calculator for trained ALIGNN force fields.

Units and signs (ASE's): energy eV, forces eV/Å, stress eV/Å³ as a Voigt 6-vector
``xx, yy, zz, yz, xz, xy``, positive under tension. The model's stress is GPa with the same sign
(``alignn_core.units``), so the conversion is a division by 160.21766208 and nothing else.

``energy`` is the model's total energy *including* the short-bond penalty and ZBL terms: it is
the quantity whose negative gradient the forces are, so MD conserves it. Upstream ALIGNN's
calculator reports ``out * N`` instead, which leaves the penalty out (they differ only when a bond
is shorter than ``penalty_threshold``, 1 Å by default).

One forward pass gives energy, forces and (periodic systems) stress together. Between steps the
neighbour search is reused while no atom has moved more than ``skin / 2`` (when the graph backend
supports it); the graphs, and so every result, are identical to fresh builds.

Constructing a calculator applies the memory-allocator policy ``ALIGNN_MALLOC`` (default
``retain``, :mod:`alignn_core.allocator`) to the process, as the ``alignn`` command does: an MD
step allocates the same large tensors every time, and with glibc's default each is mapped and
page-faulted anew. Measured on fcc Cu MD (docs/inference.md): 1.6-1.7x more steps per second
at 108 and 512 atoms, 2.3x at 4,096. ``ALIGNN_MALLOC=system`` leaves the allocator alone.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from alignn_core.allocator import apply_policy, policy_from_env
from alignn_core.errors import ModelError
from alignn_core.inference.model import GraphBuilder, InferenceModel, has_volume
from alignn_core.inference.structures import structure_from_atoms
from alignn_core.units import EV_PER_A3_TO_GPA

DEFAULT_SKIN = 0.5
"""Å. Atoms may move 0.25 Å before a new neighbour search; ~100 fs of Cu MD at 300 K."""


class ALIGNNCalculator(Calculator):
    """ASE calculator: ``ALIGNNCalculator("runs/ff")`` or ``load_model(...).calculator()``.

    ``model``: an :class:`~alignn_core.inference.InferenceModel` or anything
    :func:`~alignn_core.inference.load_model` accepts. ``device`` (``cpu``, ``cuda``, ``cuda:1``;
    default: the model's, or CUDA when available for a path) and ``dtype`` (``float32`` or
    ``float64``) move/cast a copy of the model. ``skin`` (Å, None disables reuse) controls
    neighbour-list reuse. ``reuses``/``rebuilds`` count cached and full neighbour searches.
    ``cuda_graphs`` replays captured CUDA graphs instead of launching every kernel each step
    (:meth:`~alignn_core.inference.InferenceModel.with_cuda_graphs`; GPU only).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012
    default_parameters: dict[str, Any] = {}  # noqa: RUF012

    def __init__(
        self,
        model: InferenceModel | str | Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        skin: float | None = DEFAULT_SKIN,
        cuda_graphs: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.allocator = apply_policy(policy_from_env())
        if isinstance(model, InferenceModel):
            model = model.to(device=device, dtype=dtype)
        else:
            from alignn_core.inference.loading import load_model

            model = load_model(model, device=device, dtype=dtype)
        if cuda_graphs and not model.uses_cuda_graphs:
            model = model.with_cuda_graphs()
        if skin is not None and not skin >= 0:
            raise ModelError(f"skin must be >= 0 Å (or None to disable reuse), got {skin}")
        if not model.is_force_field:
            raise ModelError(
                f"{model.source}: model was not trained as a force field (calculate_gradient "
                "false or gradwise_weight 0); the ASE calculator needs energies and forces"
            )
        if model.output_width != 1:
            raise ModelError(f"{model.source}: model has {model.output_width} graph outputs; "
                             "the ASE calculator needs a single energy")  # fmt: skip
        if getattr(model.config.model, "force_mult_natoms", False):  # see conserved_energy
            warnings.warn(
                "model was trained with force_mult_natoms: its forces are N x -dE/dx, not the "
                "gradient of its energy, so MD conserves N*E + kinetic energy, not E + kinetic",
                stacklevel=2,
            )
        self.model = model
        self.skin = skin
        self._builder: GraphBuilder = model.graph_builder(skin)

    @property
    def reuses(self) -> int:
        return self._builder.reuses

    @property
    def rebuilds(self) -> int:
        return self._builder.rebuilds

    def calculate(
        self,
        atoms: Any = None,
        properties: Any = ("energy",),
        system_changes: Any = all_changes,
    ) -> None:
        """Energy, forces and (when the structure has a volume) stress in one forward pass."""
        super().calculate(atoms, properties, system_changes)
        structure = structure_from_atoms(self.atoms)
        output = self.model.forward(self._builder.build(structure), gradients=True)
        energy = float(output["energy"].detach().reshape(-1)[0].cpu())
        forces = output["grad"].detach().to("cpu").double().numpy()
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if has_volume(structure):
            stress_gpa = output["stresses"].detach().to("cpu").double().numpy()[0]
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress_gpa / EV_PER_A3_TO_GPA)

    @property
    def forces_scale_with_natoms(self) -> bool:
        """True for ``force_mult_natoms`` models: forces are N × (−dE/dx)."""
        return bool(getattr(self.model.config.model, "force_mult_natoms", False))

    def conserved_energy(self, atoms: Any) -> float:
        """The energy Newtonian dynamics with these forces conserves (eV): kinetic + E, or
        kinetic + N·E for a ``force_mult_natoms`` model (whose forces are −N dE/dx)."""
        scale = len(atoms) if self.forces_scale_with_natoms else 1
        return float(atoms.get_kinetic_energy() + scale * atoms.get_potential_energy())

    def summary(self) -> dict[str, Any]:
        """Model, device, dtype, CUDA graph and neighbour reuse counters, and what the allocator
        policy changed (for logs)."""
        return {"model": str(self.model.source), "device": str(self.model.device),
                "dtype": self.model.dtype, "cuda_graphs": self.model.cuda_graph_counts or None,
                "skin": self.skin, "reuses": self.reuses, "rebuilds": self.rebuilds,
                "allocator": self.allocator}  # fmt: skip


def stress_to_ase(stress_gpa: np.ndarray) -> np.ndarray:
    """Model stress (3×3 GPa, tensile positive) -> ASE Voigt stress in eV/Å³ (same sign)."""
    return full_3x3_to_voigt_6_stress(np.asarray(stress_gpa, dtype=np.float64) / EV_PER_A3_TO_GPA)
