"""Neighbour-list reuse (``TorchGraphBackend.incremental_builder``) is bit-identical to a fresh
build for every strategy, including the capped and growing ones where a plain Verlet list is not.

Trajectories are random walks with steps from tiny (reuse) to large (rebuild), so both paths are
exercised and compared field by field with ``torch.equal`` (not a tolerance: exactness is the
contract an MD integrator relies on for energy conservation and reproducibility).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from alignn_torch.graphs import TorchGraphBackend
from alignn_torch.graphs.backend import build_graph
from alignn_torch.graphs.reuse import NeighborCache

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.structures import Structure

CU_A = 3.615


def fcc_cu(repeat: int) -> Structure:
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * CU_A
    grid = np.array([[i, j, k] for i in range(repeat) for j in range(repeat)
                     for k in range(repeat)]) * CU_A  # fmt: skip
    positions = (grid[:, None, :] + basis[None]).reshape(-1, 3)
    return Structure(numbers=np.full(len(positions), 29), positions=positions,
                     cell=np.eye(3) * CU_A * repeat)  # fmt: skip


def molecule() -> Structure:
    rng = np.random.default_rng(3)
    positions = rng.uniform(0, 6, size=(14, 3))
    return Structure(numbers=np.full(14, 6), positions=positions, cell=np.zeros((3, 3)),
                     pbc=(False, False, False))  # fmt: skip


def assert_same_graph(a, b, step: int) -> None:
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype and torch.equal(x, y), f"step {step}: field {f.name} differs"


SETTINGS = {
    "pure_capped": GraphSettings(neighbor_strategy="pure_torch", cutoff=5.0, max_neighbors=12,
                                 three_body_cutoff=3.5, dtype="float64"),
    "pure_uncapped": GraphSettings(neighbor_strategy="pure_torch", cutoff=4.0,
                                   max_neighbors=None, three_body_cutoff=3.0),
    "k_nearest": GraphSettings(neighbor_strategy="k-nearest", cutoff=3.0, max_neighbors=12),
    "k_nearest_nocanon": GraphSettings(neighbor_strategy="k-nearest", cutoff=8.0,
                                       max_neighbors=12, use_canonize=False),
    "radius_graph": GraphSettings(neighbor_strategy="radius_graph", cutoff=2.0, cutoff_extra=0.7),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("system", ["cu32", "molecule"])
def test_reuse_equals_fresh_build_along_a_trajectory(name: str, system: str) -> None:
    settings = SETTINGS[name]
    structure = fcc_cu(2) if system == "cu32" else molecule()
    builder = TorchGraphBackend().incremental_builder(settings, skin=0.4)
    rng = np.random.default_rng(7)
    positions = structure.positions.copy()
    for step in range(12):
        # mostly thermal-sized steps (reuse), now and then a jump (rebuild)
        size = 0.3 if step % 5 == 4 else 0.02
        positions = positions + rng.normal(scale=size, size=positions.shape)
        moved = Structure(structure.numbers, positions, structure.cell, structure.pbc)
        assert_same_graph(builder.build(moved), build_graph(moved, settings), step)
    assert builder.reuses > 0 and builder.rebuilds > 1


def test_k_nearest_cutoff_growth_is_served_from_the_cache() -> None:
    """With a 2.0 Å cutoff fcc Cu (neighbours at 2.56 Å) has no neighbour, so k-nearest grows
    the cutoff to the longest lattice vector; later steps answer both queries from the cache."""
    settings = GraphSettings(neighbor_strategy="k-nearest", cutoff=2.0, max_neighbors=12)
    structure = fcc_cu(2)
    cache = NeighborCache(skin=0.5)
    rng = np.random.default_rng(1)
    for step in range(4):
        positions = structure.positions + rng.normal(scale=0.01, size=structure.positions.shape)
        moved = Structure(structure.numbers, positions, structure.cell)
        fresh = build_graph(moved, settings)
        assert_same_graph(build_graph(moved, settings, search=cache), fresh, step)
    assert cache.rebuilds == 2 and cache.reuses == 6  # step 0: 2.0 Å, then grown; 2 per step


def test_cell_change_forces_a_rebuild() -> None:
    settings = SETTINGS["pure_capped"]
    structure = fcc_cu(2)
    builder = TorchGraphBackend().incremental_builder(settings, skin=1.0)
    builder.build(structure)
    strained = Structure(structure.numbers, structure.positions * 1.001, structure.cell * 1.001)
    assert_same_graph(builder.build(strained), build_graph(strained, settings), 1)
    assert builder.rebuilds == 2 and builder.reuses == 0


def test_skin_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="skin must be >= 0"):
        NeighborCache(skin=-0.1)
