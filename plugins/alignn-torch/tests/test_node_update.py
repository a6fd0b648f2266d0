"""``model.node_update``: upstream's gated mean is blind to one-element geometry; gated_sum is not.

The blindness is a documented property of ``node_update: "upstream"`` (docs/elemental.md): with
one element every atom starts with the same features, the gated *mean* of identical vectors is
that vector up to the 1e-6 in its denominator, so at random initialisation energies of two
different rattles agree to ~1e-7 and forces are ~1e-7 eV/Å. These tests pin that property
(so a change to the numerics that "fixes" it silently would be noticed) and show that the
geometry-aware update sees geometry with the same parameters.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from alignn_torch.config import ELEMENTAL_UPSTREAM_WARNING, ALIGNNAtomWisePureConfig
from alignn_torch.graphs.backend import TorchGraphBackend
from alignn_torch.graphs.graph import collate_graphs
from alignn_torch.model import ALIGNN_ATOMWISE_PURE

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.errors import ModelError
from alignn_core.inference.loading import load_model
from alignn_core.structures import Structure

SETTINGS = GraphSettings(
    neighbor_strategy="pure_torch", cutoff=5.0, max_neighbors=12, atom_features="cgcnn"
)


pytestmark = pytest.mark.usefixtures("single_thread")


def rattled_supercell(element: str, seed: int) -> Structure:
    """2x2x2 conventional supercell (diamond Si or fcc Cu), atoms displaced by ~0.05 Å."""
    if element == "Si":
        a, z = 5.43, 14
        basis = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
        basis = basis + [[x + 0.25, y + 0.25, w + 0.25] for x, y, w in basis]
    else:
        a, z = 3.61, 29
        basis = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    offsets = [(i, j, k) for i in range(2) for j in range(2) for k in range(2)]
    frac = (np.array(basis)[None, :, :] + np.array(offsets)[:, None, :]).reshape(-1, 3) / 2
    cell = np.eye(3) * 2 * a
    positions = frac @ cell + np.random.default_rng(seed).normal(0, 0.05, frac.shape)
    return Structure(numbers=[z] * len(frac), positions=positions, cell=cell)


def predict(node_update: str, element: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Total energies [2] and forces [2, N, 3] of two rattles, default model at random init."""
    torch.manual_seed(0)
    config = ALIGNNAtomWisePureConfig(
        name="alignn_atomwise_pure", atom_input_features=92, node_update=node_update
    )
    model = ALIGNN_ATOMWISE_PURE.build(config).eval()
    graphs = [TorchGraphBackend().build(rattled_supercell(element, s), SETTINGS) for s in (1, 2)]
    result = model(collate_graphs(graphs))
    return result["energy"].detach(), result["grad"].detach().view(2, -1, 3)


@pytest.mark.parametrize("element", ["Si", "Cu"])
def test_upstream_update_is_blind_to_one_element_geometry(element: str) -> None:
    energy, forces = predict("upstream", element)
    assert abs(float(energy[0] - energy[1])) <= 1e-6 * abs(float(energy[0]))
    assert float(forces.abs().max()) < 1e-5


@pytest.mark.parametrize("element", ["Si", "Cu"])
def test_gated_sum_sees_one_element_geometry(element: str) -> None:
    energy, forces = predict("gated_sum", element)
    assert abs(float(energy[0] - energy[1])) > 1e-5 * abs(float(energy[0]))
    assert float(forces.abs().max()) > 1e-2


def test_gated_sum_keeps_upstream_parameters() -> None:
    base = dict(name="alignn_atomwise_pure", atom_input_features=92)
    upstream = ALIGNN_ATOMWISE_PURE.build(ALIGNNAtomWisePureConfig(**base)).state_dict()
    summed = ALIGNN_ATOMWISE_PURE.build(
        ALIGNNAtomWisePureConfig(**base, node_update="gated_sum", node_update_norm=8)
    ).state_dict()
    assert set(summed) - set(upstream) == {"_node_update"}
    assert summed["_node_update"].tolist() == [1.0, 8.0]
    for key, value in upstream.items():
        assert summed[key].shape == value.shape, key


def test_t_alignn_refuses_gated_sum() -> None:
    with pytest.raises(ValueError, match="node_update 'gated_sum' needs conv_type"):
        ALIGNNAtomWisePureConfig(
            name="alignn_atomwise_pure", conv_type="t_alignn", node_update="gated_sum"
        )


@pytest.mark.parametrize(
    ("trained", "asked", "message"),
    [
        ("upstream", {"node_update": "gated_sum"},
         "trained with model.node_update 'upstream' but the config asks for 'gated_sum' "
         "(node_update_norm 12)"),
        ({"node_update": "gated_sum"}, "upstream",
         "trained with model.node_update 'gated_sum' (node_update_norm 12) but the config asks "
         "for 'upstream'"),
        ({"node_update": "gated_sum"}, {"node_update": "gated_sum", "node_update_norm": 20},
         "'gated_sum' (node_update_norm 12) but the config asks for 'gated_sum' "
         "(node_update_norm 20)"),
    ],
)  # fmt: skip
def test_checkpoint_of_another_update_is_refused(tmp_path, trained, asked, message) -> None:
    def fields(choice) -> dict:
        extra = {} if choice == "upstream" else choice
        return {"name": "alignn_atomwise_pure", "atom_input_features": 92, **extra}

    model = ALIGNN_ATOMWISE_PURE.build(ALIGNNAtomWisePureConfig(**fields(trained)))
    torch.save(model.state_dict(), tmp_path / "best_model.pt")
    config = {"atom_features": "cgcnn", "neighbor_strategy": "pure_torch", "model": fields(asked)}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"set model\.node_update") as info:
        load_model(tmp_path, device="cpu")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("elements", "fields", "warned"),
    [
        ({29}, {}, True),
        ({29}, {"node_update": "gated_sum"}, False),
        ({29}, {"gradwise_weight": 0}, False),  # no forces: energies alone see no geometry
        ({14, 6}, {}, False),
    ],
)
def test_one_element_force_field_warning(elements, fields, warned) -> None:
    config = ALIGNNAtomWisePureConfig(name="alignn_atomwise_pure", **fields)
    warnings = config.dataset_warnings(elements)
    assert warnings == ([ELEMENTAL_UPSTREAM_WARNING] if warned else [])
