"""``alignn run CONFIG``: train a model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import typer
from rich.console import Console

from alignn_core.config.loader import load_config
from alignn_core.errors import UserError

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
    nproc: int | None = typer.Option(
        None,
        "--nproc",
        min=1,
        help="Train data-parallel in N processes on this machine (runs torchrun for you).",
    ),
    distributed: bool = typer.Option(
        False, "--distributed", hidden=True, help="Set distributed: true (used by --nproc)."
    ),
) -> None:
    """Train a model from CONFIG on the data in --root-dir."""
    from alignn_core.training import distributed as dist_plumbing
    from alignn_core.training.trainer import Trainer

    overrides = {
        "epochs": epochs, "batch_size": batch_size, "target_key": target_key, "id_key": id_key,
        "force_key": force_key, "stresswise_key": stresswise_key, "file_format": file_format,
        "distributed": True if distributed or nproc else None,
    }  # fmt: skip
    loaded = load_config(config_path, overrides=overrides)  # a bad config fails here, once
    if nproc is not None:
        if dist_plumbing.torchrun_env() is not None:
            raise UserError("--nproc starts torchrun itself; under torchrun leave it out")
        # an uneven global batch fails here, once, rather than in every rank
        dist_plumbing.DistContext(world_size=nproc).per_rank_batch(loaded.config.batch_size)
        args = ["run", str(config_path), "--distributed"]
        for flag, value in (
            ("--root-dir", root_dir), ("--output-dir", output_dir), ("--device", device),
            ("--epochs", epochs), ("--batch-size", batch_size), ("--target-key", target_key),
            ("--id-key", id_key), ("--force-key", force_key),
            ("--stresswise-key", stresswise_key), ("--file-format", file_format),
        ):  # fmt: skip
            if value is not None:
                args += [flag, str(value)]
        if overwrite:
            args.append("--overwrite")
        code = subprocess.call(dist_plumbing.torchrun_command(nproc, args))
        if code:  # a rank's own error is above; torchrun adds which rank failed and how
            err_console.print(f"[bold red]error:[/] the {nproc}-process run failed (torchrun "
                              f"exit status {code})", highlight=False, soft_wrap=True)  # fmt: skip
            raise typer.Exit(code=code if code > 0 else 1)
        return
    if dist_plumbing.is_main_process():  # one copy of the warnings per job
        print_warnings(loaded.warnings)
    config = loaded.config
    root = root_dir if root_dir is not None else config_path.parent
    if output_dir is None:  # relative to the working directory, as upstream
        output_dir = Path(config.output_dir)
    Trainer(config, root_dir=root, output_dir=output_dir, console=console, device=device,
            overwrite=overwrite).run()  # fmt: skip
