"""The :class:`~alignn_core.protocols.ModelPlugin` objects for ``alignn_atomwise_pure`` and
``alignn_atomwise_pure_smooth``.

The plugin module (``alignn_torch.plugin``) registers :data:`ALIGNN_ATOMWISE_PURE` and
:data:`ALIGNN_ATOMWISE_PURE_SMOOTH` through the ``register_models`` hook, exactly as a
third-party model would be registered.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alignn_core.config.model import ModelConfig
from alignn_torch.config import ALIGNNAtomWisePureConfig, ALIGNNAtomWisePureSmoothConfig
from alignn_torch.model.alignn_atomwise_pure import ALIGNNAtomWisePure
from alignn_torch.model.alignn_atomwise_pure_smooth import ALIGNNAtomWisePureSmooth
from alignn_torch.model.cuda_graphs import CapturedForward


def _captured_forward(
    module: torch.nn.Module, *, max_captures: int
) -> Callable[..., dict[str, torch.Tensor]]:
    """:class:`~alignn_core.protocols.CapturesForward` for both models: their forward takes a
    padded :class:`~alignn_torch.graphs.graph.AtomGraph` like any other."""
    return CapturedForward(module, max_captures=max_captures)


class AlignnAtomwisePurePlugin:
    """Builds :class:`ALIGNNAtomWisePure` from its config; consumes ``torch`` backend graphs."""

    name = "alignn_atomwise_pure"
    config_class = ALIGNNAtomWisePureConfig
    backend = "torch"

    def build(self, config: ModelConfig) -> ALIGNNAtomWisePure:
        """Create the module (float32 parameters; cast with ``.double()`` as needed)."""
        # The smooth config subclasses the pure one but lacks some of its fields.
        if not isinstance(config, ALIGNNAtomWisePureConfig) or isinstance(
            config, ALIGNNAtomWisePureSmoothConfig
        ):
            raise TypeError(
                f"{self.name} needs an ALIGNNAtomWisePureConfig, got {type(config).__name__}"
            )
        return ALIGNNAtomWisePure(config)

    captured_forward = staticmethod(_captured_forward)


class AlignnAtomwisePureSmoothPlugin:
    """Builds :class:`ALIGNNAtomWisePureSmooth`; consumes the same ``torch`` graphs."""

    name = "alignn_atomwise_pure_smooth"
    config_class = ALIGNNAtomWisePureSmoothConfig
    backend = "torch"

    def build(self, config: ModelConfig) -> ALIGNNAtomWisePureSmooth:
        """Create the module (float32 parameters; cast with ``.double()`` as needed)."""
        if not isinstance(config, ALIGNNAtomWisePureSmoothConfig):
            raise TypeError(
                f"{self.name} needs an ALIGNNAtomWisePureSmoothConfig, got {type(config).__name__}"
            )
        return ALIGNNAtomWisePureSmooth(config)

    captured_forward = staticmethod(_captured_forward)


ALIGNN_ATOMWISE_PURE = AlignnAtomwisePurePlugin()
"""The instance the plugin hook registers for ``alignn_atomwise_pure``."""

ALIGNN_ATOMWISE_PURE_SMOOTH = AlignnAtomwisePureSmoothPlugin()
"""The instance the plugin hook registers for ``alignn_atomwise_pure_smooth``."""
