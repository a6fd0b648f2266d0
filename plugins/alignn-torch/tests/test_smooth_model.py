"""``alignn_atomwise_pure_smooth``: config, parameter layout, physics and the whole user path.

Physics checks run in float64 on tiny models and reuse the finite-difference helpers of
``test_model_physics.py`` (loaded from this folder, not copied). The end-to-end tests train on
the bundled ``examples/ff`` through the CLI, then load the run with ``load_model`` and the ASE
calculator. TorchScript export is tested with the pure model's cases in
``plugins/alignn-torchscript/tests/test_export.py``.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from alignn_torch.config import ALIGNNAtomWisePureSmoothConfig
from alignn_torch.graphs.backend import TorchGraphBackend
from alignn_torch.graphs.graph import collate_graphs
from alignn_torch.model import ALIGNN_ATOMWISE_PURE_SMOOTH, ALIGNNAtomWisePureSmooth
from alignn_torch.model.smooth_bases import polynomial_envelope

from alignn_core.config import load_config
from alignn_core.config.graph_settings import GraphSettings
from alignn_core.errors import ConfigError, ModelError
from alignn_core.structures import Structure

NAME = "alignn_atomwise_pure_smooth"
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _sibling(name: str) -> ModuleType:
    """Import a helper module that sits next to this file (the tests folder is no package)."""
    spec = importlib.util.spec_from_file_location(f"_smooth_{name}", Path(__file__).with_name(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


physics = _sibling("test_model_physics.py")


pytestmark = pytest.mark.usefixtures("single_thread")


def make_model(seed: int = 0, **overrides: object) -> ALIGNNAtomWisePureSmooth:
    """Tiny float64 smooth model, eval mode; 1-d parameters (biases, norms, frequencies)
    randomised and AtomRef non-zero so that no term is trivial. ``radial_cutoff`` 3.5 lies
    inside the 4 Å graph cutoff of ``physics.SETTINGS``, so the envelope's zero region is
    exercised too."""
    fields: dict[str, object] = dict(
        name=NAME,
        alignn_layers=2,
        gcn_layers=1,
        hidden_features=16,
        embedding_features=16,
        atom_input_features=92,
        edge_input_features=12,
        triplet_input_features=9,
        stresswise_weight=1.0,
        radial_cutoff=3.5,
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    model = ALIGNN_ATOMWISE_PURE_SMOOTH.build(ALIGNNAtomWisePureSmoothConfig(**fields))
    model = model.double().eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() <= 1:
                param.add_(0.2 * torch.randn_like(param))
        if model.atomref is not None:
            model.atomref.weight.normal_()
    return model


VARIANTS = {
    "bessel_fourier": {},
    "gaussian_cosine": {"radial_basis": "gaussian", "angular_basis": "cosine"},
    "mlp_last_per_atom": {"mlp_first": False, "energy_mult_natoms": True},
    "gated_sum_fixed_bases": {
        "node_update": "gated_sum",
        "node_update_norm": 6.0,
        "radial_learnable": False,
        "angular_learnable": False,
    },
}


# ---------------------------------------------------------------------------- config
def _load_error(model: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config({"model": {"name": NAME, "atom_input_features": 92, **model}})
    return str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("use_zbl", True, "it has no ZBL term"),
        ("zbl_cutoff", 0.9, "it has no ZBL term"),
        ("use_cutoff_function", False, "its radial basis always has the envelope"),
        ("multiply_cutoff", True, "its radial basis always has the envelope"),
        ("three_body_cutoff", 3.5, "triplets follow the top-level three_body_cutoff"),
    ],
)
def test_config_rejects_the_pure_only_fields(field: str, value: object, reason: str) -> None:
    message = _load_error({field: value})
    assert "\n" not in message
    assert message.startswith(f"config: model: {field} is not a field of {NAME} ({reason}")
    assert message.endswith("; remove it")


def test_config_defaults_schema_and_warnings() -> None:
    loaded = load_config({"model": {"name": NAME, "atom_input_features": 92}})
    model = loaded.config.model
    assert loaded.warnings == []
    assert (model.energy_mult_natoms, model.penalty_factor) == (False, 0.5)
    assert (model.radial_cutoff, model.smooth_cutoff_coeff) == (8.0, 5.0)
    assert (model.radial_basis, model.angular_basis) == ("bessel", "fourier")
    assert model.radial_learnable and model.angular_learnable
    assert model.use_atomref and model.mlp_first and model.node_update == "upstream"
    assert not model.zbl_enabled
    dumped = model.model_dump()
    schema = type(model).model_json_schema()["properties"]
    for removed in ("use_cutoff_function", "multiply_cutoff", "three_body_cutoff", "use_zbl"):
        assert removed not in dumped and removed not in schema
    # a run's resolved config (every field written out) loads back without warnings
    again = load_config({"model": dumped})
    assert again.config.model == model and again.warnings == []
    # fields that exist but do nothing here say so when they are changed
    changed = load_config({"model": {**dumped, "inner_cutoff": 4.0, "exponent": 6}})
    assert changed.warnings == [
        f"model.exponent and model.inner_cutoff are ignored by {NAME}: its envelope is set by "
        "radial_cutoff and smooth_cutoff_coeff"
    ]
    assert "greater than 0" in _load_error({"smooth_cutoff_coeff": 0})
    assert "'bessel' or 'gaussian'" in _load_error({"radial_basis": "chebyshev"})
    assert "t_alignn" in _load_error({"node_update": "gated_sum", "conv_type": "t_alignn"})


# ---------------------------------------------------------------------------- layout
def test_state_dict_layout() -> None:
    config = ALIGNNAtomWisePureSmoothConfig(name=NAME, atom_input_features=92)
    model = ALIGNN_ATOMWISE_PURE_SMOOTH.build(config)
    state = model.state_dict()
    assert {"atomref.weight", "radial.frequencies", "angular.frequencies"} <= set(state)
    assert not any(key.endswith("centers") for key in state)  # no RBF inside the embeddings
    assert state["edge_embedding.0.layer.0.weight"].shape == (64, 80)
    assert state["angle_embedding.0.layer.0.weight"].shape == (64, 39)  # order 19 -> 2*19+1
    assert "edge_embedding.2.layer.0.weight" not in state
    assert state["atomref.weight"].shape == (1, 92)
    assert float(state["atomref.weight"].abs().max()) == 0.0  # zero-initialised
    torch.testing.assert_close(
        state["radial.frequencies"], math.pi * torch.arange(1, 81, dtype=torch.float32)
    )
    torch.testing.assert_close(
        state["angular.frequencies"], torch.arange(1, 20, dtype=torch.float32)
    )
    trained = {name for name, _ in model.named_parameters()}
    assert {"radial.frequencies", "angular.frequencies", "atomref.weight"} <= trained

    fixed = ALIGNN_ATOMWISE_PURE_SMOOTH.build(
        config.model_copy(update={"radial_learnable": False, "angular_learnable": False})
    )
    assert "radial.frequencies" in fixed.state_dict()
    assert "radial.frequencies" not in {name for name, _ in fixed.named_parameters()}
    fallback = ALIGNN_ATOMWISE_PURE_SMOOTH.build(
        config.model_copy(
            update={"radial_basis": "gaussian", "angular_basis": "cosine", "use_atomref": False}
        )
    ).state_dict()
    assert {"radial.centers", "angular.centers"} <= set(fallback)
    assert "atomref.weight" not in fallback
    assert fallback["angle_embedding.0.layer.0.weight"].shape == (64, 40)
    assert float(fallback["radial.centers"][-1]) == 8.0  # RBF on 0..radial_cutoff


def test_checkpoints_round_trip_and_node_update_mismatch_is_refused() -> None:
    plain = make_model()
    again = make_model(seed=1)
    again.load_state_dict(plain.state_dict(), strict=True)
    graph = physics.build(physics.triclinic())
    torch.testing.assert_close(again(graph)["energy"], plain(graph)["energy"])
    gated = make_model(node_update="gated_sum")
    with pytest.raises(ModelError, match="node_update 'gated_sum'"):
        plain.load_state_dict(gated.state_dict())


# ---------------------------------------------------------------------------- physics
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", sorted(physics.STRUCTURES))
def test_forces_and_stress_are_energy_derivatives(name: str, variant: str) -> None:
    model = make_model(**VARIANTS[variant])
    graph = physics.build(physics.STRUCTURES[name]())
    result = model(graph)
    forces = physics.fd_forces(model, graph)
    assert forces.abs().max() > 1e-4, "forces should not vanish on this structure"
    physics.assert_matches_fd(result["grad"], forces, f"{name}/{variant} forces")
    stress = physics.fd_stress(model, graph)
    physics.assert_matches_fd(result["stresses"][0], stress, f"{name}/{variant} stress")
    assert float(result["grad"].sum(0).abs().max()) < 1e-10 * max(1.0, float(forces.abs().max()))


def trimer(distance: float) -> Structure:
    """Cl-Na-O in a line in a 20 Å box: Na-Cl fixed at 1.9 Å, Na-O = ``distance``, Cl-O
    beyond the graph cutoff. Na has two neighbours, so its gated mean sees the Na-O bond."""
    na = np.array([8.0, 8.0, 8.0])
    positions = np.stack([na, na + np.array([-1.9, 0.0, 0.0]), na + np.array([distance, 0, 0])])
    return Structure(numbers=[11, 17, 8], positions=positions, cell=np.eye(3) * 20.0)


WIDE = GraphSettings(
    neighbor_strategy="pure_torch",
    cutoff=3.5,  # beyond radial_cutoff: the Na-O bond stays in the graph while it crosses r_c
    max_neighbors=None,
    three_body_cutoff=2.0,  # triplets only from the fixed Na-Cl bond
    atom_features="cgcnn",
    dtype="float64",
)


@pytest.mark.parametrize("basis", ["bessel", "gaussian"])
def test_energy_is_smooth_where_a_bond_crosses_radial_cutoff(basis: str) -> None:
    r_c = 3.0
    model = make_model(radial_cutoff=r_c, radial_basis=basis)
    build = TorchGraphBackend().build
    at = {}
    for d in (r_c - 0.9, r_c - 1e-6, r_c + 1e-6, r_c + 0.3):
        graph = build(trimer(d), WIDE)
        assert graph.num_edges == 4  # Na-Cl and Na-O, both directions
        at[d] = model(graph)
    energy = {d: float(result["energy"].detach()[0]) for d, result in at.items()}
    force = {d: result["grad"] for d, result in at.items()}
    assert abs(energy[r_c - 0.9] - energy[r_c + 0.3]) > 1e-4  # the bond matters inside r_c
    assert float(force[r_c - 0.9][2].abs().max()) > 1e-4
    # value and slope of the envelope vanish at r_c: energy and forces are continuous (the
    # jump over 2e-6 Å is O(1e-18) eV), and beyond r_c the bond length does not matter
    assert abs(energy[r_c - 1e-6] - energy[r_c + 1e-6]) < 1e-12
    assert energy[r_c + 1e-6] == energy[r_c + 0.3]
    assert float(force[r_c - 1e-6][2].abs().max()) < 1e-9
    assert float(force[r_c + 0.3][2].abs().max()) == 0.0


def test_envelope_and_bases() -> None:
    d = torch.linspace(0.1, 4.0, 40, dtype=torch.float64, requires_grad=True)
    u = polynomial_envelope(d, 3.0, 5.0)
    (slope,) = torch.autograd.grad(u.sum(), d)
    assert float(u[0].detach()) == pytest.approx(1.0, abs=1e-4)
    beyond = d.detach() >= 3.0
    assert float(u.detach()[beyond].abs().max()) == 0.0 and float(slope[beyond].abs().max()) == 0.0
    # order 5 is the pure model's envelope (physics.cutoff_envelope with exponent 5)
    from alignn_torch.model.physics import cutoff_envelope

    torch.testing.assert_close(u, cutoff_envelope(d, 3.0, 5))

    model = make_model()
    cos = torch.tensor([-1.0, -0.3, 0.2, 1.0], dtype=torch.float64)
    features = model.angular(cos)
    assert features.shape == (4, 9)  # triplet_input_features 9 -> order 4 -> 9 features
    theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    k = model.angular.frequencies.detach()
    expected = torch.cat(
        [
            torch.full((4, 1), 2**-0.5, dtype=torch.float64),
            torch.sin(theta[:, None] * k),
            torch.cos(theta[:, None] * k),
        ],
        dim=1,
    ) / math.sqrt(math.pi)
    torch.testing.assert_close(features, expected)
    radial = model.radial(torch.tensor([1.0, 2.5], dtype=torch.float64))
    w = model.radial.frequencies.detach()
    torch.testing.assert_close(
        radial,
        math.sqrt(2 / 3.5)
        * torch.sin(w * torch.tensor([[1.0], [2.5]]) / 3.5)
        / torch.tensor([[1.0], [2.5]]),
    )


@pytest.mark.parametrize(
    ("mlp_first", "energy_mult_natoms"),
    [(True, False), (True, True), (False, True), (False, False)],
)
def test_batch_equals_singles(mlp_first: bool, energy_mult_natoms: bool) -> None:
    model = make_model(
        mlp_first=mlp_first,
        energy_mult_natoms=energy_mult_natoms,
        force_mult_natoms=True,
        atomwise_output_features=2,
        additional_output_features=3,
    )
    graphs = [physics.build(s()) for s in (physics.short_bond, physics.cubic, physics.triclinic)]
    batch = model(collate_graphs(graphs))
    singles = [model(g) for g in graphs]
    assert set(batch) == {"out", "energy", "grad", "stresses", "atomwise_pred", "additional"}
    for key, value in batch.items():
        joined = torch.cat([s[key] for s in singles])
        torch.testing.assert_close(value, joined, rtol=1e-11, atol=1e-11, msg=key)


def test_out_is_the_energy_and_includes_atomref_and_penalty() -> None:
    """Defaults: ``out`` is the total energy (AtomRef and penalty included), extensive in
    supercells; ``energy_mult_natoms`` makes it the energy per atom."""
    graph = physics.build(physics.short_bond())
    n = graph.num_nodes
    model = make_model()
    result = model(graph)
    assert torch.equal(result["out"], result["energy"])
    no_penalty = make_model(use_penalty=False)(graph)["energy"]
    distance = graph.r.norm(dim=1)
    penalty = 0.5 * (1.0 - distance[distance < 1.0]).sum()
    assert float(penalty) > 0
    torch.testing.assert_close(result["out"] - no_penalty, penalty.reshape(1))
    reference = model.atomref(graph.atom_features.double()).sum()
    with torch.no_grad():
        model.atomref.weight.zero_()
    torch.testing.assert_close(result["out"] - model(graph)["out"], reference.reshape(1).detach())

    per_atom = make_model(energy_mult_natoms=True)(graph)
    torch.testing.assert_close(per_atom["out"] * n, result["energy"])
    torch.testing.assert_close(per_atom["energy"], result["energy"])

    structure = physics.short_bond()
    cell = structure.cell
    doubled = Structure(
        numbers=np.concatenate([structure.numbers, structure.numbers]),
        positions=np.concatenate([structure.positions, structure.positions + cell[0]]),
        cell=np.stack([2 * cell[0], cell[1], cell[2]]),
    )
    for fields in ({}, {"mlp_first": False, "energy_mult_natoms": True}):
        small, big = (make_model(**fields)(physics.build(s)) for s in (structure, doubled))
        torch.testing.assert_close(big["energy"], 2 * small["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(big["stresses"], small["stresses"], rtol=1e-8, atol=1e-9)


def test_mlp_last_is_the_pure_readout_plus_mean_atomref() -> None:
    """``mlp_first`` false, ``energy_mult_natoms`` false: out = fc(mean x) + mean AtomRef +
    penalty, a per-structure (intensive) output as for property models."""
    graph = physics.build(physics.triclinic())
    model = make_model(mlp_first=False, energy_mult_natoms=False, use_penalty=False)
    features = graph.atom_features.double()
    x = model._node_features(
        features, graph.r.double(), graph.src, graph.dst, graph.lg_src, graph.lg_dst, graph.lg_cos
    )
    expected = model.fc(x.mean(0)) + model.atomref(features).mean(0)
    torch.testing.assert_close(model(graph)["out"], expected.detach())


def test_atomref_starts_at_zero_and_learns() -> None:
    torch.manual_seed(0)
    config = ALIGNNAtomWisePureSmoothConfig(
        name=NAME, atom_input_features=92, hidden_features=16, embedding_features=16,
        edge_input_features=12, triplet_input_features=9, alignn_layers=1, gcn_layers=1,
    )  # fmt: skip
    model = ALIGNN_ATOMWISE_PURE_SMOOTH.build(config).double().train()
    assert float(model.atomref.weight.detach().abs().max()) == 0.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = collate_graphs([physics.build(physics.cubic()), physics.build(physics.triclinic())])
    result = model(batch)
    loss = (result["out"] + 10.0).pow(2).mean() + result["grad"].pow(2).mean()
    loss.backward()
    for name in ("atomref.weight", "radial.frequencies", "angular.frequencies"):
        grad = model.get_parameter(name).grad
        assert grad is not None and float(grad.abs().max()) > 0, name
    optimizer.step()
    assert float(model.atomref.weight.detach().abs().max()) > 0


def rattled_copper(seed: int) -> Structure:
    """2x2x2 fcc Cu (32 atoms), displaced by ~0.05 Å."""
    basis = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    offsets = np.array([(i, j, k) for i in range(2) for j in range(2) for k in range(2)])
    frac = (basis[None] + offsets[:, None]).reshape(-1, 3) / 2
    cell = np.eye(3) * 7.22
    positions = frac @ cell + np.random.default_rng(seed).normal(0, 0.05, frac.shape)
    return Structure(numbers=[29] * 32, positions=positions, cell=cell)


def test_node_update_applies_to_the_smooth_model() -> None:
    """With one element the upstream gated mean hides geometry from the site energies of the
    smooth model too; gated_sum does not."""
    settings = GraphSettings(
        neighbor_strategy="pure_torch", cutoff=5.0, max_neighbors=12, atom_features="cgcnn"
    )
    graphs = [TorchGraphBackend().build(rattled_copper(seed), settings) for seed in (1, 2)]
    spread = {}
    for update in ("upstream", "gated_sum"):
        torch.manual_seed(0)
        config = ALIGNNAtomWisePureSmoothConfig(
            name=NAME, atom_input_features=92, radial_cutoff=5.0, node_update=update
        )
        model = ALIGNN_ATOMWISE_PURE_SMOOTH.build(config).eval()
        result = model(collate_graphs(graphs))
        energy = result["energy"].detach()
        spread[update] = (float((energy[0] - energy[1]).abs() / energy.abs().max()),
                          float(result["grad"].abs().max()))  # fmt: skip
    assert spread["upstream"][0] < 1e-5 and spread["upstream"][1] < 1e-4
    assert spread["gated_sum"][0] > 1e-4 and spread["gated_sum"][1] > 1e-3


# ---------------------------------------------------------------------------- user path
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs on ``examples/ff`` through ``alignn run``, a tiny smooth model."""
    from alignn_core.cli.app import main

    config = json.loads((EXAMPLES / "ff" / "config.json").read_text())
    config.update({"epochs": 2, "batch_size": 8})
    config["model"] = {
        **config["model"],
        "name": NAME,
        "alignn_layers": 1,
        "gcn_layers": 1,
        "hidden_features": 16,
        "embedding_features": 16,
        "edge_input_features": 16,
        "triplet_input_features": 9,
        "radial_cutoff": 4.0,
    }
    del config["model"]["use_cutoff_function"]  # the pure model's field; rejected here
    folder = tmp_path_factory.mktemp("smooth")
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    out = folder / "run"
    code = main(["run", str(path), "--root-dir", str(EXAMPLES / "ff"), "--output-dir", str(out)])
    assert code == 0
    return out


def test_trains_through_the_cli(trained_run: Path) -> None:
    history = json.loads((trained_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"graph_mae", "forces_mae", "stress_mae"} <= set(history[-1]["val"])
    state = torch.load(trained_run / "best_model.pt", weights_only=True)
    assert "atomref.weight" in state and float(state["atomref.weight"].abs().max()) > 0
    assert "radial.frequencies" in state
    resolved = json.loads((trained_run / "config.json").read_text())["model"]
    assert resolved["name"] == NAME and "use_zbl" not in resolved
    predictions = json.loads((trained_run / "predictions_test.json").read_text())
    assert len(predictions[0]["forces_prediction"][0]) == 3


def test_load_model_and_ase_calculator(trained_run: Path) -> None:
    """Energy = out (the total energy; upstream's calculator multiplied by N), forces = -dE/dx
    and stress = (1/V) dE/d(strain) by ASE's own finite differences."""
    from ase import Atoms
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

    from alignn_core.inference.loading import load_model

    model = load_model(trained_run, device="cpu", dtype="float64")
    assert model.config.model.name == NAME and model.is_force_field
    structure = physics.triclinic()
    atoms = Atoms(structure.numbers, structure.positions, cell=structure.cell, pbc=True)
    atoms.rattle(0.05, seed=3)
    (prediction,) = model.predict(atoms)
    assert prediction.energy == pytest.approx(float(prediction.out[0]), rel=0, abs=0)
    atoms.calc = model.calculator(skin=None)
    assert atoms.get_potential_energy() == prediction.energy
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 1e-3
    numeric = calculate_numerical_forces(atoms, eps=1e-5)
    np.testing.assert_allclose(forces, numeric, atol=1e-6 * np.abs(forces).max() + 1e-9)
    numeric_stress = calculate_numerical_stress(atoms, eps=1e-6)
    np.testing.assert_allclose(stress, numeric_stress, atol=1e-6 * np.abs(stress).max() + 1e-10)
