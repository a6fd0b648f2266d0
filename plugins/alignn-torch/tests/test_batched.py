"""``build_graphs`` (many structures in one set of array operations) against ``build_graph``.

The batched builder must return, for every structure, exactly the graph ``build_graph`` returns:
every field's shape, dtype and bytes. Batches mix structures it builds together with those it
hands to ``build_graph`` (molecules, large cells, other strategies), in shuffled order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from alignn_torch.graphs import TorchGraphBackend, batched
from alignn_torch.graphs.backend import ALL_FIELDS, build_graph
from alignn_torch.graphs.batched import build_graphs

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.data.samples import built_graphs
from alignn_core.errors import DataError
from alignn_core.io.structures import read_structure, structure_from_jarvis
from alignn_core.structures import Structure

REPO = Path(__file__).resolve().parents[3]
MLEARN = GraphSettings(neighbor_strategy="pure_torch", cutoff=8.0, max_neighbors=13)


def assert_identical(mine, reference) -> None:
    """Every field of two graphs: same shape, dtype and bytes (signed zeros included)."""
    for name in ALL_FIELDS:
        a, b = getattr(mine, name), getattr(reference, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.is_contiguous(), name
        assert a.numpy().tobytes() == b.numpy().tobytes(), name


def assert_batch_identical(structures: list[Structure], settings: GraphSettings) -> None:
    graphs = build_graphs(structures, settings)
    assert len(graphs) == len(structures)
    for structure, graph in zip(structures, graphs, strict=True):
        assert_identical(graph, build_graph(structure, settings))


def props() -> list[Structure]:
    return [read_structure(p) for p in sorted((REPO / "examples" / "props").glob("POSCAR*"))]


def mlearn_cells(count: int) -> list[Structure]:
    records = json.loads((REPO / "examples" / "mlearn-cu" / "id_prop.json").read_text())
    return [structure_from_jarvis(r["atoms"], r["jid"]) for r in records[:count]]


def oblique(seed: int, n_atoms: int) -> Structure:
    """A triclinic cell with angles far from 90°, atoms partly outside it (unwrapped)."""
    rng = np.random.default_rng(seed)
    cell = np.array([[4.1, 0.0, 0.0], [2.3, 3.7, 0.0], [1.9, -1.4, 3.3]])
    cell += rng.normal(scale=0.2, size=(3, 3))
    positions = rng.uniform(-0.3, 1.3, size=(n_atoms, 3)) @ cell
    return Structure(numbers=rng.integers(1, 30, n_atoms), positions=positions, cell=cell)


def odd_ones() -> list[Structure]:
    """A one-atom cell, a molecule, a slab, a lone atom beside a cluster, exact Si sites."""
    rng = np.random.default_rng(7)
    cluster = np.vstack([rng.uniform(4.0, 7.0, size=(12, 3)), [[0.5, 0.5, 11.0]]])
    si = np.array([[0, 0, 0], [0.25, 0.25, 0.25]]) @ (np.ones((3, 3)) - np.eye(3)) * 2.715
    return [
        Structure(numbers=[29], positions=[[0.3, 0.1, 0.2]], cell=np.eye(3) * 2.55),
        Structure(
            numbers=[8, 1, 1],
            positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]],
            cell=np.zeros((3, 3)),
            pbc=(False, False, False),
        ),
        Structure(
            numbers=[6, 6],
            positions=[[0, 0, 0], [1.42, 0, 0]],
            cell=[[2.46, 0, 0], [-1.23, 2.13, 0], [0, 0, 0]],
            pbc=(True, True, False),
        ),
        Structure(numbers=[6] * 13, positions=cluster, cell=np.eye(3) * 12.0),
        Structure(numbers=[14, 14], positions=si, cell=(np.ones((3, 3)) - np.eye(3)) * 2.715),
    ]


def test_example_poscars_bit_identical() -> None:
    assert_batch_identical(props(), MLEARN)


def test_reverse_edges_keep_signed_zeros() -> None:
    """Each pair is searched in one direction and its reverse edge is ``-r``: where a component
    of ``r`` is zero (atoms on a line along an axis, ``-0.0`` in the input) the reverse must hold
    the ``+0.0`` that ``build_graph`` computes, not ``-0.0``."""
    sites = [[0.0, 0.0, 0.0], [-0.0, 1.7, -0.0], [1.7, -0.0, 0.0], [0.0, -0.0, 1.7]]
    cubic = [Structure(numbers=[29] * 4, positions=sites, cell=np.eye(3) * a) for a in (3.4, 3.6)]
    graphs = build_graphs(cubic, MLEARN)
    reverse_zeros = [(g.r == 0) & torch.signbit(g.r) for g in graphs]
    assert not any(bool(zeros.any()) for zeros in reverse_zeros)
    assert_batch_identical(cubic, MLEARN)


def test_which_cells_are_batched() -> None:
    """All 50 example POSCARs go through the batched path (the 35-64-atom ones by the few-atoms
    rule, measured faster), the 107-atom mlearn Cu cells one by one (measured 0.52x batched)."""
    covered = {int(i) for group in batched._covered(props(), MLEARN) for i in group}
    assert covered == set(range(50))
    assert [s.n_atoms for s in mlearn_cells(3)] == [107, 107, 107]
    assert batched._covered(mlearn_cells(3), MLEARN) == []


def test_mlearn_cells_and_mixed_batches_bit_identical() -> None:
    """Large cells (built one by one) interleaved with small ones, in shuffled order."""
    structures = mlearn_cells(6) + props()[:20] + odd_ones() + [oblique(s, 3 + s) for s in range(8)]
    order = np.random.default_rng(0).permutation(len(structures))
    assert_batch_identical([structures[i] for i in order], MLEARN)


@pytest.mark.parametrize(
    "settings",
    [
        GraphSettings(neighbor_strategy="pure_torch", cutoff=5.0, max_neighbors=12),
        GraphSettings(neighbor_strategy="pure_torch", cutoff=5.0, max_neighbors=None),
        GraphSettings(
            neighbor_strategy="pure_torch",
            cutoff=4.0,
            max_neighbors=4,
            three_body_cutoff=None,
            dtype="float64",
        ),
        GraphSettings(neighbor_strategy="pure_torch", cutoff=6.0, compute_line_graph=False),
        GraphSettings(neighbor_strategy="pure_torch", cutoff=4.0, dtype="float16"),
        GraphSettings(neighbor_strategy="k-nearest", cutoff=8.0, max_neighbors=12),
        GraphSettings(neighbor_strategy="radius_graph", cutoff=4.0),
    ],
)
def test_other_settings_bit_identical(settings: GraphSettings) -> None:
    structures = props()[::3] + odd_ones() + [oblique(s, 2 + s) for s in range(6)]
    assert_batch_identical(structures, settings)


def test_second_stage_runs_for_an_incomplete_first_radius(monkeypatch) -> None:
    """A lone atom far from a cluster has too few neighbours inside the first radius: that
    structure is searched again at the cutoff, the others are not."""
    calls = []
    original = batched._pairs_within

    def counting(stack, which, radius, min_d2):
        calls.append(len(which))
        return original(stack, which, radius, min_d2)

    monkeypatch.setattr(batched, "_pairs_within", counting)
    settings = GraphSettings(neighbor_strategy="pure_torch", cutoff=8.0, max_neighbors=4)
    assert_batch_identical([oblique(1, 6), odd_ones()[3], oblique(2, 5)], settings)
    assert calls == [3, 1]


def test_bad_element_raises_as_build_graph() -> None:
    bad = Structure(numbers=[150], positions=[[0, 0, 0]], cell=np.eye(3) * 3)
    structures = [*props()[:3], bad]
    with pytest.raises(DataError) as expected:
        build_graph(structures[-1], MLEARN)
    with pytest.raises(DataError) as got:
        build_graphs(structures, MLEARN)
    assert str(got.value) == str(expected.value)


def test_built_graphs_uses_build_many_in_chunks_and_falls_back_per_structure() -> None:
    """The dataset helper: chunks through build_many; a chunk that raises is rebuilt one by one,
    so the error is build's for the first bad structure."""

    class Counting(TorchGraphBackend):
        def __init__(self) -> None:
            self.chunks: list[int] = []

        def build_many(self, structures, settings):
            self.chunks.append(len(structures))
            return super().build_many(structures, settings)

    backend = Counting()
    structures = props()[:7]
    graphs = list(built_graphs(backend, structures, MLEARN, chunk=3))
    assert backend.chunks == [3, 3, 1]
    for structure, graph in zip(structures, graphs, strict=True):
        assert_identical(graph, build_graph(structure, MLEARN))

    bad = Structure(numbers=[150], positions=[[0, 0, 0]], cell=np.eye(3) * 3)
    with pytest.raises(DataError) as expected:
        build_graph(bad, MLEARN)
    with pytest.raises(DataError) as got:
        list(built_graphs(backend, [*structures[:2], bad], MLEARN, chunk=3))
    assert str(got.value) == str(expected.value)
    # with record ids, the error names the entry (the backend only sees a structure)
    with pytest.raises(DataError) as labelled:
        list(built_graphs(backend, [*structures[:4], bad], MLEARN, chunk=3,
                          labels=["a", "b", "c", "d", "JVASP-bad"]))  # fmt: skip
    assert str(labelled.value) == f"structure 'JVASP-bad': {expected.value}"


def test_graphs_of_one_call_do_not_share_rows() -> None:
    """Graphs are views of shared buffers; writing one must not change another."""
    first, second = build_graphs(props()[:2], MLEARN)
    before = second.r.clone()
    first.r.zero_()
    assert torch.equal(second.r, before)
