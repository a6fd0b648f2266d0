"""Training runs of the benchmark and re-evaluation of their weights.

Each (element, variant, seed, precision) trains in its own folder with the normal
:class:`~alignn_core.training.trainer.Trainer`: a finished folder is reused (when its config is
the one asked for), an interrupted one resumed, so a benchmark can be re-run after a crash or
extended with more seeds without retraining what is done.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignn_core.errors import ModelError, UserError

IGNORED_KEYS = ("output_dir", "resume_checkpoint", "progress")
"""Config fields that may differ between a finished run and the same run asked for again."""


@dataclass
class RunSpec:
    element: str
    variant: str
    seed: int
    precision: str
    config: Any
    run_dir: Path
    data_dir: Path
    train_atoms: int

    @property
    def key(self) -> str:
        return f"{self.element} · {self.variant} · seed {self.seed} · {self.precision}"


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_difference(run_dir: Path, config) -> str | None:
    """None when ``run_dir/config.json`` is ``config`` (up to :data:`IGNORED_KEYS`), else the
    first differing field as ``key: old here, new now``."""
    try:
        old = _flatten(json.loads((run_dir / "config.json").read_text()))
    except (OSError, json.JSONDecodeError):
        return "config.json is missing or unreadable"
    new = _flatten(config.model_dump(mode="json"))
    for key in sorted(set(old) | set(new)):
        if key in IGNORED_KEYS:
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            return f"{key}: {old.get(key, '<absent>')!r} there, {new.get(key, '<absent>')!r} now"
    return None


def run_state(spec: RunSpec, overwrite: bool) -> str:
    """``reuse`` (finished, same config), ``resume`` (interrupted, same config), ``restart``
    (interrupted, other config: its epochs are replaced) or ``new``.

    A finished run with another config is a :class:`UserError`: retraining it silently would
    lose it, reusing it would report numbers for settings that were not asked for.
    """
    from alignn_core.training.trainer import FINISHED_MARKER

    run_dir = spec.run_dir
    if overwrite:
        return "new"
    if (run_dir / FINISHED_MARKER).exists():
        difference = config_difference(run_dir, spec.config)
        if difference:
            raise UserError(
                f"{run_dir}: holds a finished run with other settings "
                f"({difference}); use another --output, or --overwrite to "
                "retrain"
            )
        return "reuse"
    if (run_dir / "current_state.pt").exists():  # interrupted: resume it, or start again
        return "resume" if config_difference(run_dir, spec.config) is None else "restart"
    return "new"


def execute(spec: RunSpec, state: str, *, console, device: str | None, overwrite: bool) -> dict:
    """Train (or reuse, or resume) one run; never raises for a failed run: the result's
    ``status`` is ``ok``, ``nan`` (non-finite metrics or no epoch improved) or ``failed``."""
    from alignn_core.training.trainer import Trainer

    result: dict[str, Any] = {
        "element": spec.element,
        "variant": spec.variant,
        "seed": spec.seed,
        "precision": spec.precision,
        "run_dir": str(spec.run_dir),
        "reused": state == "reuse",
        "resumed": state == "resume",
        "status": "ok",
        "error": None,
    }
    if state != "reuse":
        config = spec.config
        if state == "resume":
            config = config.model_copy(deep=True)
            config.resume_checkpoint = True
        try:
            Trainer(
                config,
                root_dir=spec.data_dir,
                output_dir=spec.run_dir,
                console=console,
                device=device,
                overwrite=overwrite or state == "restart",
            ).run()
        except Exception as exc:  # one failed run must not stop the benchmark
            result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            return result
    try:
        result.update(read_run(spec))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        result.update(status="failed", error=f"cannot read the run's results: {exc}")
        return result
    values = [result["test_energy_mae_meV_per_atom"], result["test_force_mae_eV_per_A"]]
    if not result["best_epoch"] or any(v is None or not math.isfinite(v) for v in values):
        result["status"] = "nan"
    return result


def read_run(spec: RunSpec) -> dict:
    """Metrics of a finished run folder, in benchmark units.

    mlearn energies are per atom and the graph target is the per-atom energy
    (``energy_mult_natoms``), so the trainer's ``target_mae`` (eV) x 1000 is meV/atom; a
    ``target_multiplication_factor`` is divided out. Forces: MAE over all components, eV/Å.
    """
    from alignn_core.training.trainer import FINISHED_MARKER

    summary = json.loads((spec.run_dir / FINISHED_MARKER).read_text())
    metrics = summary.get("metrics", {})
    scale = spec.config.target_multiplication_factor or 1.0

    def pick(split: str, key: str, factor: float) -> float | None:
        value = metrics.get(split, {}).get(key)
        return None if value is None else float(value) * factor

    history_path = spec.run_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    epoch_seconds = sum(float(h.get("seconds", 0.0)) for h in history)
    return {
        "test_energy_mae_meV_per_atom": pick("test", "target_mae", 1000.0 / scale),
        "test_force_mae_eV_per_A": pick("test", "forces_mae", 1.0),
        "val_energy_mae_meV_per_atom": pick("val", "target_mae", 1000.0 / scale),
        "val_force_mae_eV_per_A": pick("val", "forces_mae", 1.0),
        "epochs_run": int(summary.get("epochs_run", len(history))),
        "best_epoch": int(summary.get("best_epoch", 0)),
        "wall_time_s": float(summary.get("seconds", float("nan"))),
        "train_atoms": spec.train_atoms,
        "train_atoms_per_s": (
            spec.train_atoms * len(history) / epoch_seconds if epoch_seconds > 0 else None
        ),
    }


def evaluates_eps(config) -> bool:
    """Runs whose node update is upstream's gated mean (the one with the epsilon channel)."""
    model = config.model
    return getattr(model, "node_update", None) == "upstream" and hasattr(model, "node_update_eps")


class TestSetEvaluator:
    """Evaluate a run's best weights on its test records with changed model fields (the same
    weights, e.g. another ``node_update_eps``); test graphs are built once per data folder and
    graph settings."""

    def __init__(self, device: str | None):
        from alignn_core.training.trainer import resolve_device

        self.device = resolve_device(device)
        self._datasets: dict[tuple, Any] = {}

    def _dataset(self, spec: RunSpec, config, backend):
        from alignn_core.io.id_prop import DataKeys, read_dataset
        from alignn_core.plugins import get_registry

        keys = DataKeys.from_config(config)
        key = (
            str(spec.data_dir),
            config.graph_settings.fingerprint(),
            keys,
            config.target_multiplication_factor,
            backend.name,
        )
        if key not in self._datasets:
            records = read_dataset(
                spec.data_dir, keys, config.model.loss_weights(), config.file_format
            )
            indices = range(len(records) - config.n_test, len(records))
            self._datasets[key] = (
                get_registry()
                .datasets["memory"]
                .open(
                    records,
                    indices=list(indices),
                    backend=backend,
                    settings=config.graph_settings,
                    split="test",
                    target_scale=config.target_multiplication_factor,
                )
            )
        return self._datasets[key]

    def evaluate(self, spec: RunSpec, model_changes: dict[str, Any]) -> dict[str, float]:
        """Test energy MAE (meV/atom) and force MAE (eV/Å); non-finite results stay NaN."""
        import torch
        from torch.utils.data import DataLoader

        from alignn_core.config.loader import load_config
        from alignn_core.data.samples import make_collate
        from alignn_core.plugins import get_registry
        from alignn_core.training.atomic import load_torch
        from alignn_core.training.evaluation import evaluate
        from alignn_core.training.outputs import split_metrics
        from alignn_core.training.trainer import DTYPES

        data = spec.config.model_dump(mode="json")
        data["model"].update(model_changes)
        config = load_config(data).config
        registry = get_registry()
        plugin = registry.get("models", config.model.name)
        backend = registry.graph_backends[plugin.backend]
        weights_path = spec.run_dir / "best_model.pt"
        if not weights_path.exists():
            raise ModelError(f"{weights_path}: not found (no epoch improved the validation loss)")
        dtype = DTYPES[config.dtype]
        previous = torch.get_default_dtype()
        torch.set_default_dtype(
            dtype if dtype.is_floating_point and dtype.itemsize >= 4 else torch.float32
        )
        try:
            model = plugin.build(config.model)
        finally:
            torch.set_default_dtype(previous)
        model.load_state_dict(load_torch(weights_path))
        model = model.to(self.device, dtype)
        loader = DataLoader(
            self._dataset(spec, config, backend),
            batch_size=config.batch_size,
            collate_fn=make_collate(backend.collate, dtype),
        )
        _, rows = evaluate(
            model, loader, self.device, config.model.loss_weights(), config.criterion, collect=True
        )
        metrics = split_metrics(rows)
        scale = config.target_multiplication_factor or 1.0
        return {
            "test_energy_mae_meV_per_atom": metrics["target_mae"] * 1000.0 / scale,
            "test_force_mae_eV_per_A": metrics.get("forces_mae", float("nan")),
        }
