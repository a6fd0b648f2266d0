"""Padding and CUDA-graph replay (``graphs/padding.py``, ``model/cuda_graphs.py``) on the CPU.

A captured CUDA graph reads fixed input tensors and overwrites fixed output tensors. These tests
run :class:`CapturedForward` with :func:`rerun_capture`, which keeps exactly that contract on any
device, so everything except the capture itself is checked here: padded graphs give each real
structure its unpadded results, buffers are refilled per call, buckets and eviction work, and a
failed capture falls back to eager calls. ``tests/test_cuda.py`` replays real CUDA graphs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from alignn_torch.config import ALIGNNAtomWisePureConfig, ALIGNNAtomWisePureSmoothConfig
from alignn_torch.graphs.backend import build_graph
from alignn_torch.graphs.graph import collate_graphs
from alignn_torch.graphs.padding import Capacity, capacity_for, pad_graph, round_up
from alignn_torch.model.alignn_atomwise_pure import ALIGNNAtomWisePure
from alignn_torch.model.alignn_atomwise_pure_smooth import ALIGNNAtomWisePureSmooth
from alignn_torch.model.cuda_graphs import CapturedForward

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.cuda_graphs import rerun_capture
from alignn_core.structures import Structure

SETTINGS = GraphSettings(
    neighbor_strategy="pure_torch", cutoff=5.0, max_neighbors=12, dtype="float64"
)
SMALL = {"alignn_layers": 2, "gcn_layers": 1, "hidden_features": 16, "embedding_features": 16,
         "atom_input_features": 92}  # fmt: skip


def cell(seed: int, n_atoms: int, scale: float = 1.0) -> Structure:
    """A rattled binary fcc-like cell (two elements, so forces depend on geometry)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n_atoms ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    lattice = np.eye(3) * 2.6 * side * scale
    positions = grid[:n_atoms] * 2.6 * scale + rng.normal(scale=0.15, size=(n_atoms, 3))
    numbers = np.where(np.arange(n_atoms) % 3 == 0, 79, 29)
    return Structure(numbers=numbers, positions=positions, cell=lattice)


def graph(*structures: Structure):
    return collate_graphs([build_graph(s, SETTINGS) for s in structures])


def pure_model(**changes) -> ALIGNNAtomWisePure:
    torch.manual_seed(0)
    config = ALIGNNAtomWisePureConfig(
        name="alignn_atomwise_pure", **SMALL, use_penalty=True, use_zbl=True, **changes
    )
    return ALIGNNAtomWisePure(config).double().eval()


def smooth_model() -> ALIGNNAtomWisePureSmooth:
    torch.manual_seed(1)
    return (
        ALIGNNAtomWisePureSmooth(
            ALIGNNAtomWisePureSmoothConfig(name="alignn_atomwise_pure_smooth", **SMALL)
        )
        .double()
        .eval()
    )


def eager(model, g) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(g, compute_stress=True)


def assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].shape == value.shape, key
        np.testing.assert_allclose(got[key].numpy(), value.numpy(), rtol=1e-12, atol=1e-12)


def test_round_up_buckets_waste_under_a_sixteenth():
    assert [round_up(n) for n in (0, 1, 16, 17, 511, 512, 513, 1024, 1025)] == [
        0, 16, 16, 32, 512, 512, 544, 1024, 1088,
    ]  # fmt: skip
    previous = 0
    for count in range(1, 20_000):
        bucket = round_up(count)
        assert count <= bucket >= previous
        assert bucket - count < max(16, bucket / 16)
        previous = bucket


@pytest.mark.parametrize("make_model", [pure_model, smooth_model], ids=["pure", "smooth"])
def test_padding_leaves_every_real_structure_unchanged(make_model):
    model = make_model()
    batch = graph(cell(0, 8), cell(1, 4, scale=0.97), cell(2, 27))
    expected = eager(model, batch)
    capacity = capacity_for(batch)
    padded = pad_graph(
        batch, Capacity(capacity.atoms + 5, capacity.edges + 40, capacity.triplets + 64)
    )
    assert padded.num_graphs == 4 and padded.num_nodes == capacity.atoms + 5
    got = eager(model, padded)
    for key, value in got.items():
        assert torch.isfinite(value).all(), key  # the padding's own outputs too
    rows = {"grad": batch.num_nodes}
    assert_same({k: v[: rows.get(k, 3)] for k, v in got.items()}, expected)
    assert np.abs(expected["grad"].numpy()).max() > 1e-3  # forces that say something


def test_pad_graph_needs_room_for_a_padding_atom_and_edge():
    g = graph(cell(0, 8))
    with pytest.raises(ValueError, match="does not fit Capacity") as caught:
        pad_graph(g, Capacity(g.num_nodes, g.num_edges + 1, g.lg_src.shape[0]))
    assert str(caught.value) == (
        f"a graph of 8 atoms, {g.num_edges} edges and {g.lg_src.shape[0]} triplets does not fit "
        f"Capacity(atoms=8, edges={g.num_edges + 1}, triplets={g.lg_src.shape[0]}) with one "
        "padding atom and edge"
    )


def test_replay_refills_inputs_and_keeps_earlier_results():
    model = pure_model(force_mult_natoms=True)
    runner = CapturedForward(model, capture=rerun_capture)
    g1 = graph(cell(3, 8))
    positions = g1.positions.clone()
    positions[0] += 0.05
    g2 = g1.with_positions(positions)  # an MD step: same topology, new geometry
    assert capacity_for(g1) == capacity_for(g2)  # same bucket: one capture serves both
    out1 = runner(g1)
    kept = {key: value.clone() for key, value in out1.items()}
    out2 = runner(g2)
    assert runner.captures_made == 1 and runner.replays == 2
    assert_same(out1, kept)  # not overwritten by the second replay
    assert_same(out1, eager(model, g1))
    assert_same(out2, eager(model, g2))
    assert not torch.equal(out1["grad"], out2["grad"])


def test_buckets_are_kept_least_recently_used():
    model = pure_model()
    runner = CapturedForward(model, max_captures=2, capture=rerun_capture)
    small, medium, large = graph(cell(4, 4)), graph(cell(5, 27)), graph(cell(6, 4), cell(7, 8))
    for g in (small, medium, small, large, small, medium):
        assert_same(runner(g), eager(model, g))
    # captured: small, medium, large (medium, the least recently used, goes), medium (large goes)
    assert runner.captures_made == 4 and runner.replays == 6


def test_captures_on_most_calls_warn_once():
    model = pure_model()
    runner = CapturedForward(model, max_captures=1, capture=rerun_capture)
    graphs = [graph(cell(9, 4)), graph(cell(10, 27))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(40):  # alternating buckets with room for one: every call captures
            runner(graphs[i % 2])
    messages = [str(w.message) for w in caught]
    assert messages == [
        "CUDA graphs: 16 captures in 16 calls; the graph sizes change too often for replay to "
        "pay (each capture costs about three eager calls), turn cuda_graphs off for this work "
        "or raise max_captures"
    ]
    steady = CapturedForward(model, max_captures=2, capture=rerun_capture)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(40):
            steady(graphs[i % 2])
    assert steady.captures_made == 2


def test_a_failed_capture_warns_and_runs_eagerly():
    model = pure_model()

    def broken(run, device):
        raise RuntimeError("operation not permitted when stream is capturing")

    runner = CapturedForward(model, capture=broken)
    g = graph(cell(8, 8))
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed, running the model eagerly"):
        out = runner(g)
    assert_same(out, eager(model, g))
    assert_same(runner(g), eager(model, g))  # no second attempt, no second warning
    assert runner.captures_made == 0 and runner.replays == 0


def test_max_captures_must_be_positive():
    with pytest.raises(ValueError, match="max_captures must be >= 1, got 0"):
        CapturedForward(pure_model(), max_captures=0)
