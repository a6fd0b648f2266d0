"""``alignn config validate|show|schema``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from alignn_core.cli.run_command import print_warnings

config_app = typer.Typer(help="Validate, show and describe run configs.", no_args_is_help=True)


@config_app.command("validate")
def validate(config_path: Path = typer.Argument(..., metavar="CONFIG")) -> None:
    """Check CONFIG against the schema of the installed plugins."""
    from alignn_core.config.loader import load_config

    loaded = load_config(config_path)
    print_warnings(loaded.warnings)
    Console().print(f"[green]ok[/]: {config_path} (model {loaded.config.model.name})")


@config_app.command("show")
def show(config_path: Path = typer.Argument(..., metavar="CONFIG")) -> None:
    """Print CONFIG fully resolved, with every default filled in."""
    from alignn_core.config.loader import load_config

    loaded = load_config(config_path)
    print_warnings(loaded.warnings)
    typer.echo(json.dumps(loaded.config.model_dump(mode="json"), indent=2))


@config_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of the full config (plugin model configs included)."""
    from alignn_core.config.loader import training_config_class

    typer.echo(json.dumps(training_config_class().model_json_schema(), indent=2))
