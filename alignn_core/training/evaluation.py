"""Run a model over a loader: running losses for an epoch, or per-structure predictions."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from alignn_core.config.model import LossWeights
from alignn_core.training.losses import compute_losses


@dataclass
class EpochStats:
    """Means over batches (weighted by batch size) of the loss terms and MAEs."""

    loss: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)
    maes: dict[str, float] = field(default_factory=dict)
    structures: int = 0

    def add(self, result, n: int) -> None:
        self.structures += n
        w = n / self.structures

        def blend(old: float, new: float) -> float:
            return old + (new - old) * w

        self.loss = blend(self.loss, float(result.total.detach()))
        for name, value in result.terms.items():
            self.terms[name] = blend(self.terms.get(name, 0.0), float(value))
        for name, value in result.maes.items():
            self.maes[name] = blend(self.maes.get(name, 0.0), float(value))

    def as_dict(self) -> dict:
        return {"loss": self.loss, **{f"{k}_loss": v for k, v in self.terms.items()},
                **{f"{k}_mae": v for k, v in self.maes.items()}}  # fmt: skip


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast around the forward pass when asked (CUDA, or CPU where torch supports it)."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def evaluate(
    model: torch.nn.Module,
    batches: Iterable,
    device: torch.device,
    weights: LossWeights,
    criterion: str,
    classification: bool = False,
    normalize_graph_level_loss: bool = False,
    collect: bool = False,
) -> tuple[EpochStats, list[dict]]:
    """Loss statistics without parameter updates; with ``collect``, per-structure predictions.

    Forces need autograd through the edge vectors, so gradients stay enabled; the model is in
    eval mode, so no double-backward graph is built.
    """
    model.eval()
    stats = EpochStats()
    rows: list[dict] = []
    for batch in batches:
        batch = batch.to(device)
        output = model(batch.graph)
        result = compute_losses(
            output, batch.targets, weights, criterion, classification,
            batch.graph.atoms_per_graph(), normalize_graph_level_loss,
        )  # fmt: skip
        stats.add(result, len(batch.ids))
        if collect:
            rows.extend(split_predictions(batch, output))
    return stats, rows


def split_predictions(batch, output: dict[str, torch.Tensor]) -> list[dict]:
    """Per-structure dicts of targets and predictions (numpy) from one batch."""
    counts = batch.graph.atoms_per_graph().cpu().tolist()
    starts = np.cumsum([0, *counts])
    out = output["out"].detach().cpu().numpy()
    rows = []
    for i, (sid, index) in enumerate(zip(batch.ids, batch.indices, strict=True)):
        a, b = starts[i], starts[i + 1]
        row = {
            "id": sid,
            "index": index,
            "target": batch.targets["target"][i].detach().cpu().numpy(),
            "prediction": np.atleast_1d(out[i]),
            "n_atoms": counts[i],
        }
        if "grad" in output and "forces" in batch.targets:
            row["forces_target"] = batch.targets["forces"][a:b].cpu().numpy()
            row["forces_prediction"] = output["grad"][a:b].detach().cpu().numpy()
        if "stresses" in output and "stress" in batch.targets:
            row["stress_target"] = batch.targets["stress"][i].cpu().numpy()
            row["stress_prediction"] = output["stresses"][i].detach().cpu().numpy()
        rows.append(row)
    return rows
