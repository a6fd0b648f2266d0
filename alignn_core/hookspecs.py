"""The plugin hooks: the public API a plugin implements.

Each hook receives a ``register`` callable and calls it once per thing it contributes. First-party
plugins (pure-torch, DGL, LMDB, TorchScript) use exactly these hooks, like any third party.
"""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("alignn")
hookimpl = HookimplMarker("alignn")


@hookspec
def register_graph_backends(register):
    """Register graph backends (:class:`alignn_core.protocols.GraphBackend`)."""


@hookspec
def register_models(register):
    """Register models (:class:`alignn_core.protocols.ModelPlugin`), one per ``model.name``."""


@hookspec
def register_datasets(register):
    """Register dataset/cache providers (:class:`alignn_core.protocols.DatasetProvider`)."""


@hookspec
def register_exporters(register):
    """Register model exporters (:class:`alignn_core.protocols.Exporter`)."""


@hookspec
def register_commands(cli):
    """Add Typer commands or sub-apps to the ``alignn`` CLI (``cli``: the root ``typer.Typer``)."""
