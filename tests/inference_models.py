"""Tiny saved models for the inference tests (run directories written the way training does).

Test structures contain two or more elements on purpose: in an *elemental* structure every atom
has the same features at every layer (ALIGNN's edge-gated aggregation is a gate-weighted *mean*
of identical neighbour messages), so a random model's energy hardly depends on geometry there
(forces ~1e-7 eV/Å) and force/stress checks would test nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from alignn_core.config.loader import load_config
from alignn_core.plugins import get_registry

TINY = {"name": "alignn_atomwise_pure", "atom_input_features": 92, "alignn_layers": 1,
        "gcn_layers": 1, "hidden_features": 16, "embedding_features": 16,
        "stresswise_weight": 1.0}  # fmt: skip
CU_A = 3.615


def run_config(model: dict | None = None, **changes) -> dict:
    """An upstream-style training config dict for a tiny pure_torch force field."""
    config = {"dataset": "user_data", "neighbor_strategy": "pure_torch", "cutoff": 5.0,
              "max_neighbors": 12, "three_body_cutoff": 3.5, "atom_features": "cgcnn",
              "model": {**TINY, **(model or {})}}  # fmt: skip
    config.update(changes)
    return config


def make_run(directory: Path, *, model: dict | None = None, seed: int = 0, fc_scale: float = 1.0,
             raw_config: dict | None = None, **changes) -> Path:  # fmt: skip
    """Write ``config.json`` (resolved, as our trainer does, unless ``raw_config`` is given) and
    ``best_model.pt`` (a seeded random model, output layer scaled by ``fc_scale``)."""
    data = raw_config if raw_config is not None else run_config(model, **changes)
    config = load_config({**data, "model": {**data["model"], "name": "alignn_atomwise_pure"}})
    resolved = config.config
    torch.manual_seed(seed)
    module = get_registry().models["alignn_atomwise_pure"].build(resolved.model)
    state = module.state_dict()
    state["fc.weight"] = state["fc.weight"] * fc_scale
    directory.mkdir(parents=True, exist_ok=True)
    saved = raw_config if raw_config is not None else resolved.model_dump(mode="json")
    (directory / "config.json").write_text(json.dumps(saved, indent=1))
    torch.save(state, directory / "best_model.pt")
    return directory


def cu_atoms(repeat: int = 1, rattle: float = 0.05, seed: int = 1, a: float = CU_A):
    """L1₂ Cu₃Au (conventional fcc cell, 4 atoms per repeat³), rattled so forces are
    not zero by symmetry."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(repeat)
    atoms.numbers[::4] = 79
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def molecule():
    """A non-periodic 5-atom cluster with bonds of 1.1-2.6 Å."""
    from ase import Atoms

    rng = np.random.default_rng(5)
    positions = np.array([[0, 0, 0], [2.4, 0, 0], [0, 2.4, 0], [0, 0, 2.4], [1.4, 1.4, 1.4]])
    positions = positions + rng.normal(scale=0.1, size=positions.shape)
    return Atoms("Cu3OH", positions=positions)
