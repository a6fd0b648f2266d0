"""Hook implementations of the DGL plugin.

The model config ``alignn_atomwise`` is registered unconditionally, so DGL-era configs validate
everywhere; the ``dgl`` graph backend only where ``import dgl`` works. Without DGL, training
``alignn_atomwise`` therefore stops in the trainer with "needs graph backend 'dgl'" and the hint
from ``alignn_core.plugins.FIRST_PARTY_BACKENDS`` instead of an import traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alignn_core.hookspecs import hookimpl
from alignn_dgl.availability import dgl_available, import_dgl
from alignn_dgl.config import ALIGNNAtomWiseConfig

if TYPE_CHECKING:
    import torch

    from alignn_core.protocols import GraphBackend


class ALIGNNAtomWiseModel:
    """``alignn_atomwise`` on the ``dgl`` graph backend."""

    name = "alignn_atomwise"
    config_class = ALIGNNAtomWiseConfig
    backend = "dgl"

    def build(self, config: Any) -> torch.nn.Module:
        """Create :class:`alignn_dgl.model.ALIGNNAtomWise` (a one-line error without DGL)."""
        if not isinstance(config, ALIGNNAtomWiseConfig):
            raise TypeError(f"{self.name} needs an ALIGNNAtomWiseConfig, got {type(config)}")
        import_dgl()  # raises the install hint before the model module tries to import DGL
        from alignn_dgl.model import ALIGNNAtomWise

        return ALIGNNAtomWise(config)


def graph_backend() -> GraphBackend | None:
    """The ``dgl`` backend object, or None where DGL does not import."""
    if not dgl_available():
        return None
    from alignn_dgl.graphs import DGLGraphBackend

    return DGLGraphBackend()


@hookimpl
def register_models(register):
    register(ALIGNNAtomWiseModel())


@hookimpl
def register_graph_backends(register):
    backend = graph_backend()
    if backend is not None:
        register(backend)


@hookimpl
def register_commands(cli):
    from alignn_dgl.parity import parity_command

    cli.command("parity")(parity_command)
