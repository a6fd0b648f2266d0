"""Optimizer and learning-rate schedule, as upstream sets them up."""

from __future__ import annotations

import torch

NO_DECAY_MARKERS = ("bias", "bn", "norm")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Biases and normalisation parameters get no weight decay (upstream's grouping)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if any(m in name for m in NO_DECAY_MARKERS) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, momentum=0.9)
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def make_scheduler(optimizer, config, steps_per_epoch: int):
    """OneCycle stepped per batch over ``lr_total_epochs`` (or ``epochs``), warm-up over the
    first 30% of steps as upstream; ``none`` keeps the rate constant."""
    if config.scheduler == "onecycle":
        total_epochs = config.lr_total_epochs or config.epochs
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.learning_rate,
            epochs=max(total_epochs, 1),
            steps_per_epoch=max(steps_per_epoch, 1),
            pct_start=0.3,
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
