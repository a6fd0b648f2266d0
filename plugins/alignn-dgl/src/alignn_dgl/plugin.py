"""Hook implementations of the DGL plugin."""

from __future__ import annotations

from alignn_core.errors import PluginError
from alignn_core.hookspecs import hookimpl
from alignn_dgl.config import ALIGNNAtomWiseConfig


class ALIGNNAtomWiseModel:
    """``alignn_atomwise`` on the ``dgl`` graph backend."""

    name = "alignn_atomwise"
    config_class = ALIGNNAtomWiseConfig
    backend = "dgl"

    def build(self, config: ALIGNNAtomWiseConfig):
        raise PluginError(
            "the DGL model 'alignn_atomwise' is not available in this release; set model.name "
            "to 'alignn_atomwise_pure' (same weights and equations, no DGL)"
        )


@hookimpl
def register_models(register):
    register(ALIGNNAtomWiseModel())
