"""``alignn bench mlearn``: every folder x variant x seed x precision, trained and reported.

Everything that can be wrong with the inputs (folders, variants, settings, finished runs with
other settings) fails before the first run starts; a run that fails while training is recorded
and the others continue.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alignn_core import __version__
from alignn_core.bench import mlearn, report
from alignn_core.bench.runner import (
    RunSpec,
    TestSetEvaluator,
    evaluates_eps,
    execute,
    run_state,
)


@dataclass
class BenchSettings:
    folders: list[Path]
    output: Path
    variants: list[mlearn.Variant]
    seeds: list[int] = field(default_factory=lambda: [0])
    precisions: list[str] = field(default_factory=lambda: ["float32"])
    val_fraction: float = 0.1
    split_seed: int = 0
    max_train: int | None = None
    max_test: int | None = None
    preset: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sets: dict[str, Any] = field(default_factory=dict)
    eval_eps: list[float] = field(default_factory=list)
    device: str | None = None
    overwrite: bool = False


def machine_info(device: str | None) -> dict:
    import torch

    from alignn_core.training.trainer import resolve_device

    resolved = resolve_device(device)
    name = str(resolved)
    if resolved.type == "cuda":
        name += f" ({torch.cuda.get_device_name(resolved)})"
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": name,
    }


def eps_key(eps: float) -> str:
    return format(eps, "g")


def run_mlearn(settings: BenchSettings, console: Console) -> dict:
    """Run the benchmark; returns the report written to ``results.json``."""
    folders = [mlearn.read_folder(path) for path in settings.folders]
    mlearn.assign_labels(folders)
    prepared = []
    for folder in folders:
        split = mlearn.carve_split(
            folder,
            settings.val_fraction,
            settings.split_seed,
            settings.max_train,
            settings.max_test,
        )
        base = mlearn.base_config(folder.upstream, settings.preset, settings.options)
        configs = [
            mlearn.variant_config(base, v, settings.sets, split, folder.label)
            for v in settings.variants
        ]
        prepared.append((folder, split, configs))
    mlearn.check_model_sets(settings.sets, settings.variants)
    for text in dict.fromkeys(w for _, _, configs in prepared for c in configs for w in c.warnings):
        console.print(f"[bold yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)

    output = settings.output
    elements, specs = [], []
    for folder, split, configs in prepared:
        data_dir = output / "data" / folder.label
        description = mlearn.write_derived(folder, split, data_dir)
        first = configs[0].config
        pool = split.train + split.val
        elements.append(
            {
                "label": folder.label,
                "folder": str(folder.path),
                "elements": folder.elements,
                "data_dir": str(data_dir),
                "split": description,
                "baselines": report.baselines(
                    folder.records, pool, split.test, first.target_key, first.force_key
                ),
                "variants": {
                    c.variant.name: {
                        "config": c.config.model_dump(mode="json"),
                        "dropped_model_fields": c.dropped,
                        "ignored_set": c.ignored_sets,
                    }
                    for c in configs
                },
            }
        )
        train_atoms = sum(len(folder.records[i]["atoms"]["elements"]) for i in split.train)
        for variant_cfg in configs:
            for seed in settings.seeds:
                for precision in settings.precisions:
                    run_dir = (
                        output
                        / "runs"
                        / folder.label
                        / variant_cfg.variant.name
                        / f"seed{seed}-{precision}"
                    )
                    specs.append(
                        RunSpec(
                            element=folder.label,
                            variant=variant_cfg.variant.name,
                            seed=seed,
                            precision=precision,
                            run_dir=run_dir,
                            data_dir=data_dir,
                            config=mlearn.run_config(variant_cfg, seed, precision, run_dir),
                            train_atoms=train_atoms,
                        )
                    )
    states = [run_state(spec, settings.overwrite) for spec in specs]

    result: dict[str, Any] = {
        "benchmark": "mlearn",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "alignn_version": __version__,
        "machine": machine_info(settings.device),
        "settings": {
            "val_fraction": settings.val_fraction,
            "split_seed": settings.split_seed,
            "max_train": settings.max_train,
            "max_test": settings.max_test,
            "preset": settings.preset,
            "preset_values": mlearn.PRESETS.get(settings.preset or "", {}),
            "options": settings.options,
            "set": settings.sets,
            "seeds": settings.seeds,
            "precision": settings.precisions,
            "eval_eps": settings.eval_eps,
            "device": settings.device,
            "selection": "best epoch on the carved validation set",
            "energy_unit": "meV/atom (id_prop.json energies are per atom)",
            "force_unit": "eV/A, MAE over all force components",
        },
        "variants": [
            {"name": v.name, "builtin": v.builtin, "model": v.model_name, "overrides": v.describe()}
            for v in settings.variants
        ],
        "elements": elements,
        "runs": [],
    }
    counts = " x ".join(
        f"{n} {what}"
        for n, what in (
            (len(folders), "folders"),
            (len(settings.variants), "variants"),
            (len(settings.seeds), "seeds"),
            (len(settings.precisions), "precisions"),
        )
    )
    console.print(
        escape(f"mlearn benchmark: {counts} = {len(specs)} runs -> {output}"), highlight=False
    )
    evaluator = TestSetEvaluator(settings.device) if settings.eval_eps else None
    try:
        for number, (spec, state) in enumerate(zip(specs, states, strict=True), start=1):
            console.rule(f"[bold]run {number}/{len(specs)}: {spec.key}")
            note = {
                "reuse": "finished in an earlier invocation with these settings: reused",
                "resume": "interrupted earlier with these settings: resuming",
                "restart": "interrupted earlier with other settings: starting again",
            }.get(state)
            if note:
                console.print(escape(f"{spec.run_dir}: {note}"), highlight=False, soft_wrap=True)
            run = execute(
                spec, state, console=console, device=settings.device, overwrite=settings.overwrite
            )
            if evaluator is not None and run["status"] != "failed" and evaluates_eps(spec.config):
                run["trained_eps"] = spec.config.model.node_update_eps
                run["eval_eps"] = {}
                for eps in settings.eval_eps:
                    try:
                        values = evaluator.evaluate(spec, {"node_update_eps": eps})
                    except Exception as exc:  # recorded as NaN, the benchmark goes on
                        values = {
                            report.ENERGY: math.nan,
                            report.FORCE: math.nan,
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    run["eval_eps"][eps_key(eps)] = values
            result["runs"].append(run)
            _print_run(console, run)
            report.write_results(output, result)
    finally:
        report.write_results(output, result)
    _print_table(console, report.aggregate(result["runs"]))
    console.print(
        escape(f"results in {output / 'results.md'} and {output / 'results.json'}"),
        highlight=False,
    )
    return result


def _print_run(console: Console, run: dict) -> None:
    if run["status"] == "failed":
        console.print(
            f"[bold red]failed:[/] {escape(run['error'])}", highlight=False, soft_wrap=True
        )
        return
    line = (
        f"test energy MAE {report.fmt_value(run[report.ENERGY], 2)} meV/atom, force MAE "
        f"{report.fmt_value(run[report.FORCE], 4)} eV/Å (best epoch {run['best_epoch']} of "
        f"{run['epochs_run']})"
    )
    for eps, values in run.get("eval_eps", {}).items():
        line += (
            f"; eps {eps}: {report.fmt_value(values[report.FORCE], 4)} eV/Å, "
            f"{report.fmt_value(values[report.ENERGY], 1)} meV/atom"
        )
    console.print(line, highlight=False, soft_wrap=True)


def _print_table(console: Console, rows: list[dict]) -> None:
    table = Table(title="mlearn benchmark: test MAEs (mean ± std over seeds)")
    for column in ("element", "variant", "precision", "energy meV/atom", "force eV/Å", "seeds ok"):
        table.add_column(column, justify="left" if column in ("element", "variant") else "right")
    for row in rows:
        table.add_row(
            row["element"],
            row["variant"],
            row["precision"],
            report.mean_spread(row[report.ENERGY], 1),
            report.mean_spread(row[report.FORCE], 4),
            f"{row['n_ok']}/{len(row['seeds'])}",
        )
    console.print(table)
