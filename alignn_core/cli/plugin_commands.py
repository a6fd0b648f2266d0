"""``alignn plugins list``."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer
from rich.console import Console
from rich.table import Table

plugins_app = typer.Typer(help="Inspect installed plugins.", no_args_is_help=True)


@plugins_app.command("list")
def list_plugins(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List loaded plugins: name, distribution, version, hooks and what each registers."""
    from alignn_core.plugins import plugin_infos

    infos = plugin_infos()
    if as_json:
        typer.echo(json.dumps([asdict(info) for info in infos], indent=2))
        return
    table = Table(title="alignn plugins")
    for column in ("plugin", "distribution", "version", "registers", "hooks"):
        table.add_column(column)
    for info in infos:
        registers = "\n".join(
            f"{kind}: {', '.join(names)}" for kind, names in info.registers.items()
        )
        hooks = "\n".join(info.hooks) or "(none)"
        table.add_row(info.name, info.distribution or "", info.version or "", registers, hooks)
    Console(width=max(Console().width, 120)).print(table)
