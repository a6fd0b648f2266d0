"""Record in a checkpoint which node update a model was trained with, and refuse a mismatch.

``node_update: "gated_sum"`` has exactly the parameters of upstream's gated mean, so a
checkpoint's keys and shapes cannot tell the two apart: loading one into the other would succeed
and predict garbage. A model with a non-upstream update therefore carries one extra buffer,
``_node_update`` = [code, node_update_norm], and a load-state-dict pre-hook compares it with the
model's own before any weight is copied. Upstream-update models carry no such buffer, so their
state dicts stay exactly upstream's (strict loads both ways).
"""

from __future__ import annotations

import torch
from torch import nn

from alignn_core.errors import ModelError

BUFFER = "_node_update"
CODES = {"gated_sum": 1.0}
"""Numeric code stored for each non-upstream update (a tensor cannot hold a string)."""


def _describe(tag: torch.Tensor | None) -> str:
    if tag is None:
        return "'upstream'"
    names = {code: name for name, code in CODES.items()}
    name = names.get(float(tag[0]), f"unknown code {float(tag[0])}")
    return f"'{name}' (node_update_norm {float(tag[1]):g})"


def register_node_update(module: nn.Module, node_update: str, norm: float) -> None:
    """Add the ``_node_update`` buffer (non-upstream updates only) and the mismatch check."""
    if node_update != "upstream":
        module.register_buffer(
            BUFFER, torch.tensor([CODES[node_update], float(norm)], dtype=torch.float64)
        )
    mine = getattr(module, BUFFER, None)

    def check(state: dict, prefix: str, *_args) -> None:
        theirs = state.get(prefix + BUFFER)
        same = (mine is None and theirs is None) or (
            mine is not None and theirs is not None and torch.equal(theirs.double().cpu(), mine)
        )
        if not same:
            raise ModelError(
                f"the checkpoint was trained with model.node_update {_describe(theirs)} but the "
                f"config asks for {_describe(mine)}: set model.node_update (and "
                "node_update_norm) to the checkpoint's values; the parameters have the same "
                "shapes, so loading it anyway would give wrong predictions"
            )

    module._register_load_state_dict_pre_hook(check)
