"""``alignn run CONFIG``: train a model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from alignn_core.config.loader import load_config

console = Console()
err_console = Console(stderr=True)


def print_warnings(warnings: list[str]) -> None:
    """Config warnings go to stderr, one line each, so they are never missed or wrapped."""
    for warning in warnings:
        err_console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


def run(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="Run config (JSON)."),
    root_dir: Path | None = typer.Option(
        None, "--root-dir", help="Data folder with id_prop.csv/json (default: the config's folder)."
    ),
    output_dir: Path | None = typer.Option(
        None,
        "--output-dir",
        help="Where outputs go (default: the config's output_dir, relative to the cwd).",
    ),
    device: str | None = typer.Option(
        None, "--device", help="cpu, cuda, cuda:1 ... (default: auto)"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run's outputs."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Override batch_size."),
    target_key: str | None = typer.Option(None, "--target-key", "--target_key"),
    id_key: str | None = typer.Option(None, "--id-key", "--id_key"),
    force_key: str | None = typer.Option(
        None, "--force-key", "--force_key", "--gradwise-key", "--gradwise_key"
    ),
    stresswise_key: str | None = typer.Option(None, "--stresswise-key", "--stresswise_key"),
    file_format: str | None = typer.Option(None, "--file-format", "--file_format"),
) -> None:
    """Train a model from CONFIG on the data in --root-dir."""
    from alignn_core.training.trainer import Trainer

    overrides = {
        "epochs": epochs, "batch_size": batch_size, "target_key": target_key, "id_key": id_key,
        "force_key": force_key, "stresswise_key": stresswise_key, "file_format": file_format,
    }  # fmt: skip
    loaded = load_config(config_path, overrides=overrides)
    print_warnings(loaded.warnings)
    config = loaded.config
    root = root_dir if root_dir is not None else config_path.parent
    if output_dir is None:  # relative to the working directory, as upstream
        output_dir = Path(config.output_dir)
    Trainer(config, root_dir=root, output_dir=output_dir, console=console, device=device,
            overwrite=overwrite).run()  # fmt: skip
