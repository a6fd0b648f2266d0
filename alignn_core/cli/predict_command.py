"""``alignn predict MODEL PATHS...``: a CSV row per structure, optional per-atom forces file.

Columns: ``id`` (file name, ``file@frame`` for multi-frame files), ``source``, ``frame``,
``n_atoms``, ``formula``, ``out`` (``out_0 ... out_{D-1}`` for D outputs), and for force fields
``energy`` (eV), ``energy_per_atom`` (eV), ``fmax`` (eV/Å), ``stress_xx ... stress_xy`` (GPa,
tensile positive, Voigt order xx yy zz yz xz xy; empty for non-periodic structures).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from alignn_core.cli.simulation_io import DEVICE_HELP, DTYPE_HELP
from alignn_core.errors import UserError
from alignn_core.training.atomic import save_text

err_console = Console(stderr=True)
FORCE_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".json": "json"}
VOIGT = (("xx", 0, 0), ("yy", 1, 1), ("zz", 2, 2), ("yz", 1, 2), ("xz", 0, 2), ("xy", 0, 1))


def predict(
    model: Path = typer.Argument(
        ..., metavar="MODEL", help="Run directory (config.json + best_model.pt) or checkpoint."
    ),
    paths: list[Path] = typer.Argument(
        ..., metavar="PATHS...", help="Structure files (every frame) or folders of them."
    ),
    output: Path = typer.Option(Path("predictions.csv"), "-o", "--output", help="CSV to write."),
    forces: Path | None = typer.Option(
        None, "--forces", help="Also write per-atom forces (and energy/stress) to .extxyz or .json."
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Structures per forward pass."),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, "--dtype", help=DTYPE_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Predict every structure in PATHS with MODEL and write a CSV row per structure."""
    from alignn_core.inference import gather, load_model

    force_format = None
    if forces is not None:
        force_format = FORCE_FORMATS.get(forces.suffix.lower())
        if force_format is None:
            raise UserError(f"--forces {forces}: unsupported extension {forces.suffix!r}; use "
                            ".extxyz, .xyz or .json")  # fmt: skip
    loaded = load_model(model, device=device, dtype=dtype)
    for note in loaded.notes:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    items = list(gather(paths))  # reads every file up front: a bad file fails before any work
    if forces is not None and not loaded.is_force_field:
        raise UserError(f"--forces: model {model} is not a force field (it predicts no forces)")
    with Progress(TextColumn("[bold blue]predicting"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True,
                  disable=not progress) as bar:  # fmt: skip
        task = bar.add_task("predict", total=len(items))
        predictions = loaded.predict(items, batch_size=batch_size,
                                     progress=lambda n: bar.advance(task, n))  # fmt: skip
    write_csv(output, predictions)
    if forces is not None:
        write_forces(forces, force_format or "json", predictions)
    where = f" and {forces}" if forces is not None else ""
    typer.echo(f"wrote {len(predictions)} predictions to {output}{where}")


def write_csv(path: Path, predictions) -> None:
    """One row per structure; stress columns only when some structure has a stress."""
    width = max(len(p.out) for p in predictions)
    out_names = ["out"] if width == 1 else [f"out_{i}" for i in range(width)]
    energies = any(p.energy is not None for p in predictions)
    stresses = any(p.stress is not None for p in predictions)
    header = ["id", "source", "frame", "n_atoms", "formula", *out_names]
    if energies:
        header += ["energy", "energy_per_atom", "fmax"]
    if stresses:
        header += [f"stress_{name}" for name, _, _ in VOIGT]
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(header)
    for p in predictions:
        formula = p.structure.to_ase().get_chemical_formula() if p.structure else ""
        row: list[object] = [p.label, p.source or "", "" if p.frame is None else p.frame,
                             p.n_atoms, formula, *(repr(float(v)) for v in p.out)]  # fmt: skip
        if energies:
            if p.energy is None or p.forces is None:
                row += ["", "", ""]
            else:
                fmax = float((p.forces**2).sum(axis=1).max() ** 0.5) if p.n_atoms else 0.0
                row += [repr(p.energy), repr(p.energy / p.n_atoms), repr(fmax)]
        if stresses:
            if p.stress is None:
                row += [""] * 6
            else:
                row += [repr(float(p.stress[i, j])) for _, i, j in VOIGT]
        writer.writerow(row)
    save_text(handle.getvalue(), path)


def write_forces(path: Path, fmt: str, predictions) -> None:
    """Per-atom forces: extxyz frames (ASE units, readable by ``ase.io.read``) or JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        records = [{
            "id": p.label, "n_atoms": p.n_atoms, "energy": p.energy,
            "forces": None if p.forces is None else p.forces.tolist(),
            "stress_GPa": None if p.stress is None else p.stress.tolist(),
        } for p in predictions]  # fmt: skip
        save_text(json.dumps(records, indent=1), path)
        return
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from alignn_core.ase import stress_to_ase

    frames = []
    for p in predictions:
        atoms = p.structure.to_ase()
        atoms.info["id"] = p.label
        results = {"energy": p.energy, "forces": p.forces}
        if p.stress is not None:
            results["stress"] = stress_to_ase(p.stress)
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    text = io.StringIO()
    write(text, frames, format="extxyz")
    save_text(text.getvalue(), path)
