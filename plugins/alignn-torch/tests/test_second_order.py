"""``model.second_order``: SiLU and LayerNorm with hand-written double backward.

They replace PyTorch's built-ins while training (forces make the loss differentiate twice), so
their values and first and second derivatives must be the built-ins', and a training step must
give the parameter gradients the built-ins give.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from alignn_torch.config import ALIGNNAtomWisePureConfig
from alignn_torch.graphs.graph import collate_graphs
from alignn_torch.model import ALIGNNAtomWisePure, second_order
from torch.autograd import gradcheck, gradgradcheck
from torch.nn import functional as F

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.structures import Structure

pytestmark = pytest.mark.usefixtures("single_thread")


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 5, dtype=torch.float64, generator=generator)
    weight = 1 + 0.3 * torch.randn(5, dtype=torch.float64, generator=generator)
    bias = 0.3 * torch.randn(5, dtype=torch.float64, generator=generator)
    return x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()


def test_second_derivatives_match_finite_differences() -> None:
    x, weight, bias = inputs()

    def silu(x: torch.Tensor) -> torch.Tensor:
        return second_order.silu(x, True)

    def norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return second_order.layer_norm(x, weight, bias, 1e-5, True)

    assert gradcheck(silu, (x,)) and gradgradcheck(silu, (x,))
    assert gradcheck(norm, (x, weight, bias)) and gradgradcheck(norm, (x, weight, bias))


def forces_loss_gradients(twice: bool) -> list[torch.Tensor]:
    """Value, dE/dx (recorded) and d(loss)/d(x, weight, bias) of a force-like loss."""
    x, weight, bias = inputs()
    y = second_order.layer_norm_silu(x, weight, bias, 1e-5, twice)
    energy = (y * torch.sin(x)).sum()
    (forces,) = torch.autograd.grad(energy, x, create_graph=True)
    loss = energy + (forces**2).sum()
    return [y, forces, *torch.autograd.grad(loss, [x, weight, bias])]


def test_values_and_derivatives_equal_the_builtins() -> None:
    ours, builtin = forces_loss_gradients(True), forces_loss_gradients(False)
    torch.testing.assert_close(ours[0], builtin[0], rtol=0, atol=0)  # same forward kernels
    for mine, theirs in zip(ours[1:], builtin[1:], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


def test_training_step_gradients_equal_the_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    from alignn_torch.graphs.backend import TorchGraphBackend

    settings = GraphSettings(
        neighbor_strategy="pure_torch", cutoff=4.0, max_neighbors=None,
        three_body_cutoff=3.0, atom_features="cgcnn", dtype="float64",
    )  # fmt: skip
    cells = [
        Structure(
            numbers=[14, 14],
            positions=[[0.0, 0.0, 0.0], [1.3, 1.4, 1.2]],
            cell=[[0.0, 2.7, 2.7], [2.7, 0.0, 2.7], [2.7, 2.7, 0.0]],
        ),
        Structure(numbers=[29], positions=[[0.0, 0.0, 0.0]], cell=2.6 * np.eye(3)),
    ]
    graph = collate_graphs([TorchGraphBackend().build(cell, settings) for cell in cells])
    config = ALIGNNAtomWisePureConfig(
        name="alignn_atomwise_pure", atom_input_features=92, hidden_features=16,
        embedding_features=16, alignn_layers=2, gcn_layers=1, stresswise_weight=1.0,
    )  # fmt: skip

    def step() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = ALIGNNAtomWisePure(config).double().train()
        result = model(graph)
        loss = result["out"].sum() + (result["grad"] ** 2).sum() + result["stresses"].pow(2).sum()
        loss.backward()
        return [p.grad for p in model.parameters() if p.grad is not None]

    ours = step()
    monkeypatch.setattr(second_order, "_silu_twice_differentiable", F.silu)
    monkeypatch.setattr(
        second_order,
        "_layer_norm_twice_differentiable",
        lambda x, w, b, eps: F.layer_norm(x, (x.shape[-1],), w, b, eps),
    )
    builtin = step()
    assert len(ours) == len(builtin) > 0
    for mine, theirs in zip(ours, builtin, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
