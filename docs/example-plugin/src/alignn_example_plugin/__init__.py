"""A third-party model plugin: ``model.name = "mean_pool_mlp"``.

It reuses the ``torch`` graph backend (so it needs the alignn-torch plugin) and predicts a
graph-level target from mean-pooled atom features: small enough to read in one sitting.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from alignn_core.config.model import ModelConfig
from alignn_core.hookspecs import hookimpl


class MeanPoolMLPConfig(ModelConfig):
    """Fields of the example model; ``name`` selects it in a config's ``model`` section."""

    name: Literal["mean_pool_mlp"]
    atom_input_features: int = Field(default=92, ge=1)
    hidden_features: int = Field(default=32, ge=1)
    output_features: int = Field(default=1, ge=1)


class MeanPoolMLP(torch.nn.Module):
    def __init__(self, config: MeanPoolMLPConfig):
        super().__init__()
        self.output_features = config.output_features
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(config.atom_input_features, config.hidden_features),
            torch.nn.SiLU(),
            torch.nn.Linear(config.hidden_features, config.output_features),
        )

    def forward(self, graph) -> dict[str, torch.Tensor]:
        # graph is the torch backend's AtomGraph: atom_features [N, F], node_graph [N]
        counts = graph.n_atoms.clamp(min=1).to(graph.atom_features.dtype)
        pooled = torch.zeros(
            graph.num_graphs,
            graph.atom_features.shape[1],
            dtype=graph.atom_features.dtype,
            device=graph.atom_features.device,
        )
        pooled.index_add_(0, graph.node_graph, graph.atom_features)
        out = self.mlp(pooled / counts[:, None])
        return {"out": out.squeeze(-1) if self.output_features == 1 else out}


class MeanPoolMLPPlugin:
    name = "mean_pool_mlp"
    config_class = MeanPoolMLPConfig
    backend = "torch"

    def build(self, config: MeanPoolMLPConfig) -> torch.nn.Module:
        return MeanPoolMLP(config)


@hookimpl
def register_models(register):
    register(MeanPoolMLPPlugin())
