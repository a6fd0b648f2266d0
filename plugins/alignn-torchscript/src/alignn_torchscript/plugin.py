"""Hook implementations of the TorchScript plugin: the ``torchscript`` exporter and the
``alignn export torchscript`` command.

Both hooks import lazily: the CLI loads every plugin on start, and importing torch there would
slow down ``alignn --help`` for everyone.
"""

from __future__ import annotations

from typing import Any

from alignn_core.hookspecs import hookimpl


@hookimpl
def register_exporters(register):
    from alignn_torchscript.exporter import TORCHSCRIPT_EXPORTER

    register(TORCHSCRIPT_EXPORTER)


@hookimpl
def register_commands(cli: Any) -> None:
    from alignn_torchscript.cli import export_app

    cli.add_typer(export_app, name="export")
