"""Unusual structures either work or fail with a one-line reason, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignn_core.config import load_config
from alignn_core.errors import DataError
from alignn_core.io.structures import structure_from_jarvis
from alignn_core.plugins import get_registry
from alignn_core.structures import Structure

CONFIG = {
    "neighbor_strategy": "pure_torch",
    "cutoff": 5.0,
    "model": {"name": "alignn_atomwise_pure", "atom_input_features": 92, "hidden_features": 8,
              "embedding_features": 8, "alignn_layers": 1, "gcn_layers": 1,
              "stresswise_weight": 1.0},
}  # fmt: skip


def _evaluate(structure: Structure, **changes):
    config = load_config({**CONFIG, **changes}).config
    registry = get_registry()
    backend = registry.graph_backends["torch"]
    model = registry.models[config.model.name].build(config.model)
    graph = backend.build(structure, config.graph_settings)
    return model.eval()(backend.collate([graph]))


def test_single_atom_cell_sees_its_images():
    output = _evaluate(Structure([29], [[0, 0, 0]], np.eye(3) * 2.55))
    assert torch.isfinite(output["energy"]).all()
    assert torch.allclose(output["grad"], torch.zeros(1, 3), atol=1e-6)  # symmetric: no net force


def test_atom_without_neighbours_is_an_isolated_node():
    # two atoms 20 Å apart in a big box, cutoff 5: no edges at all
    structure = Structure([14, 14], [[0, 0, 0], [20, 0, 0]], np.eye(3) * 40)
    output = _evaluate(structure)
    assert torch.isfinite(output["energy"]).all()
    assert torch.equal(output["grad"], torch.zeros(2, 3))


def test_overlapping_atoms_are_repelled_not_nan():
    structure = Structure([14, 14], [[0, 0, 0], [0.05, 0, 0]], np.eye(3) * 10)
    output = _evaluate(structure)
    assert torch.isfinite(output["energy"]).all() and torch.isfinite(output["grad"]).all()
    # penalty + ZBL push the atoms apart
    assert output["grad"][0, 0] < 0 < output["grad"][1, 0]


def test_huge_cell_is_fine():
    structure = Structure([8], [[0, 0, 0]], np.eye(3) * 1000)
    assert torch.isfinite(_evaluate(structure)["energy"]).all()


def test_degenerate_lattice_is_rejected_by_the_reader():
    atoms = {"lattice_mat": [[1, 0, 0], [2, 0, 0], [0, 0, 1]], "coords": [[0, 0, 0]],
             "elements": ["Cu"], "cartesian": True}  # fmt: skip
    with pytest.raises(DataError) as info:
        structure_from_jarvis(atoms, "id_prop.json: entry 3")
    assert str(info.value) == "id_prop.json: entry 3: lattice is degenerate (cell volume 0 Å^3)"
