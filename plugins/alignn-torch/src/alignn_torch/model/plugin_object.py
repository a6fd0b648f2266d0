"""The :class:`~alignn_core.protocols.ModelPlugin` object for ``alignn_atomwise_pure``.

The plugin module (``alignn_torch.plugin``) registers :data:`ALIGNN_ATOMWISE_PURE` through the
``register_models`` hook, exactly as a third-party model would be registered.
"""

from __future__ import annotations

from alignn_core.config.model import ModelConfig
from alignn_torch.config import ALIGNNAtomWisePureConfig
from alignn_torch.model.alignn_atomwise_pure import ALIGNNAtomWisePure


class AlignnAtomwisePurePlugin:
    """Builds :class:`ALIGNNAtomWisePure` from its config; consumes ``torch`` backend graphs."""

    name = "alignn_atomwise_pure"
    config_class = ALIGNNAtomWisePureConfig
    backend = "torch"

    def build(self, config: ModelConfig) -> ALIGNNAtomWisePure:
        """Create the module (float32 parameters; cast with ``.double()`` as needed)."""
        if not isinstance(config, ALIGNNAtomWisePureConfig):
            raise TypeError(
                f"{self.name} needs an ALIGNNAtomWisePureConfig, got {type(config).__name__}"
            )
        return ALIGNNAtomWisePure(config)


ALIGNN_ATOMWISE_PURE = AlignnAtomwisePurePlugin()
"""The instance the plugin hook registers."""
