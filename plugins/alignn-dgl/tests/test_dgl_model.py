"""``alignn_atomwise`` on DGL against ``alignn_atomwise_pure``: names, weights, every output.

float64, tiny models: the two implementations share the equations but not the aggregation code
(DGL sparse kernels vs ``index_add_``), so they agree to rounding (~1e-15 relative), for every
option the DGL config has. Needs DGL (``nox -s dgl``); skipped in the default suite.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

pytest.importorskip("dgl")

from alignn_dgl.config import ALIGNNAtomWiseConfig
from alignn_dgl.graphs import DGLGraphBackend
from alignn_dgl.model import ALIGNNAtomWise
from alignn_dgl.plugin import ALIGNNAtomWiseModel
from alignn_torch.config import ALIGNNAtomWisePureConfig
from alignn_torch.graphs.backend import TorchGraphBackend
from alignn_torch.model import ALIGNN_ATOMWISE_PURE, ALIGNNAtomWisePure

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.structures import Structure

SETTINGS = GraphSettings(neighbor_strategy="pure_torch", cutoff=4.0, max_neighbors=None,
                         three_body_cutoff=3.0, atom_features="cgcnn", dtype="float64")  # fmt: skip
BASE = dict(alignn_layers=2, gcn_layers=1, hidden_features=16, embedding_features=16,
            atom_input_features=92, edge_input_features=32, triplet_input_features=16,
            stresswise_weight=1.0, penalty_factor=0.3)  # fmt: skip
"""Tiny model; ``penalty_factor`` stated because the two classes' defaults differ (0.5/0.1)."""

VARIANTS = {
    "plain": {},
    "cutoff_fn": {"use_cutoff_function": True, "inner_cutoff": 3.0},
    "multiply_cutoff": {"use_cutoff_function": True, "multiply_cutoff": True, "inner_cutoff": 3.5},
    "lg_not_on_fly": {"lg_on_fly": False},
    "force_mult_natoms": {"force_mult_natoms": True},
    "no_reverse_forces": {"add_reverse_forces": False},
    "energy_not_mult_natoms": {"energy_mult_natoms": False},
    "no_penalty": {"use_penalty": False},
    "heads": {"atomwise_output_features": 3, "additional_output_features": 2},
    "two_outputs": {"output_features": 2},
    "link_log": {"link": "log"},
    "link_logit": {"link": "logit"},
    "classification": {"classification": True},
    "no_alignn_layers": {"alignn_layers": 0, "gcn_layers": 2},
    "property_model": {"calculate_gradient": False, "stresswise_weight": 0.0},
    "no_stress": {"stresswise_weight": 0.0},
}


@pytest.fixture(autouse=True, scope="module")
def _threads(single_thread) -> Iterator[None]:
    yield


def triclinic() -> Structure:
    cell = np.array([[3.3, 0.2, 0.1], [0.7, 3.1, -0.3], [0.4, 0.6, 3.4]])
    frac = np.array([[0.05, 0.1, 0.0], [0.52, 0.45, 0.4], [0.3, 0.8, 0.7]])
    return Structure(numbers=[11, 8, 29], positions=frac @ cell, cell=cell)


def cubic() -> Structure:
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], dtype=float)
    positions = frac * 4.1 + np.random.default_rng(1).normal(0, 0.08, (4, 3))
    return Structure(numbers=[11, 17, 17, 11], positions=positions, cell=np.eye(3) * 4.1)


def short_bond() -> Structure:
    """A 0.80 Å O-Cu bond: the penalty (< 1 Å) acts."""
    structure = triclinic()
    positions = structure.positions.copy()
    positions[2] = positions[1] + np.array([0.5, 0.45, 0.4]) * 0.80 / np.sqrt(0.6125)
    return Structure(numbers=structure.numbers, positions=positions, cell=structure.cell)


STRUCTURES = [triclinic(), cubic(), short_bond()]


def configs(**overrides: object) -> tuple[ALIGNNAtomWisePureConfig, ALIGNNAtomWiseConfig]:
    fields = {**BASE, **overrides}
    return (ALIGNNAtomWisePureConfig(name="alignn_atomwise_pure", use_zbl=False, **fields),
            ALIGNNAtomWiseConfig(name="alignn_atomwise", **fields))  # fmt: skip


def models(seed: int = 0, **overrides: object) -> tuple[ALIGNNAtomWisePure, ALIGNNAtomWise]:
    """Both models in float64 with the pure model's weights (1-D parameters randomised, so no
    LayerNorm or bias is trivial) loaded strictly into the DGL one."""
    pure_config, dgl_config = configs(**overrides)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        pure = ALIGNNAtomWisePure(pure_config)
        dgl_model = ALIGNNAtomWise(dgl_config)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for param in pure.parameters():
            if param.dim() <= 1:
                param.add_(0.2 * torch.randn_like(param))
    dgl_model.load_state_dict(pure.state_dict(), strict=True)
    return pure.eval(), dgl_model.eval()


def batches(structures: list[Structure]):
    torch_backend, dgl_backend = TorchGraphBackend(), DGLGraphBackend()
    graph = torch_backend.collate([torch_backend.build(s, SETTINGS) for s in structures])
    pair = dgl_backend.collate([dgl_backend.build(s, SETTINGS) for s in structures])
    return graph, pair


def assert_outputs_equal(expected: dict, got: dict, rtol: float = 1e-10) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].shape == value.shape, key
        scale = float(value.abs().max()) or 1.0
        assert float((got[key] - value).abs().max()) <= rtol * scale, key


# ----------------------------------------------------------------------------- names and weights
def test_state_dicts_have_the_same_names_shapes_and_order():
    pure_config, dgl_config = configs(atomwise_output_features=2, additional_output_features=1)
    pure = ALIGNN_ATOMWISE_PURE.build(pure_config).state_dict()
    dgl_state = ALIGNNAtomWiseModel().build(dgl_config).state_dict()
    assert list(dgl_state) == list(pure)
    assert all(dgl_state[k].shape == pure[k].shape for k in pure)


def test_same_seed_gives_the_same_initial_weights():
    pure_config, dgl_config = configs(link="log")
    torch.manual_seed(7)
    pure = ALIGNN_ATOMWISE_PURE.build(pure_config).state_dict()
    torch.manual_seed(7)
    dgl_state = ALIGNNAtomWiseModel().build(dgl_config).state_dict()
    assert all(torch.equal(dgl_state[k], pure[k]) for k in pure)


def test_checkpoints_load_both_ways_strictly():
    pure, dgl_model = models(seed=1)
    fresh_pure, fresh_dgl = models(seed=2)
    fresh_dgl.load_state_dict(pure.state_dict(), strict=True)
    fresh_pure.load_state_dict(dgl_model.state_dict(), strict=True)
    for key, value in pure.state_dict().items():
        assert torch.equal(fresh_dgl.state_dict()[key], value)
        assert torch.equal(fresh_pure.state_dict()[key], value)


def test_upstream_dgl_checkpoint_without_species_table_loads():
    """Upstream's DGL model has no ``_species_table``; its checkpoints load strictly anyway."""
    pure, _ = models(seed=3)
    state = {k: v for k, v in pure.state_dict().items() if k != "_species_table"}
    _, dgl_model = models(seed=4)
    dgl_model._species_table.fill_(1.0)
    dgl_model.load_state_dict(state, strict=True)
    assert "_species_table" not in state  # the caller's dict is untouched
    assert not dgl_model._species_table.any()
    assert torch.equal(dgl_model.fc.weight, pure.fc.weight)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        dgl_model.load_state_dict({**state, "extra.weight": torch.zeros(1)}, strict=True)


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_outputs_equal_the_pure_model(variant):
    pure, dgl_model = models(**VARIANTS[variant])
    graph, pair = batches(STRUCTURES)
    with torch.no_grad():
        expected, got = pure(graph), dgl_model(pair)
        assert_outputs_equal(expected, got)
        assert_outputs_equal(pure(graph, compute_stress=True),
                             dgl_model(pair, compute_stress=True))  # fmt: skip


def test_output_keys_follow_the_config():
    _, dgl_model = models()
    _, pair = batches(STRUCTURES[:1])
    assert list(dgl_model(pair)) == ["out", "energy", "grad", "stresses"]
    _, no_stress = models(stresswise_weight=0.0)
    assert list(no_stress(pair)) == ["out", "energy", "grad"]
    _, prop = models(calculate_gradient=False)
    assert list(prop(pair)) == ["out", "energy"]


def test_batch_equals_singles():
    """Penalty and force_mult_natoms are per graph: a structure's result does not depend on
    the other structures of its batch (upstream's DGL model adds the batch's penalty to all)."""
    _, dgl_model = models(force_mult_natoms=True)
    _, pair = batches(STRUCTURES)
    with torch.no_grad():
        together = dgl_model(pair)
        singles = [dgl_model(batches([s])[1]) for s in STRUCTURES]
    assert torch.allclose(together["energy"], torch.cat([s["energy"] for s in singles]),
                          rtol=1e-12, atol=0)  # fmt: skip
    assert torch.allclose(together["grad"], torch.cat([s["grad"] for s in singles]),
                          rtol=1e-10, atol=1e-12)  # fmt: skip
    assert torch.allclose(together["stresses"], torch.cat([s["stresses"] for s in singles]),
                          rtol=1e-10, atol=1e-12)  # fmt: skip
    # the penalty is really there: without it the short-bond structure's energy changes
    _, no_penalty = models(force_mult_natoms=True, use_penalty=False)
    with torch.no_grad():
        plain = no_penalty(pair)["energy"]
    changed = (together["energy"] - plain).abs() > 1e-9
    assert changed.tolist() == [False, False, True]


def test_training_gradients_equal_the_pure_model():
    """Force and stress losses need double backward through the DGL kernels; parameter
    gradients of an energy + force + stress loss match the pure model's."""
    pure, dgl_model = models(seed=5)
    pure.train()
    dgl_model.train()
    graph, pair = batches(STRUCTURES)

    def loss(output: dict) -> torch.Tensor:
        return (output["energy"].square().sum() + output["grad"].square().sum()
                + output["stresses"].square().sum())  # fmt: skip

    loss(pure(graph)).backward()
    loss(dgl_model(pair)).backward()
    dgl_params = dict(dgl_model.named_parameters())
    checked = 0
    for name, param in pure.named_parameters():
        # the last block's triplet output is unused, in both models alike
        assert (param.grad is None) == (dgl_params[name].grad is None), name
        if param.grad is None:
            continue
        checked += 1
        scale = float(param.grad.abs().max()) or 1.0
        assert float((dgl_params[name].grad - param.grad).abs().max()) <= 1e-9 * scale, name
    assert checked > 0.9 * len(dgl_params)


def test_float32_agrees_within_the_parity_target():
    pure, dgl_model = models(seed=6)
    pure, dgl_model = pure.float(), dgl_model.float()
    graph, pair = batches(STRUCTURES)
    graph, pair = graph.to("cpu", torch.float32), pair.to("cpu", torch.float32)
    with torch.no_grad():
        assert_outputs_equal(pure(graph), dgl_model(pair), rtol=1e-5)
