"""Weighted loss terms and their MAEs, from a model's output dict and a batch's targets.

Term names follow the output keys: graph (``out`` vs ``target``), forces (``grad``), stress
(``stresses``), atomwise (``atomwise_pred``), additional. Upstream trains every term with L1
whatever ``criterion`` says; we honour ``criterion`` (``mse`` or ``l1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignn_core.config.model import LossWeights
from alignn_core.data.samples import ATOM_TARGETS

TERMS = ("graph", "forces", "stress", "atomwise", "additional")
PAIRS = {
    "graph": ("out", "target"),
    "forces": ("grad", "forces"),
    "stress": ("stresses", "stress"),
    "atomwise": ("atomwise_pred", "atomwise"),
    "additional": ("additional", "additional"),
}


@dataclass(frozen=True)
class RowMasks:
    """1 for real rows and 0 for padding, ``graphs`` [G] and ``atoms`` [N]: a batch padded to a
    fixed size (CUDA graph replay) averages its losses and MAEs over the real rows only."""

    graphs: torch.Tensor
    atoms: torch.Tensor


@dataclass
class LossResult:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]  # weighted loss per term (detached)
    maes: dict[str, torch.Tensor]  # mean absolute error per term (detached)


def criterion_fn(name: str):
    if name == "l1":
        return F.l1_loss
    if name == "mse":
        return F.mse_loss
    raise ValueError(f"unsupported criterion {name!r}")


def _aligned(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targets of width 1 are stored ``[B, 1]``; scalar heads predict ``[B]``."""
    if prediction.dim() == target.dim() - 1 and target.shape[-1] == 1:
        return target.squeeze(-1)
    return target.reshape(prediction.shape)


def compute_losses(
    output: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    weights: LossWeights,
    criterion: str,
    classification: bool = False,
    atoms_per_graph: torch.Tensor | None = None,
    normalize_graph_level_loss: bool = False,
    masks: RowMasks | None = None,
) -> LossResult:
    """Weighted loss terms; with ``masks``, means over the real rows only (padded batches)."""
    loss_fn = criterion_fn(criterion)
    total = None
    terms, maes = {}, {}
    for term in TERMS:
        weight = getattr(weights, term)
        out_key, target_key = PAIRS[term]
        if not weight or out_key not in output or target_key not in targets:
            continue
        prediction = output[out_key]
        mask = None
        if masks is not None:
            mask = masks.atoms if target_key in ATOM_TARGETS else masks.graphs
        if term == "graph" and classification:
            labels = targets["target"].reshape(-1).long()
            wrong = (prediction.argmax(-1) != labels).float()
            if mask is None:
                loss = F.nll_loss(prediction, labels)
                mae = wrong.mean()  # error rate
            else:
                loss = _masked_mean(F.nll_loss(prediction, labels, reduction="none"), mask)
                mae = _masked_mean(wrong, mask)
        else:
            target = _aligned(prediction, targets[target_key])
            if term == "graph" and normalize_graph_level_loss and atoms_per_graph is not None:
                scale = atoms_per_graph.to(prediction.dtype).reshape(
                    -1, *[1] * (prediction.dim() - 1)
                )
                prediction, target = prediction / scale, target / scale
            if mask is None:
                loss = loss_fn(prediction, target.to(prediction.dtype))
                mae = (prediction.detach() - target).abs().mean()
            else:
                target = target.to(prediction.dtype)
                loss = _masked_mean(loss_fn(prediction, target, reduction="none"), mask)
                mae = _masked_mean((prediction.detach() - target).abs(), mask)
        weighted = weight * loss
        total = weighted if total is None else total + weighted
        terms[term] = weighted.detach()
        maes[term] = mae.detach()
    if total is None:
        raise RuntimeError("no loss term is active: check the model's *_weight fields")
    return LossResult(total=total, terms=terms, maes=maes)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [R, ...] over the rows where ``mask`` [R] is 1, every element of a
    row counted (as ``F.l1_loss``'s mean over all elements of the unpadded rows)."""
    weights = mask.to(values.dtype).reshape(-1, *[1] * (values.dim() - 1))
    per_row = values[0].numel() if values.shape[0] else 1
    return (values * weights).sum() / (weights.sum() * per_row)
