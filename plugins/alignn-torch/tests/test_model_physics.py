"""Physics checks of ``alignn_atomwise_pure``: forces, stress, invariances, batching, conv types.

Everything runs in float64 on tiny models (hidden 16, embedding 16) so finite differences are
meaningful at 1e-7 relative. Finite differences evaluate all displaced geometries as one batch
(batching is checked against single structures separately, in ``test_batch_equals_singles``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from alignn_torch.config import ALIGNNAtomWisePureConfig
from alignn_torch.graphs.graph import AtomGraph, collate_graphs
from alignn_torch.model import ALIGNN_ATOMWISE_PURE, ALIGNNAtomWisePure

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.structures import Structure
from alignn_core.units import EV_PER_A3_TO_GPA

backend = pytest.importorskip(
    "alignn_torch.graphs.backend", reason="graph builder (graphs/backend.py) not available yet"
)

SETTINGS = GraphSettings(
    neighbor_strategy="pure_torch",
    cutoff=4.0,
    max_neighbors=None,  # no cap: supercells must see exactly the same neighbourhoods
    three_body_cutoff=3.0,
    atom_features="cgcnn",
    dtype="float64",
)
STEP = 1e-5  # Å for positions, dimensionless for strain


pytestmark = pytest.mark.usefixtures("single_thread")


def build(structure: Structure) -> AtomGraph:
    return backend.TorchGraphBackend().build(structure, SETTINGS)


def make_model(seed: int = 0, **overrides: object) -> ALIGNNAtomWisePure:
    """Tiny float64 model in eval mode, LayerNorm affines randomised so no layer is trivial."""
    fields = dict(
        name="alignn_atomwise_pure",
        alignn_layers=2,
        gcn_layers=1,
        hidden_features=16,
        embedding_features=16,
        atom_input_features=92,
        edge_input_features=32,
        triplet_input_features=16,
        stresswise_weight=1.0,
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    model = ALIGNN_ATOMWISE_PURE.build(ALIGNNAtomWisePureConfig(**fields)).double().eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() <= 1:
                param.add_(0.2 * torch.randn_like(param))
    return model


def cubic() -> Structure:
    """Rattled rock-salt-like cell: cubic lattice, two elements, non-zero forces."""
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], dtype=float)
    rng = np.random.default_rng(1)
    cell = np.eye(3) * 4.1
    positions = frac @ cell + rng.normal(0, 0.08, (4, 3))
    return Structure(numbers=[11, 17, 17, 11], positions=positions, cell=cell)


def triclinic() -> Structure:
    cell = np.array([[3.3, 0.2, 0.1], [0.7, 3.1, -0.3], [0.4, 0.6, 3.4]])
    frac = np.array([[0.05, 0.1, 0.0], [0.52, 0.45, 0.4], [0.3, 0.8, 0.7]])
    return Structure(numbers=[11, 8, 29], positions=frac @ cell, cell=cell)


def short_bond() -> Structure:
    """Triclinic cell with a 0.80 Å O-Cu bond: penalty (< 1 Å) and ZBL (< 0.9 Å) both act."""
    structure = triclinic()
    positions = structure.positions.copy()
    positions[2] = positions[1] + np.array([0.5, 0.45, 0.4]) * 0.80 / np.sqrt(0.6125)
    return Structure(numbers=structure.numbers, positions=positions, cell=structure.cell)


STRUCTURES = {"cubic": cubic, "triclinic": triclinic, "short_bond": short_bond}
PHYSICS = {
    "plain": {},
    "cutoff_fn": {"use_cutoff_function": True, "inner_cutoff": 3.0},
    "multiply_cutoff": {"use_cutoff_function": True, "multiply_cutoff": True, "inner_cutoff": 3.5},
    "gated_sum": {"node_update": "gated_sum", "node_update_norm": 6.0},
}


def energies(model: ALIGNNAtomWisePure, graphs: list[AtomGraph]) -> torch.Tensor:
    """Total energies [B] of many geometries in one batched forward."""
    with torch.no_grad():
        return model(collate_graphs(graphs), compute_stress=False)["energy"]


def fd_forces(model: ALIGNNAtomWisePure, graph: AtomGraph) -> torch.Tensor:
    """-dE/dx by central differences on positions, topology held fixed -> [N, 3]."""
    displaced = []
    for atom in range(graph.num_nodes):
        for axis in range(3):
            for sign in (1.0, -1.0):
                positions = graph.positions.clone()
                positions[atom, axis] += sign * STEP
                displaced.append(graph.with_positions(positions))
    e = energies(model, displaced).view(graph.num_nodes, 3, 2)
    return -(e[..., 0] - e[..., 1]) / (2 * STEP)


def fd_stress(model: ALIGNNAtomWisePure, graph: AtomGraph) -> torch.Tensor:
    """(1/V) dE/d(strain) * 160.2 GPa by central differences of symmetric strains -> [3, 3]."""
    displaced = []
    pairs = [(a, b) for a in range(3) for b in range(a, 3)]
    for a, b in pairs:
        for sign in (1.0, -1.0):
            strain = torch.zeros(3, 3, dtype=torch.float64)
            strain[a, b] += sign * STEP / (1 if a == b else 2)
            strain[b, a] += 0 if a == b else sign * STEP / 2
            deform = torch.eye(3, dtype=torch.float64) + strain  # rows: x' = x (I + eps)
            displaced.append(graph.with_positions(graph.positions @ deform, graph.cell @ deform))
    e = energies(model, displaced).view(len(pairs), 2)
    derivative = (e[:, 0] - e[:, 1]) / (2 * STEP)
    stress = torch.zeros(3, 3, dtype=torch.float64)
    for (a, b), value in zip(pairs, derivative, strict=True):
        stress[a, b] = stress[b, a] = value
    return stress / graph.volume[0] * EV_PER_A3_TO_GPA


def assert_matches_fd(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    scale = float(reference.abs().max())
    err = float((ours - reference).abs().max())
    assert err <= 1e-6 * scale + 1e-8, f"{what}: max diff {err:.2e} vs scale {scale:.2e}"


@pytest.mark.parametrize("physics", sorted(PHYSICS))
@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_forces_and_stress_are_energy_derivatives(name: str, physics: str) -> None:
    model = make_model(**PHYSICS[physics])
    graph = build(STRUCTURES[name]())
    result = model(graph)
    assert result["grad"].shape == (graph.num_nodes, 3)
    assert result["stresses"].shape == (1, 3, 3)
    forces = fd_forces(model, graph)
    assert forces.abs().max() > 1e-4, "forces should not vanish on this structure"
    assert_matches_fd(result["grad"], forces, f"{name}/{physics} forces")
    assert_matches_fd(result["stresses"][0], fd_stress(model, graph), f"{name}/{physics} stress")
    # Momentum is conserved per graph (sum of pair forces cancels with add_reverse_forces).
    assert float(result["grad"].sum(0).abs().max()) < 1e-10 * max(1.0, float(forces.abs().max()))


def test_penalty_and_zbl_enter_energy_and_forces() -> None:
    graph = build(short_bond())
    with_terms = make_model()
    without = make_model(use_penalty=False, use_zbl=False)
    with torch.no_grad():
        e1, e0 = with_terms(graph)["energy"], without(graph)["energy"]
    distance = graph.r.norm(dim=1)
    penalty = 0.5 * (1.0 - distance[distance < 1.0]).sum()
    assert float(e1 - e0) > float(penalty) > 0  # ZBL adds a positive repulsion on top
    with torch.no_grad():
        out1, out0 = with_terms(graph)["out"], without(graph)["out"]
    # out carries the ZBL share per atom but not the penalty (upstream's definition).
    zbl = (e1 - e0) - penalty
    torch.testing.assert_close(out1 - out0, zbl / graph.num_nodes, rtol=1e-10, atol=1e-12)


def test_short_range_terms_skipped_only_when_zero_and_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without short bonds the penalty and ZBL are skipped on the CPU (``any_shorter``); the
    outputs, forces, stress and training gradients are then the computed terms' bit for bit."""
    from alignn_torch.model import alignn_atomwise_pure, physics

    far, near = build(cubic()), build(short_bond())
    assert not physics.any_shorter(far.r.norm(dim=1), 1.0)
    assert physics.any_shorter(near.r.norm(dim=1), 1.0)
    assert physics.any_shorter(torch.ones(3, device="meta"), 0.5)  # not looked at off the CPU

    model = make_model(use_penalty=True, use_zbl=True)
    batch = collate_graphs([far, build(triclinic())])

    def evaluate() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.train()
        result = model(batch)
        (result["energy"].sum() + result["grad"].pow(2).sum()).backward()
        model.eval()
        values = {k: v.detach() for k, v in model(batch).items()}
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        return values | {name: grad.clone() for name, grad in grads.items()}

    calls: list[int] = []
    zbl_energy = alignn_atomwise_pure.zbl_energy
    monkeypatch.setattr(
        alignn_atomwise_pure, "zbl_energy", lambda *args: calls.append(1) or zbl_energy(*args)
    )
    skipped = evaluate()
    assert not calls
    monkeypatch.setattr(alignn_atomwise_pure, "any_shorter", lambda distance, limit: True)
    computed = evaluate()
    assert len(calls) == 2
    assert skipped.keys() == computed.keys()
    for key, value in computed.items():
        assert torch.equal(skipped[key], value), key


@pytest.mark.parametrize("conv_type", ["alignn", "n_alignn", "t_alignn"])
def test_conv_types_give_exact_forces_and_train(conv_type: str) -> None:
    model = make_model(conv_type=conv_type, num_heads=2, gcn_layers=2)
    graph = build(triclinic())
    assert_matches_fd(model(graph)["grad"], fd_forces(model, graph), f"{conv_type} forces")

    model.train()
    result = model(collate_graphs([graph, build(cubic())]))
    loss = result["out"].sum() + result["grad"].pow(2).sum() + result["stresses"].pow(2).sum()
    loss.backward()
    # Edge outputs of the last GCN conv and triplet outputs of the last ALIGNN block feed
    # nothing, so the layers that only produce them get no gradient (upstream's layout too).
    dead_ends = (
        f"gcn_layers.{len(model.gcn_layers) - 1}.",
        f"alignn_layers.{len(model.alignn_layers) - 1}.edge_update.",
    )
    edge_only = ("bn_edges", "fc_edge")
    for name, param in model.named_parameters():
        if name.startswith(dead_ends) and any(part in name for part in edge_only):
            continue
        assert param.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(param.grad).all(), name
        assert float(param.grad.abs().max()) > 0, f"zero gradient at {name}"


def test_lg_not_on_fly_forces_hold_cosines_fixed() -> None:
    """With ``lg_on_fly`` false the stored cosines carry no gradient: forces are the derivative
    of an energy whose angles are frozen (not the true forces), as upstream documents."""
    model = make_model(lg_on_fly=False)
    graph = build(triclinic())
    # with_positions keeps lg_cos, so the finite differences freeze the angles too.
    assert_matches_fd(model(graph)["grad"], fd_forces(model, graph), "frozen-angle forces")
    on_fly = make_model(lg_on_fly=True)
    assert float((on_fly(graph)["grad"] - model(graph)["grad"]).abs().max()) > 1e-6


def rotation() -> torch.Tensor:
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    return torch.from_numpy(q * np.sign(np.linalg.det(q)))


def transform(
    structure: Structure, positions: np.ndarray, cell: np.ndarray, numbers: np.ndarray | None = None
) -> Structure:
    numbers = structure.numbers if numbers is None else numbers
    return Structure(numbers=numbers, positions=positions, cell=cell)


def test_invariances() -> None:
    model = make_model()
    structure = short_bond()
    ref = model(build(structure))

    offset = np.array([0.7, -1.3, 2.2])
    moved = model(build(transform(structure, structure.positions + offset, structure.cell)))
    for key in ("energy", "grad", "stresses"):
        torch.testing.assert_close(moved[key], ref[key], rtol=1e-9, atol=1e-10)

    rot = rotation().numpy()  # x' = x R^T for row vectors
    turned = model(build(transform(structure, structure.positions @ rot.T, structure.cell @ rot.T)))
    r = torch.from_numpy(rot)
    torch.testing.assert_close(turned["energy"], ref["energy"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(turned["grad"], ref["grad"] @ r.T, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(
        turned["stresses"][0], r @ ref["stresses"][0] @ r.T, rtol=1e-8, atol=1e-9
    )

    perm = np.array([2, 0, 1])
    permuted = model(
        build(
            transform(structure, structure.positions[perm], structure.cell, structure.numbers[perm])
        )
    )
    torch.testing.assert_close(permuted["energy"], ref["energy"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(permuted["grad"], ref["grad"][perm], rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(permuted["stresses"], ref["stresses"], rtol=1e-8, atol=1e-9)


def test_supercell_is_extensive() -> None:
    model = make_model()
    structure = short_bond()
    ref = model(build(structure))
    cell = structure.cell
    doubled = transform(
        structure,
        np.concatenate([structure.positions, structure.positions + cell[0]]),
        np.stack([2 * cell[0], cell[1], cell[2]]),
        np.concatenate([structure.numbers, structure.numbers]),
    )
    big = model(build(doubled))
    torch.testing.assert_close(big["energy"], 2 * ref["energy"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(big["out"], ref["out"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(big["grad"], ref["grad"].repeat(2, 1), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(big["stresses"], ref["stresses"], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("energy_mult_natoms", [True, False])
def test_batch_equals_singles(energy_mult_natoms: bool) -> None:
    """Upstream couples a batch through penalty/ZBL sums and force_mult_natoms; we must not."""
    model = make_model(
        force_mult_natoms=True,
        energy_mult_natoms=energy_mult_natoms,
        atomwise_output_features=2,
        additional_output_features=3,
        output_features=1,
    )
    graphs = [build(short_bond()), build(cubic()), build(triclinic())]
    batch = model(collate_graphs(graphs))
    singles = [model(g) for g in graphs]
    assert set(batch) == {"out", "energy", "grad", "stresses", "atomwise_pred", "additional"}
    for key, value in batch.items():
        joined = torch.cat([s[key] for s in singles])
        torch.testing.assert_close(value, joined, rtol=1e-11, atol=1e-11, msg=key)
    assert batch["out"].shape == (3,) and batch["energy"].shape == (3,)
    assert batch["additional"].shape == (3, 3)
    assert batch["atomwise_pred"].shape == (sum(g.num_nodes for g in graphs), 2)


def test_force_mult_natoms_scales_by_own_atom_count() -> None:
    graph = build(cubic())
    plain = make_model()(graph)["grad"]
    scaled = make_model(force_mult_natoms=True)(graph)["grad"]
    torch.testing.assert_close(scaled, plain * graph.num_nodes, rtol=1e-12, atol=1e-12)


def test_output_keys_follow_the_config() -> None:
    graph = build(triclinic())
    assert set(make_model(stresswise_weight=0.0)(graph)) == {"out", "energy", "grad"}
    assert "stresses" in make_model(stresswise_weight=0.0)(graph, compute_stress=True)
    assert "stresses" not in make_model()(graph, compute_stress=False)
    no_forces = make_model(gradwise_weight=0.0)
    assert set(no_forces(graph)) == {"out", "energy"}
    with_stress = no_forces(graph, compute_stress=True)  # an ASE calculator may ask anyway
    assert with_stress["stresses"].shape == (1, 3, 3)

    logits = make_model(classification=True, calculate_gradient=False)(graph)["out"]
    assert logits.shape == (1, 2)
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(1, dtype=torch.float64))
    vector = make_model(output_features=4, calculate_gradient=False)(graph)["out"]
    assert vector.shape == (1, 4)
    assert float(make_model(link="log", calculate_gradient=False)(graph)["out"].detach().min()) > 0
    probability = make_model(link="logit", calculate_gradient=False)(graph)["out"]
    assert 0 < float(probability.detach()) < 1


def test_eval_builds_no_double_backward_graph() -> None:
    model = make_model()
    graph = build(triclinic())
    result = model(graph)
    assert not result["grad"].requires_grad  # create_graph=False in eval mode
    with torch.no_grad():
        quiet = model(graph)  # forces still computed under no_grad, values identical
    assert all(not value.requires_grad for value in quiet.values())
    torch.testing.assert_close(quiet["grad"], result["grad"])
    model.train()
    assert model(graph)["grad"].requires_grad  # training: forces are differentiable


def test_float32_model_accepts_float64_graph() -> None:
    model = make_model().float()
    result = model(build(triclinic()))
    assert result["grad"].dtype == torch.float32 and result["out"].dtype == torch.float32


def test_graphs_without_edges_or_triplets() -> None:
    """A lone atom (no bond within the cutoff) and a cell without triplets are valid inputs:
    finite outputs, zero forces/stress without bonds, and the same numbers inside a batch."""
    model = make_model()
    lone = build(Structure(numbers=[54], positions=np.zeros((1, 3)), cell=np.eye(3) * 5.0))
    assert lone.num_edges == 0
    pair_only = build(Structure(numbers=[54], positions=np.zeros((1, 3)), cell=np.eye(3) * 3.5))
    assert pair_only.num_edges > 0 and pair_only.lg_src.numel() == 0
    batch = model(collate_graphs([lone, pair_only, build(triclinic())]))
    for graph, index in ((lone, 0), (pair_only, 1)):
        single = model(graph)
        assert all(torch.isfinite(value).all() for value in single.values())
        torch.testing.assert_close(batch["out"][index], single["out"][0])
        torch.testing.assert_close(batch["stresses"][index], single["stresses"][0])
    alone = model(lone)
    assert float(alone["grad"].abs().max()) == 0.0
    assert float(alone["stresses"].abs().max()) == 0.0


def test_rbf_floor_changes_no_number_downstream() -> None:
    """The exponent floor (off torch.exp's slow underflow path) moves only the bins at or
    near underflow, by < 2e-38, and leaves what a layer computes from the expansion, and its
    derivative, bit-identical."""
    from alignn_torch.model.layers import RBFExpansion

    torch.manual_seed(0)
    rbf = RBFExpansion(vmin=0.0, vmax=8.0, bins=80)
    distance = (torch.rand(500) * 8.0).requires_grad_()
    floored = rbf(distance)
    exponent = -rbf.gamma * (distance.unsqueeze(-1) - rbf.centers) ** 2
    plain = torch.exp(exponent)
    far = exponent < -87.0
    assert (plain < torch.finfo(torch.float32).tiny).float().mean() > 0.3  # what it is for
    assert torch.equal(floored[~far], plain[~far])
    assert (floored[far] - plain[far]).abs().max() < 2e-38
    layer = torch.nn.Linear(80, 64)
    out_floored, out_plain = layer(floored), layer(plain)
    assert torch.equal(out_floored, out_plain)
    (grad_floored,) = torch.autograd.grad(out_floored.square().sum(), distance)
    (grad_plain,) = torch.autograd.grad(out_plain.square().sum(), distance)
    assert torch.equal(grad_floored, grad_plain)
