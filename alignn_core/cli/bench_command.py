"""``alignn bench mlearn DIR...``: train variants on mlearn-layout folders and report test MAEs
of models selected on a validation set carved from the training records (docs/elemental.md)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from alignn_core.errors import UserError

bench_app = typer.Typer(
    help="Benchmarks (docs/elemental.md).", no_args_is_help=True, add_completion=False
)
console = Console()
err_console = Console(stderr=True)


@bench_app.command("mlearn")
def mlearn_command(
    folders: list[Path] = typer.Argument(
        ..., metavar="DIR...", help="Folders with id_prop.json + config_upstream.json (mlearn)."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Where derived data, runs and results.{json,md} go."
    ),
    variants: list[str] = typer.Option(
        ["upstream,gated_sum"],
        "--variants",
        help="Comma list (repeatable): upstream, gated_sum, smooth, or NAME:key=value;key=value "
        "(dotted config paths, e.g. up_eps4:model.node_update_eps=1e-4).",
    ),
    seeds: str = typer.Option("0", "--seeds", help="Training seeds, e.g. 0,1,2."),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help="float32 and/or bf16 (bf16 autocast in training), e.g. "
        "float32,bf16 (default float32).",
    ),
    amp: bool = typer.Option(False, "--amp", help="Same as --precision bf16."),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", help="Share of the training records carved out for validation."
    ),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the carved validation set."),
    max_train: int | None = typer.Option(
        None, "--max-train", min=2, help="Use only the first N training records (smoke tests)."
    ),
    max_test: int | None = typer.Option(
        None, "--max-test", min=1, help="Use only the first N test records (smoke tests)."
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="reduced: issue 15's reduced config (cutoff 5, 12 neighbours, "
        "2+2 layers, 64 features, gradwise_weight 10, batch 5, OneCycle, lr 1e-3).",
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    learning_rate: float | None = typer.Option(None, "--learning-rate"),
    cutoff: float | None = typer.Option(None, "--cutoff"),
    max_neighbors: int | None = typer.Option(None, "--max-neighbors", min=1),
    hidden_features: int | None = typer.Option(None, "--hidden-features", min=1),
    embedding_features: int | None = typer.Option(None, "--embedding-features", min=1),
    alignn_layers: int | None = typer.Option(None, "--alignn-layers", min=0),
    gcn_layers: int | None = typer.Option(None, "--gcn-layers", min=0),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="key=value override of any config field by dotted path "
        "(repeatable), e.g. model.gradwise_weight=10.",
    ),
    eval_eps: str | None = typer.Option(
        None,
        "--eval-eps",
        help="Re-evaluate each upstream-update model on the test records "
        "with these model.node_update_eps values (same weights), e.g. 1e-5,1e-4,1e-8,0.",
    ),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda ... (default: auto)"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Retrain runs that finished in an earlier invocation."
    ),
) -> None:
    """Train variants on mlearn folders; test MAEs of models picked on a carved validation set."""
    from alignn_core.bench import mlearn
    from alignn_core.bench.benchmark import BenchSettings, run_mlearn

    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (got {val_fraction:g})")
    if preset is not None and preset not in mlearn.PRESETS:
        raise UserError(f"unknown --preset {preset!r} (available: {', '.join(mlearn.PRESETS)})")
    if amp and precision is not None:
        raise UserError("--amp is short for --precision bf16; give one of them")
    precisions = mlearn.parse_precisions("bf16" if amp else precision or "float32")
    eps_values = mlearn.parse_list(eval_eps, float, "--eval-eps") if eval_eps else []
    if any(e < 0 for e in eps_values):
        raise UserError("--eval-eps: values must be >= 0")
    options = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "cutoff": cutoff,
        "max_neighbors": max_neighbors,
        "model.hidden_features": hidden_features,
        "model.embedding_features": embedding_features,
        "model.alignn_layers": alignn_layers,
        "model.gcn_layers": gcn_layers,
    }
    settings = BenchSettings(
        folders=folders,
        output=output,
        variants=mlearn.parse_variants(variants),
        seeds=list(dict.fromkeys(mlearn.parse_list(seeds, int, "--seeds"))),
        precisions=precisions,
        val_fraction=val_fraction,
        split_seed=split_seed,
        max_train=max_train,
        max_test=max_test,
        preset=preset,
        options=options,
        sets=mlearn.parse_sets(set_),
        eval_eps=eps_values,
        device=device,
        overwrite=overwrite,
    )
    result = run_mlearn(settings, console)
    failed = [r for r in result["runs"] if r["status"] == "failed"]
    if failed:
        first = failed[0]
        message = (
            f"{len(failed)} of {len(result['runs'])} runs failed (first: {first['element']} "
            f"{first['variant']} seed {first['seed']}: {first['error']}); see "
            f"{output / 'results.md'}"
        )
        err_console.print(
            f"[bold red]error:[/] {escape(message)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=1)
