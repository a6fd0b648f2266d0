"""Hook implementations of the LMDB plugin: the ``lmdb`` dataset provider and ``alignn cache``.

Imports stay inside the hooks so that loading the plugin (every CLI start) costs nothing.
"""

from __future__ import annotations

from alignn_core.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    from alignn_lmdb.provider import LmdbDatasetProvider

    register(LmdbDatasetProvider())


@hookimpl
def register_commands(cli):
    from alignn_lmdb.cli import register

    register(cli)
