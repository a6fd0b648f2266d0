"""``alignn export torchscript`` and the upstream-style ``export_torchscript.py`` script.

Importing this module must stay cheap (the ``alignn`` CLI imports it on every start to register
the command), so torch and the exporter are imported inside the command only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import typer

export_app = typer.Typer(
    help="Export trained models for deployment (C++/LAMMPS hosts).", no_args_is_help=True
)


@export_app.command("torchscript")
def torchscript(
    source: Path = typer.Argument(
        ...,
        metavar="RUN_DIR_OR_CHECKPOINT",
        help="A run directory (config.json + best_model.pt) or a checkpoint file.",
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", "--out", help="Where to write the TorchScript file (.pt)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Run config (default: config.json next to the checkpoint)."
    ),
    weights: str = typer.Option(
        "best_model.pt", "--weights", help="Checkpoint name inside a run directory."
    ),
    dtype: str | None = typer.Option(
        None, "--dtype", help="float32 or float64 (default: the checkpoint's)."
    ),
    check: bool = typer.Option(
        True, "--check/--no-check", help="Compare the written file with the eager model."
    ),
) -> None:
    """Write RUN_DIR_OR_CHECKPOINT as a self-contained TorchScript file for libtorch hosts.

    Its forward_tensors_z(positions, lattice, atomic_numbers, src, dst, shift, compute_stress)
    returns energy (eV), forces (eV/Å) and stress (GPa, tensile positive); metadata.json inside
    holds the cutoffs and units. See docs/export.md.
    """
    from rich.console import Console

    from alignn_core.cli.run_command import print_warnings
    from alignn_torchscript.export import export_run

    report = export_run(source, output, config=config, weights=weights, dtype=dtype, check=check)
    print_warnings(report.warnings)
    meta = report.metadata
    neighbours = meta["neighbor_list"]
    checked = (
        "checked against eager: max relative error "
        + ", ".join(f"{key} {value:.1e}" for key, value in report.check.items())
        if report.check
        else "not checked"
    )
    Console(highlight=False).print(
        f"[green]wrote[/] {report.path} ({meta['dtype']}; {neighbours['strategy']} neighbours, "
        f"cutoff {neighbours['cutoff']} Å, max_neighbors {neighbours['max_neighbors']}, "
        f"three_body_cutoff {neighbours['three_body_cutoff']}; {checked})",
        soft_wrap=True,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_torchscript.py",
        description=(
            "Export a trained alignn_atomwise_pure(_smooth) model to TorchScript "
            "(same as `alignn export torchscript`; upstream's flags are accepted)."
        ),
    )
    parser.add_argument("source", nargs="?", type=Path, help="run directory or checkpoint")
    parser.add_argument("--model-dir", "--model_path", type=Path, help="run directory")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file (state dict)")
    parser.add_argument("--config", type=Path, help="run config.json")
    parser.add_argument("-o", "--output", "--out", type=Path, required=True)
    parser.add_argument("--weights", default="best_model.pt", help="checkpoint in a run dir")
    parser.add_argument("--dtype", choices=("float32", "float64"))
    parser.add_argument(
        "--atom-features",
        help="accepted for upstream compatibility; must equal the run config's atom_features",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the eager comparison")
    parser.add_argument(
        "--test", action="store_true", help="upstream's smoke test: the check always runs"
    )
    return parser


def script_main(argv: list[str] | None = None) -> int:
    """``export_torchscript.py``: translate upstream-style flags into ``alignn export torchscript``
    so both share one implementation and one error policy (exit 2 for a user mistake)."""
    args = _parser().parse_args(argv)
    sources = [s for s in (args.source, args.model_dir, args.checkpoint) if s is not None]
    if len(sources) != 1:
        print(
            "error: give exactly one of RUN_DIR_OR_CHECKPOINT, --model-dir or --checkpoint "
            "(there is no bundled default model)",
            file=sys.stderr,
        )
        return 2
    if args.atom_features is not None:
        from alignn_core.config import load_config
        from alignn_core.errors import UserError
        from alignn_torchscript.export import resolve_run

        try:
            config_path, _ = resolve_run(sources[0], args.config, args.weights)
            trained_with = load_config(config_path).config.atom_features
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        if args.atom_features != trained_with:
            print(
                f"error: --atom-features {args.atom_features!r} differs from the run's "
                f"atom_features {trained_with!r}; a different table would silently change the "
                "model's predictions",
                file=sys.stderr,
            )
            return 2
    forwarded = ["export", "torchscript", str(sources[0]), "--output", str(args.output)]
    if args.config is not None:
        forwarded += ["--config", str(args.config)]
    forwarded += ["--weights", args.weights]
    if args.dtype:
        forwarded += ["--dtype", args.dtype]
    if args.no_check:
        forwarded.append("--no-check")
    from alignn_core.cli.app import main

    return main(forwarded)


def entry() -> None:
    """Console-script entry point of ``export_torchscript.py``."""
    sys.exit(script_main())
