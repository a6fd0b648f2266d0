"""Files a run leaves behind: predictions (ours and upstream's formats) and history."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from alignn_core.training.atomic import save_json, save_text


def _floats(array) -> list:
    return np.asarray(array, dtype=float).tolist()


def write_predictions(output_dir: Path, split: str, rows: list[dict], classification: bool) -> None:
    """``predictions_<split>.csv`` (id, index, target(s), prediction(s)), and for force fields
    ``predictions_<split>.json`` with per-atom forces and stresses too."""
    if not rows:
        return
    width = len(rows[0]["target"])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if width == 1:
        writer.writerow(["id", "index", "target", "prediction"])
    else:
        writer.writerow(
            ["id", "index"] + [f"target_{k}" for k in range(width)]
            + [f"prediction_{k}" for k in range(len(rows[0]["prediction"]))]
        )  # fmt: skip
    for row in rows:
        prediction = row["prediction"]
        if classification:
            prediction = [int(np.argmax(prediction))]
        writer.writerow([row["id"], row["index"], *_floats(row["target"]), *_floats(prediction)])
    save_text(buffer.getvalue(), output_dir / f"predictions_{split}.csv")
    if "forces_prediction" in rows[0]:
        save_json(
            [
                {
                    "id": row["id"],
                    "index": row["index"],
                    "target": _floats(row["target"]),
                    "prediction": _floats(row["prediction"]),
                    "forces_target": _floats(row["forces_target"]),
                    "forces_prediction": _floats(row["forces_prediction"]),
                    **(
                        {
                            "stress_target": _floats(row["stress_target"]),
                            "stress_prediction": _floats(row["stress_prediction"]),
                        }
                        if "stress_prediction" in row
                        else {}
                    ),
                }
                for row in rows
            ],
            output_dir / f"predictions_{split}.json",
        )


def write_upstream_test_csv(output_dir: Path, rows: list[dict]) -> None:
    """``prediction_results_test_set.csv`` in upstream's layout (read by leaderboard scripts)."""
    lines = ["id,target,prediction"]
    lines += [f"{row['id']}, {row['target'][0]:6f}, {row['prediction'][0]:6f}" for row in rows]
    save_text("\n".join(lines) + "\n", output_dir / "prediction_results_test_set.csv")


def write_results_json(output_dir: Path, name: str, rows: list[dict]) -> None:
    """Upstream's ``{Train,Val,Test}_results.json``: per structure id, target and prediction."""
    entries = []
    for row in rows:
        entry = {"id": row["id"], "target_out": _floats(row["target"]),
                 "pred_out": _floats(row["prediction"])}  # fmt: skip
        if "forces_prediction" in row:
            entry["target_grad"] = _floats(row["forces_target"])
            entry["pred_grad"] = _floats(row["forces_prediction"])
        if "stress_prediction" in row:
            entry["target_stress"] = _floats(row["stress_target"])
            entry["pred_stress"] = _floats(row["stress_prediction"])
        entries.append(entry)
    save_json(entries, output_dir / f"{name}_results.json")


def split_metrics(rows: list[dict]) -> dict[str, float]:
    """MAEs over a split: graph target, force components, stress components."""
    if not rows:
        return {}
    metrics = {
        "target_mae": float(np.mean([np.abs(r["prediction"] - r["target"]).mean() for r in rows]))
    }
    if "forces_prediction" in rows[0]:
        diffs = np.concatenate(
            [(r["forces_prediction"] - r["forces_target"]).ravel() for r in rows]
        )
        metrics["forces_mae"] = float(np.abs(diffs).mean())
    if "stress_prediction" in rows[0]:
        diffs = np.concatenate(
            [(r["stress_prediction"] - r["stress_target"]).ravel() for r in rows]
        )
        metrics["stress_mae"] = float(np.abs(diffs).mean())
    return metrics
