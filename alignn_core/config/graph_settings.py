"""The settings that change a graph, in one place.

Graph backends read only this object, and caches fingerprint exactly these fields, so a cache can
never be reused with settings that would have built different graphs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict

NeighborStrategy = Literal[
    "k-nearest",
    "voronoi",
    "radius_graph",
    "radius_graph_jarvis",
    "fast_graph",
    "torch_graph",
    "pure_torch",
]
AtomFeatures = Literal["basic", "atomic_number", "cfid", "cgcnn"]


class GraphSettings(BaseModel):
    """Inputs of graph construction (a projection of the training config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    neighbor_strategy: NeighborStrategy = "k-nearest"
    cutoff: float = 5.0
    cutoff_extra: float = 3.0
    three_body_cutoff: float | None = 3.5
    max_neighbors: int | None = 12
    use_canonize: bool = True
    atom_features: AtomFeatures = "cgcnn"
    compute_line_graph: bool = True
    dtype: str = "float32"

    @classmethod
    def from_config(cls, config) -> GraphSettings:
        """Project a training config (any object with these attributes) onto graph settings."""
        return cls(**{name: getattr(config, name) for name in cls.model_fields})

    @property
    def triplet_cutoff(self) -> float | None:
        """Longest bond allowed in a triplet, or None for no limit.

        Only the ``pure_torch`` strategy filters triplets (upstream's behaviour): by
        ``three_body_cutoff``, or by ``cutoff`` when that is None. Other strategies keep all.
        """
        if self.neighbor_strategy != "pure_torch":
            return None
        return self.cutoff if self.three_body_cutoff is None else self.three_body_cutoff

    def fingerprint(self) -> str:
        """Stable hash of every field; equal fingerprints mean identical graphs."""
        payload = json.dumps(self.model_dump(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
