"""Training by CUDA graph replay (``cuda_graphs``), everything but the capture, on the CPU.

:func:`alignn_core.cuda_graphs.rerun_capture` keeps a CUDA graph's contract (static inputs,
overwritten outputs) on any device, so these tests check what the GPU run relies on: masked
losses equal the unpadded ones, a replayed step gives the eager step's loss and gradients
through buckets of different sizes and optimiser steps, buckets are kept least recently used
first, and a failed capture falls back to eager steps. ``tests/test_cuda.py`` trains with real
CUDA graphs on a GPU.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from alignn_core.config.loader import load_config
from alignn_core.config.model import LossWeights
from alignn_core.cuda_graphs import rerun_capture
from alignn_core.data.samples import Sample, make_collate
from alignn_core.plugins import get_registry
from alignn_core.structures import Structure
from alignn_core.training.captured_step import CapturedTrainingStep
from alignn_core.training.losses import RowMasks, compute_losses
from tests.conftest import EXAMPLES
from tests.inference_models import cu_atoms, run_config
from tests.test_reliability import _error_line
from tests.test_training import _config

CPU = torch.device("cpu")


def _padded(tensor: torch.Tensor, rows: int, garbage: float = 7.5) -> torch.Tensor:
    extra = torch.full((rows, *tensor.shape[1:]), garbage, dtype=tensor.dtype)
    return torch.cat([tensor, extra])


@pytest.mark.parametrize("criterion", ["l1", "mse"])
@pytest.mark.parametrize("normalize", [False, True])
def test_masked_losses_equal_the_unpadded_ones(criterion, normalize):
    rng = torch.Generator().manual_seed(0)
    b, n = 3, 11
    output = {"out": torch.randn(b, generator=rng), "grad": torch.randn(n, 3, generator=rng),
              "stresses": torch.randn(b, 3, 3, generator=rng),
              "atomwise_pred": torch.randn(n, 2, generator=rng)}  # fmt: skip
    targets = {"target": torch.randn(b, 1, generator=rng),
               "forces": torch.randn(n, 3, generator=rng),
               "stress": torch.randn(b, 3, 3, generator=rng),
               "atomwise": torch.randn(n, 2, generator=rng)}  # fmt: skip
    weights = LossWeights(graph=1.0, forces=10.0, stress=0.5, atomwise=2.0, additional=0.0)
    atoms = torch.tensor([3, 4, 4])
    expected = compute_losses(output, targets, weights, criterion, False, atoms, normalize)
    per_atom = ("grad", "forces", "atomwise_pred", "atomwise")
    padded_output = {k: _padded(v, 5 if k in per_atom else 2) for k, v in output.items()}
    padded_targets = {k: _padded(v, 5 if k in per_atom else 2, -3.0) for k, v in targets.items()}
    masks = RowMasks(
        graphs=torch.tensor([1.0, 1, 1, 0, 0]), atoms=torch.tensor([1.0] * 11 + [0] * 5)
    )
    got = compute_losses(padded_output, padded_targets, weights, criterion, False,
                         torch.tensor([3, 4, 4, 1, 1]), normalize, masks)  # fmt: skip
    torch.testing.assert_close(got.total, expected.total)
    assert got.terms.keys() == expected.terms.keys() == {"graph", "forces", "stress", "atomwise"}
    for name in expected.terms:
        torch.testing.assert_close(got.terms[name], expected.terms[name])
        torch.testing.assert_close(got.maes[name], expected.maes[name])


def test_masked_classification_loss_and_error_rate():
    log_probabilities = torch.log_softmax(
        torch.randn(4, 2, generator=torch.Generator().manual_seed(1)), -1
    )
    labels = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    weights = LossWeights(graph=1.0, forces=0.0, stress=0.0, atomwise=0.0, additional=0.0)
    expected = compute_losses({"out": log_probabilities[:3]}, {"target": labels[:3]}, weights,
                              "l1", True)  # fmt: skip
    masks = RowMasks(graphs=torch.tensor([1.0, 1, 1, 0]), atoms=torch.zeros(0))
    got = compute_losses({"out": log_probabilities}, {"target": labels}, weights, "l1", True,
                         masks=masks)  # fmt: skip
    torch.testing.assert_close(got.total, expected.total)
    torch.testing.assert_close(got.maes["graph"], expected.maes["graph"])


# ------------------------------------------------------------------ replayed training steps
def _setup():
    raw = run_config({"gradwise_weight": 10.0, "stresswise_weight": 0.1})
    config = load_config({**raw, "model": {**raw["model"], "name": "alignn_atomwise_pure"}}).config
    registry = get_registry()
    backend = registry.graph_backends["torch"]
    torch.manual_seed(0)
    model = registry.models["alignn_atomwise_pure"].build(config.model).train()
    rng = np.random.default_rng(3)
    samples = []
    for i, (repeat, seed) in enumerate([(1, 1), (1, 2), (2, 3), (1, 4), (1, 5), (2, 6), (1, 7)]):
        structure = Structure.from_ase(cu_atoms(repeat, seed=seed))
        n = structure.n_atoms
        targets = {"target": np.array([rng.normal()]), "forces": rng.normal(size=(n, 3)),
                   "stress": rng.normal(size=(3, 3))}  # fmt: skip
        samples.append(Sample(str(i), i, backend.build(structure, config.graph_settings), targets))
    collate = make_collate(backend.collate, torch.float32)
    batches = [collate(samples[a:b]) for a, b in [(0, 2), (2, 3), (3, 5), (0, 2), (5, 7), (3, 5)]]
    return config, backend, model, batches


def _losses(config):
    weights = config.model.loss_weights()

    def losses(output, targets, atoms_per_graph, masks):
        return compute_losses(output, targets, weights, config.criterion, False, atoms_per_graph,
                              config.normalize_graph_level_loss, masks)  # fmt: skip

    return losses


def _eager(model, optimizer, losses):
    def step(batch):
        result = losses(model(batch.graph), batch.targets, batch.graph.atoms_per_graph(), None)
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        return result

    return step


def test_replayed_steps_train_like_eager_steps():
    config, backend, model, batches = _setup()
    twin = json.loads(json.dumps({k: v.tolist() for k, v in model.state_dict().items()}))
    eager_model = get_registry().models["alignn_atomwise_pure"].build(config.model).train()
    eager_model.load_state_dict({k: torch.tensor(v) for k, v in twin.items()})
    losses = _losses(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    eager_optimizer = torch.optim.AdamW(eager_model.parameters(), lr=1e-3)
    eager = _eager(eager_model, eager_optimizer, losses)
    own_eager = _eager(model, optimizer, losses)
    replayed = CapturedTrainingStep(model, optimizer, backend.pad, losses, own_eager, CPU,
                                    capture=rerun_capture)  # fmt: skip
    for batch in batches:
        got, expected = replayed(batch), eager(batch)
        torch.testing.assert_close(got.total, expected.total.detach(), rtol=1e-5, atol=1e-6)
        assert got.terms.keys() == {"graph", "forces", "stress"}
        for name in got.terms:
            torch.testing.assert_close(got.maes[name], expected.maes[name], rtol=1e-5, atol=1e-6)
        for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
            if q.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
        optimizer.step()
        eager_optimizer.step()
    for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    buckets = {backend.pad(batch.graph).bucket for batch in batches}
    assert replayed.captures_made == len(buckets) < len(batches) == replayed.replays


def test_buckets_are_evicted_least_recently_used_first():
    config, backend, model, batches = _setup()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = _losses(config)
    own_eager = _eager(model, optimizer, losses)
    step = CapturedTrainingStep(model, optimizer, backend.pad, losses, own_eager, CPU,
                                max_captures=1, capture=rerun_capture)  # fmt: skip
    for batch in batches:
        step(batch)
    sequence = [backend.pad(batch.graph).bucket for batch in batches]
    changes = 1 + sum(a != b for a, b in itertools.pairwise(sequence))
    assert step.captures_made == changes > len(set(sequence))  # one kept: each change recaptures


def test_a_failed_capture_warns_and_trains_eagerly():
    config, backend, model, batches = _setup()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = _losses(config)
    calls = []

    def eager(batch):
        calls.append(batch)
        return _eager(model, optimizer, losses)(batch)

    def broken(run, device):
        raise RuntimeError("operation not permitted when stream is capturing")

    step = CapturedTrainingStep(model, optimizer, backend.pad, losses, eager, CPU, capture=broken)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed, training eagerly"):
        step(batches[0])
    step(batches[1])
    assert len(calls) == 2 and step.captures_made == 0


def test_run_with_cuda_graphs_on_a_cpu_is_a_one_line_error(run_cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only message")
    path = _config(tmp_path, "ff", {"epochs": 1, "cuda_graphs": True})
    line = _error_line(run_cli, "run", path, "--root-dir", EXAMPLES / "ff", "--output-dir",
                       tmp_path / "out", "--device", "cpu")  # fmt: skip
    assert line == (
        "error: cuda_graphs: true needs a CUDA device, but this run is on cpu; set cuda_graphs "
        "to false or train on a GPU (--device cuda)"
    )
