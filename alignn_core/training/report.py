"""A one-page PNG report: learning curves and parity plots (users would rather look than read)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from alignn_core.training.atomic import save_bytes


def write_report(path: Path, history: list[dict], predictions: dict[str, list[dict]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_forces = any(rows and "forces_prediction" in rows[0] for rows in predictions.values())
    panels = 3 if has_forces else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.5), constrained_layout=True)

    ax = axes[0]
    epochs = [h["epoch"] for h in history]
    for split in ("train", "val"):
        values = [h[split]["loss"] for h in history if split in h]
        if values:
            ax.plot(epochs[: len(values)], values, marker="o", ms=3, label=f"{split} loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if history and all(h["train"]["loss"] > 0 for h in history):
        ax.set_yscale("log")
    ax.set_title("Learning curves")
    ax.legend()

    _parity(axes[1], predictions, "target", "prediction", "Graph target")
    if has_forces:
        _parity(
            axes[2], predictions, "forces_target", "forces_prediction", "Force components (eV/Å)"
        )
    buffer = io.BytesIO()  # rendered in memory, then written atomically like every other output
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    save_bytes(buffer.getvalue(), path)
    return path


def _parity(ax, predictions: dict[str, list[dict]], target_key: str, pred_key: str, title: str):
    lows, highs = [], []
    for split, rows in predictions.items():
        if not rows or pred_key not in rows[0]:
            continue
        target = np.concatenate([np.ravel(r[target_key]) for r in rows])
        pred = np.concatenate([np.ravel(r[pred_key]) for r in rows])
        if pred.size != target.size:  # classification: argmax vs label
            continue
        mae = np.abs(pred - target).mean()
        ax.scatter(target, pred, s=8, alpha=0.6, label=f"{split} (MAE {mae:.3g})")
        lows.append(min(target.min(), pred.min()))
        highs.append(max(target.max(), pred.max()))
    if lows:
        lo, hi = min(lows), max(highs)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("reference")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    ax.legend(fontsize=8)
