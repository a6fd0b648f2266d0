"""``results.json`` and ``results.md`` of a benchmark: per-run records, and per element x
variant x precision the mean and spread over seeds, baselines and robustness columns."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from alignn_core.training.atomic import save_json, save_text

ENERGY = "test_energy_mae_meV_per_atom"
FORCE = "test_force_mae_eV_per_A"


def baselines(
    records: list[dict], train: list[int], test: list[int], target_key: str, force_key: str
) -> dict:
    """Constant predictor (mean per-atom energy of the training-side records ``train``) and zero
    force, on the test records. mlearn stores energies per atom."""
    mean = float(np.mean([float(records[i][target_key]) for i in train]))
    energy = float(np.mean([abs(float(records[i][target_key]) - mean) for i in test]))
    forces = np.concatenate([np.asarray(records[i][force_key], float).ravel() for i in test])
    return {
        "train_mean_energy_eV_per_atom": mean,
        "constant_energy_mae_meV_per_atom": energy * 1000.0,
        "zero_force_mae_eV_per_A": float(np.abs(forces).mean()) if forces.size else None,
        "test_force_components": int(forces.size),
    }


def _stats(values: list[float | None]) -> dict:
    """Mean and sample standard deviation over the finite values; counts the others."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": float(np.mean(finite)) if finite else float("nan"),
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "n": len(finite),
        "n_nonfinite": len(values) - len(finite),
        "values": [v if v is None else float(v) for v in values],
    }


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (element, variant, precision), in the order runs first appear."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["element"], run["variant"], run["precision"]), []).append(run)
    rows = []
    for (element, variant, precision), members in groups.items():
        done = [r for r in members if r["status"] != "failed"]
        row: dict[str, Any] = {
            "element": element,
            "variant": variant,
            "precision": precision,
            "seeds": [r["seed"] for r in members],
            "n_ok": sum(r["status"] == "ok" for r in members),
            "n_nan": sum(r["status"] == "nan" for r in members),
            "n_failed": sum(r["status"] == "failed" for r in members),
            "n_reused": sum(bool(r.get("reused")) for r in members),
            ENERGY: _stats([r.get(ENERGY) for r in done]),
            FORCE: _stats([r.get(FORCE) for r in done]),
            "best_epoch": [r.get("best_epoch") for r in done],
            "epochs_run": [r.get("epochs_run") for r in done],
            "wall_time_s": _stats([r.get("wall_time_s") for r in done])["mean"],
            "train_atoms_per_s": _stats([r.get("train_atoms_per_s") for r in done])["mean"],
        }
        eps_keys = list(dict.fromkeys(k for r in done for k in r.get("eval_eps", {})))
        if eps_keys:
            row["eval_eps"] = {
                eps: {
                    ENERGY: _stats([r.get("eval_eps", {}).get(eps, {}).get(ENERGY) for r in done]),
                    FORCE: _stats([r.get("eval_eps", {}).get(eps, {}).get(FORCE) for r in done]),
                }
                for eps in eps_keys
            }
            row["trained_eps"] = sorted({r["trained_eps"] for r in done if "trained_eps" in r})
        rows.append(row)
    return rows


def write_results(output: Path, report: dict) -> None:
    """``results.json`` (everything) and ``results.md`` (the tables)."""
    report = {**report, "summary": aggregate(report["runs"])}
    save_json(report, output / "results.json")
    save_text(markdown(report), output / "results.md")


# -- markdown ------------------------------------------------------------------------------------
def fmt_value(value: float | None, digits: int) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        return "NaN"
    return f"{value:.{digits}f}"


def mean_spread(stats: dict, digits: int) -> str:
    if stats["n"] == 0:
        return "NaN" if stats["n_nonfinite"] else ""
    text = fmt_value(stats["mean"], digits)
    if stats["std"] is not None:
        text += f" ± {fmt_value(stats['std'], digits)}"
    if stats["n_nonfinite"]:
        text += f" ({stats['n_nonfinite']} NaN)"
    return text


def _relative(a: dict, b: dict) -> str:
    """Change of mean ``b`` relative to mean ``a``, in percent."""
    if not (a["n"] and b["n"]) or a["mean"] == 0:
        return ""
    return f"{100.0 * (b['mean'] - a['mean']) / a['mean']:+.1f}%"


def markdown(report: dict) -> str:
    settings, machine = report["settings"], report["machine"]
    rows = report["summary"]
    lines = [
        "# mlearn benchmark",
        "",
        f"{report['date']} · alignn {report['alignn_version']} · torch {machine['torch']} · "
        f"{machine['device']} · {machine['cpu_count']} CPUs, {machine['torch_threads']} torch "
        f"threads · {machine['platform']}",
        "",
        "**Protocol.** The model of each run is selected (best epoch) on a validation set carved "
        f"out of the training records: a random {settings['val_fraction']:g} of them, seed "
        f"{settings['split_seed']}, the same for every variant and seed; it trains on the rest. "
        "Headline numbers are that model's MAEs on the test records, which take no part in "
        "training or selection. Upstream's `n_val` records (a copy of the test set) are not used.",
        "",
        f"**Settings.** preset {settings['preset'] or 'none'}; options "
        f"{_options_text(settings['options'])}; --set {_options_text(settings['set'])}; "
        f"seeds {', '.join(map(str, settings['seeds']))}; precision "
        f"{', '.join(settings['precision'])}.",
        "",
        "**Variants.** "
        + "; ".join(f"`{v['name']}`: {v['overrides']}" for v in report["variants"]),
        "",
        "## Test MAEs (mean ± sample std over seeds)",
        "",
        "| element | variant | precision | energy MAE (meV/atom) | force MAE (eV/Å) | "
        "best epoch / epochs | wall time (s) | train atoms/s | seeds ok | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs_by_group: dict[tuple, list[dict]] = {}
    for run in report["runs"]:
        runs_by_group.setdefault((run["element"], run["variant"], run["precision"]), []).append(run)
    for row in rows:
        members = runs_by_group[(row["element"], row["variant"], row["precision"])]
        epochs = ", ".join(
            f"{b}/{e}" for b, e in zip(row["best_epoch"], row["epochs_run"], strict=True)
        )
        notes = []
        if row["n_reused"]:
            notes.append(f"{row['n_reused']} reused from an earlier invocation")
        if row["n_nan"]:
            notes.append(f"{row['n_nan']} NaN")
        for run in members:
            if run["status"] == "failed":
                notes.append(f"seed {run['seed']} failed: {_short(run['error'])}")
        lines.append(
            f"| {row['element']} | {row['variant']} | {row['precision']} | "
            f"{mean_spread(row[ENERGY], 1)} | {mean_spread(row[FORCE], 4)} | {epochs} | "
            f"{fmt_value(row['wall_time_s'], 0)} | {fmt_value(row['train_atoms_per_s'], 0)} | "
            f"{row['n_ok']}/{len(row['seeds'])} | {'; '.join(notes)} |"
        )
    lines += [
        "",
        "## Baselines on the test records",
        "",
        "| element | constant energy (meV/atom) | zero force (eV/Å) | train / val / test records "
        "| folder |",
        "|---|---|---|---|---|",
    ]
    for element in report["elements"]:
        base, counts = element["baselines"], element["split"]["counts"]
        lines.append(
            f"| {element['label']} | {fmt_value(base['constant_energy_mae_meV_per_atom'], 1)} | "
            f"{fmt_value(base['zero_force_mae_eV_per_A'], 3)} | "
            f"{counts['train']} / {counts['val']} / {counts['test']} | `{element['folder']}` |"
        )
    lines += _eps_table(rows) + _precision_table(rows)
    lines += [
        "",
        "## Validation records",
        "",
        "0-based positions in each folder's `id_prop.json` (ids in `results.json`).",
        "",
    ]
    for element in report["elements"]:
        split = element["split"]
        lines.append(
            f"- {element['label']} (split seed {split['split_seed']}): "
            f"{', '.join(map(str, split['val_indices']))}"
        )
    lines.append("")
    return "\n".join(lines)


def _eps_table(rows: list[dict]) -> list[str]:
    eps_rows = [r for r in rows if r.get("eval_eps")]
    if not eps_rows:
        return []
    keys = list(dict.fromkeys(k for r in eps_rows for k in r["eval_eps"]))
    lines = [
        "",
        "## Robustness: node_update_eps changed at evaluation (same weights)",
        "",
        "Test force MAE (eV/Å) / energy MAE (meV/atom), mean over seeds; `as trained` is the "
        "headline column above.",
        "",
        "| element | variant | precision | as trained | "
        + " | ".join(f"eps {k}" for k in keys)
        + " |",
        "|---|---|---|---|" + "---|" * len(keys),
    ]
    for row in eps_rows:
        trained = ", ".join(f"{e:g}" for e in row.get("trained_eps", []))
        cells = [
            f"{mean_spread(row[FORCE], 4)} / {mean_spread(row[ENERGY], 1)}"
            + (f" (eps {trained})" if trained else "")
        ]
        for key in keys:
            entry = row["eval_eps"].get(key)
            cells.append(
                f"{mean_spread(entry[FORCE], 4)} / {mean_spread(entry[ENERGY], 1)}" if entry else ""
            )
        lines.append(
            f"| {row['element']} | {row['variant']} | {row['precision']} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _precision_table(rows: list[dict]) -> list[str]:
    by_key = {(r["element"], r["variant"], r["precision"]): r for r in rows}
    pairs = [
        (r, by_key[(r["element"], r["variant"], "bf16")])
        for r in rows
        if r["precision"] == "float32" and (r["element"], r["variant"], "bf16") in by_key
    ]
    if not pairs:
        return []
    lines = [
        "",
        "## Robustness: bf16 autocast vs float32 training",
        "",
        "Change of the mean test MAE when training under bf16 autocast (evaluation in float32).",
        "",
        "| element | variant | energy MAE change | force MAE change |",
        "|---|---|---|---|",
    ]
    for fp32, bf16 in pairs:
        lines.append(
            f"| {fp32['element']} | {fp32['variant']} | "
            f"{_relative(fp32[ENERGY], bf16[ENERGY])} | "
            f"{_relative(fp32[FORCE], bf16[FORCE])} |"
        )
    return lines


def _options_text(options: dict) -> str:
    given = {k: v for k, v in options.items() if v is not None}
    return ", ".join(f"{k}={v}" for k, v in given.items()) or "none"


def _short(text: str | None, limit: int = 120) -> str:
    text = (text or "").replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
