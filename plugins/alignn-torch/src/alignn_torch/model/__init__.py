"""The ``alignn_atomwise_pure`` and ``alignn_atomwise_pure_smooth`` models: layers, physics terms,
the modules and their plugin objects."""

from alignn_torch.model.alignn_atomwise_pure import ALIGNNAtomWisePure
from alignn_torch.model.alignn_atomwise_pure_smooth import ALIGNNAtomWisePureSmooth
from alignn_torch.model.plugin_object import (
    ALIGNN_ATOMWISE_PURE,
    ALIGNN_ATOMWISE_PURE_SMOOTH,
    AlignnAtomwisePurePlugin,
    AlignnAtomwisePureSmoothPlugin,
)

__all__ = [
    "ALIGNN_ATOMWISE_PURE",
    "ALIGNN_ATOMWISE_PURE_SMOOTH",
    "ALIGNNAtomWisePure",
    "ALIGNNAtomWisePureSmooth",
    "AlignnAtomwisePurePlugin",
    "AlignnAtomwisePureSmoothPlugin",
]
