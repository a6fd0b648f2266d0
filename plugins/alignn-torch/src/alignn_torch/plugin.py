"""Hook implementations of the pure-torch plugin: the ``torch`` graph backend and the
``alignn_atomwise_pure`` and ``alignn_atomwise_pure_smooth`` models."""

from __future__ import annotations

from alignn_core.hookspecs import hookimpl


@hookimpl
def register_graph_backends(register):
    from alignn_torch.graphs.backend import TorchGraphBackend

    register(TorchGraphBackend())


@hookimpl
def register_models(register):
    from alignn_torch.model.plugin_object import ALIGNN_ATOMWISE_PURE, ALIGNN_ATOMWISE_PURE_SMOOTH

    register(ALIGNN_ATOMWISE_PURE)
    register(ALIGNN_ATOMWISE_PURE_SMOOTH)
