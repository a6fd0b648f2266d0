"""The ``alignn_atomwise_pure`` model: layers, physics terms, the module and its plugin object."""

from alignn_torch.model.alignn_atomwise_pure import ALIGNNAtomWisePure
from alignn_torch.model.plugin_object import ALIGNN_ATOMWISE_PURE, AlignnAtomwisePurePlugin

__all__ = [
    "ALIGNN_ATOMWISE_PURE",
    "ALIGNNAtomWisePure",
    "AlignnAtomwisePurePlugin",
]
