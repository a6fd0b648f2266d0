"""The ``dgl`` graph backend: the torch backend's graphs, edge for edge, as DGL graphs.

Needs DGL (``nox -s dgl``); skipped in the default suite.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("dgl")

from alignn_dgl.graphs import (
    DGLGraphBackend,
    DGLGraphPair,
    collate_pairs,
    from_atom_graph,
    to_atom_graph,
)
from alignn_torch.graphs.backend import TorchGraphBackend
from alignn_torch.graphs.graph import AtomGraph, collate_graphs

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.plugins import get_registry
from alignn_core.structures import Structure

SETTINGS = {
    "pure_torch": GraphSettings(neighbor_strategy="pure_torch", cutoff=5.0, max_neighbors=12,
                                three_body_cutoff=3.0),
    "k-nearest": GraphSettings(neighbor_strategy="k-nearest", cutoff=8.0, max_neighbors=12),
    "radius_graph": GraphSettings(neighbor_strategy="radius_graph", cutoff=4.0),
}  # fmt: skip


def structures() -> list[Structure]:
    """A triclinic 3-atom cell, a rattled cubic 4-atom cell and a 1-atom cell (self-images)."""
    rng = np.random.default_rng(3)
    tri_cell = np.array([[3.3, 0.2, 0.1], [0.7, 3.1, -0.3], [0.4, 0.6, 3.4]])
    tri = Structure([11, 8, 29], np.array([[0.05, 0.1, 0], [0.5, 0.45, 0.4], [0.3, 0.8, 0.7]])
                    @ tri_cell, tri_cell)  # fmt: skip
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cubic = Structure([11, 17, 17, 11], frac * 4.1 + rng.normal(0, 0.08, (4, 3)), np.eye(3) * 4.1)
    single = Structure([29], np.zeros((1, 3)), np.eye(3) * 2.6)
    return [tri, cubic, single]


def assert_same_graph(a: AtomGraph, b: AtomGraph) -> None:
    for name in AtomGraph.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


def test_backend_is_registered():
    assert isinstance(get_registry().graph_backends["dgl"], DGLGraphBackend)


@pytest.mark.parametrize("strategy", sorted(SETTINGS))
def test_same_graph_as_the_torch_backend(strategy):
    settings = SETTINGS[strategy]
    for structure in structures():
        pair = DGLGraphBackend().build(structure, settings)
        expected = TorchGraphBackend().build(structure, settings)
        assert pair.g.num_edges() == expected.num_edges > 0
        assert pair.lg.num_nodes() == expected.num_edges
        assert_same_graph(to_atom_graph(pair), expected)


def test_knearest_line_graph_is_dgls_own_line_graph():
    """For k-nearest (and radius_graph) our triplets are exactly DGL's
    ``line_graph(backtracking=True)`` (as sets: DGL orders them differently), as in upstream's
    DGL-built graphs: no ``(e, e)`` pair even for a self-image edge ``e = (i -> i)``."""
    self_images_seen = 0
    for structure in structures():
        pair = DGLGraphBackend().build(structure, SETTINGS["k-nearest"])
        ours = set(zip(*(t.tolist() for t in pair.lg.edges()), strict=True))
        theirs = set(zip(*(t.tolist() for t in pair.g.line_graph(backtracking=True).edges()),
                         strict=True))  # fmt: skip
        assert ours == theirs
        src, dst = pair.g.edges()
        self_images_seen += int((src == dst).sum())
    assert self_images_seen > 0  # the small cells here do see their own images


def test_pure_torch_line_graph_keeps_self_image_pairs():
    """Upstream's torch builder (pure_torch) pairs a self-image edge with itself; so do we."""
    structure = structures()[2]  # the 1-atom cell
    pair = DGLGraphBackend().build(structure, SETTINGS["pure_torch"])
    src, dst = pair.lg.edges()
    assert bool((src == dst).any())


def test_triplet_cutoff_drops_long_bonds():
    structure = structures()[1]
    pair = DGLGraphBackend().build(structure, SETTINGS["pure_torch"])
    length = pair.g.edata["r"].norm(dim=1)
    src, dst = pair.lg.edges()
    assert bool((length[src] <= 3.0).all() and (length[dst] <= 3.0).all())
    assert bool((length > 3.0).any())


def test_batch_is_dgl_batch_of_the_torch_batch():
    backend = DGLGraphBackend()
    settings = SETTINGS["pure_torch"]
    pairs = [backend.build(s, settings) for s in structures()]
    batch = backend.collate(pairs)
    assert batch.num_graphs == 3 and batch.atoms_per_graph().tolist() == [3, 4, 1]
    expected = collate_graphs([TorchGraphBackend().build(s, settings) for s in structures()])
    assert_same_graph(to_atom_graph(batch), expected)
    # converting the torch batch directly gives the same batched DGL graphs
    direct = from_atom_graph(expected)
    assert direct.g.batch_num_nodes().tolist() == batch.g.batch_num_nodes().tolist()
    assert direct.lg.batch_num_edges().tolist() == batch.lg.batch_num_edges().tolist()
    assert collate_pairs(pairs[:1]) is pairs[0]


def test_arrays_round_trip():
    backend = DGLGraphBackend()
    pair = backend.build(structures()[0], SETTINGS["k-nearest"])
    arrays = backend.to_arrays(pair)
    assert all(isinstance(value, np.ndarray) for value in arrays.values())
    for value in arrays.values():
        value.setflags(write=False)  # caches hand out read-only (memory-mapped) arrays
    again = backend.from_arrays(arrays)
    assert isinstance(again, DGLGraphPair)
    assert_same_graph(to_atom_graph(again), to_atom_graph(pair))
    # the torch backend's format: either backend reads the other's arrays
    assert_same_graph(TorchGraphBackend().from_arrays(arrays), to_atom_graph(pair))


def test_to_casts_float_data():
    pair = DGLGraphBackend().build(structures()[0], SETTINGS["radius_graph"])
    moved = pair.to("cpu", torch.float64)
    assert moved.g.edata["r"].dtype == torch.float64 and moved.lg.edata["h"].dtype == torch.float64
    assert moved.g.ndata["numbers"].dtype == torch.int64 and moved.volume.dtype == torch.float64
    assert pair.g.edata["r"].dtype == torch.float32  # the original is untouched
