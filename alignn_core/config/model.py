"""Base class for model configs contributed by model plugins.

A plugin subclasses :class:`ModelConfig` with a ``name: Literal["..."]`` field; the literal is
what ``model.name`` in a JSON config selects. Unknown fields are rejected, as everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from alignn_core.features import feature_width

if TYPE_CHECKING:
    from alignn_core.config.training import TrainingConfig


@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term; a zero weight means the term is neither computed nor read."""

    graph: float = 1.0
    forces: float = 0.0
    stress: float = 0.0
    atomwise: float = 0.0
    additional: float = 0.0


class ModelConfig(BaseModel):
    """Common behaviour of every model config."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str

    def check(self, training: TrainingConfig) -> list[str]:
        """Cross-check against the training config: raise ``ValueError`` for contradictions,
        return warnings for settings that are legal but probably not what the user meant.

        The default checks ``atom_input_features`` against the ``atom_features`` table width, for
        every model that has that field.
        """
        width = getattr(self, "atom_input_features", None)
        if width is not None and width != feature_width(training.atom_features):
            raise ValueError(
                f"model.atom_input_features is {width} but atom_features "
                f"{training.atom_features!r} has {feature_width(training.atom_features)} "
                f"features; set model.atom_input_features to "
                f"{feature_width(training.atom_features)}"
            )
        return []

    def loss_weights(self) -> LossWeights:
        """Which targets the model trains on (graph-level only by default)."""
        return LossWeights()

    def dataset_warnings(self, elements: set[int]) -> list[str]:
        """Warnings that need the data, not just the config: ``elements`` is the set of atomic
        numbers in the training records. Called once by the trainer after reading them."""
        return []
