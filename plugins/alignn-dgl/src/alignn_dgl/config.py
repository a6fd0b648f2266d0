"""Config of upstream's DGL model ``alignn_atomwise``: the shared atomwise fields with DGL's
defaults (``penalty_factor`` 0.1, where the pure model has 0.5)."""

from __future__ import annotations

from typing import Literal

from alignn_torch.config import AtomwiseFields


class ALIGNNAtomWiseConfig(AtomwiseFields):
    name: Literal["alignn_atomwise"]
