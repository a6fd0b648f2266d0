"""Run configuration: schema, graph settings and loading."""

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.config.loader import LoadedConfig, load_config, training_config_class
from alignn_core.config.model import LossWeights, ModelConfig
from alignn_core.config.training import TrainingConfigBase

__all__ = [
    "GraphSettings",
    "LoadedConfig",
    "LossWeights",
    "ModelConfig",
    "TrainingConfigBase",
    "load_config",
    "training_config_class",
]
