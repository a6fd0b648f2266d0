"""``alignn parity CONFIG...``: the DGL model against the pure model, on the same inputs.

Two checks per config, both on configurations where the two models mean the same thing (ZBL off,
``conv_type`` alignn: the DGL model has neither), so any difference is numerical:

(a) **evaluation**: one set of weights (seeded init, LayerNorm affines randomised so that no
    layer is an identity) is loaded into both models; both evaluate the same structures in the
    same batches, with forces and stress forced on. Reported: max |Δ| of energy, forces and
    stress, and that over the largest |value| (target: <= 1e-5 in float32).
(b) **training**: both are trained for a few epochs from the same seed with the ordinary
    trainer (same split, same shuffling, same initial weights because both models create their
    modules in the same order). Reported: per-epoch |Δ| of the train and validation loss
    (target: <= 0.04, the figure upstream publishes for its own DGL-vs-pure comparison).

The default is a small model (see :data:`SMALL_MODEL`) so the whole check takes about a minute on
two cores; ``--full-model`` keeps the config's sizes. The exit code is 1 when a target is missed.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from alignn_core.config.loader import load_config, read_json
from alignn_core.errors import ConfigError

PURE = "alignn_atomwise_pure"
DGL = "alignn_atomwise"
PURE_ONLY_FIELDS = ("three_body_cutoff", "use_zbl", "zbl_cutoff", "conv_type", "num_heads",
                    "node_update", "node_update_norm", "node_update_eps")  # fmt: skip
"""Fields of the pure model's config that the DGL model's config does not have."""

SMALL_MODEL = {"alignn_layers": 2, "gcn_layers": 1, "hidden_features": 32,
               "embedding_features": 32}  # fmt: skip
"""Model-size overrides for a quick check: every kind of layer stays, only narrower/fewer."""

RUN_OVERRIDES = {"use_lmdb": False, "write_checkpoint": False, "write_predictions": False,
                 "store_outputs": False, "progress": False, "n_early_stopping": None}  # fmt: skip
"""Training settings that only concern outputs: parity needs the history, nothing else."""

EVAL_TOLERANCE = 1e-5
LOSS_TOLERANCE = 0.04


@dataclass
class EvalRow:
    """One quantity of check (a): the largest deviation and the scale it is relative to."""

    config: str
    quantity: str
    max_abs_diff: float
    max_abs_value: float
    relative: float
    ok: bool


@dataclass
class LossRow:
    """One epoch of check (b)."""

    config: str
    epoch: int
    train_pure: float
    train_dgl: float
    val_pure: float
    val_dgl: float
    max_abs_diff: float
    ok: bool


@dataclass
class ParityReport:
    evaluation: list[EvalRow] = field(default_factory=list)
    training: list[LossRow] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(row.ok for row in [*self.evaluation, *self.training])


# ----------------------------------------------------------------------------- configs
def paired_configs(path: Path, *, small: bool, epochs: int | None = None) -> tuple[Any, Any]:
    """The config at ``path`` as a pure and a DGL config that mean the same model.

    Both get every resolved field of the source model (so a default that differs between the
    two classes, like ``penalty_factor``, is pinned to the source's value); the pure one gets
    ``use_zbl: false``. A source that needs ZBL or another ``conv_type`` cannot be compared.
    """
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"{path}: expected a JSON object with a 'model' object")
    model = dict(data["model"])
    if small:
        model.update(SMALL_MODEL)
    top = {**data, **RUN_OVERRIDES}
    if epochs is not None:
        top["epochs"] = epochs
    source = load_config({**top, "model": model}).config.model
    fields = source.model_dump()
    name = fields.pop("name")
    if name not in (PURE, DGL):
        raise ConfigError(f"{path}: parity compares {PURE} and {DGL}; model.name is {name!r}")
    if name == PURE:
        if source.conv_type != "alignn":
            raise ConfigError(f"{path}: conv_type {source.conv_type!r} has no DGL model; "
                              "parity needs conv_type 'alignn'")  # fmt: skip
        if source.node_update != "upstream" or source.node_update_eps != 1e-6:
            raise ConfigError(f"{path}: the DGL model has upstream's node update (gated mean, "
                              "eps 1e-6); parity needs node_update 'upstream' with "
                              "node_update_eps 1e-6")  # fmt: skip
        if source.use_zbl:
            raise ConfigError(f"{path}: use_zbl is true but the DGL model has no ZBL term; "
                              "set use_zbl false (or leave it unset) to compare")  # fmt: skip
    common = {key: value for key, value in fields.items() if key not in PURE_ONLY_FIELDS}
    pure = load_config({**top, "model": {**common, "name": PURE, "use_zbl": False}}).config
    dgl = load_config({**top, "model": {**common, "name": DGL}}).config
    return pure, dgl


# ----------------------------------------------------------------------------- (a) evaluation
def _randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """LayerNorm weights 1 + N(0, 0.1), biases N(0, 0.1): a fresh model's identity affines would
    leave a whole class of parameter-mapping mistakes invisible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                shape = module.weight.shape
                module.weight.copy_(1 + 0.1 * torch.randn(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def compare_evaluation(
    label: str,
    pure_config: Any,
    dgl_config: Any,
    root: Path,
    *,
    dtype: str,
    batch_size: int,
    max_structures: int | None,
    seed: int,
    tolerance: float,
) -> list[EvalRow]:
    """Check (a) for one config; see the module docstring."""
    from alignn_torch.graphs.backend import TorchGraphBackend
    from alignn_torch.model import ALIGNNAtomWisePure

    from alignn_core.io.id_prop import DataKeys, read_dataset
    from alignn_dgl.graphs import DGLGraphBackend
    from alignn_dgl.model import ALIGNNAtomWise

    records = read_dataset(root, DataKeys.from_config(pure_config),
                           pure_config.model.loss_weights(), pure_config.file_format)  # fmt: skip
    structures = [record.structure for record in records[:max_structures]]
    # graphs in the evaluation dtype too: float64 models on float32 geometry would test little
    settings = pure_config.graph_settings.model_copy(update={"dtype": dtype})
    float_type = _dtype(dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(float_type)  # as the trainer: RBF gamma depends on the build dtype
    try:
        torch.manual_seed(seed)
        pure = ALIGNNAtomWisePure(pure_config.model)
        dgl_model = ALIGNNAtomWise(dgl_config.model)
    finally:
        torch.set_default_dtype(previous)
    _randomise_norms(pure, seed)
    dgl_model.load_state_dict(pure.state_dict(), strict=True)
    pure, dgl_model = pure.to(float_type).eval(), dgl_model.to(float_type).eval()
    torch_backend, dgl_backend = TorchGraphBackend(), DGLGraphBackend()

    reference: dict[str, list[torch.Tensor]] = {"energy": [], "forces": [], "stress": []}
    other: dict[str, list[torch.Tensor]] = {"energy": [], "forces": [], "stress": []}
    keys = {"energy": "energy", "forces": "grad", "stress": "stresses"}
    with torch.no_grad():
        for chunk in _chunks(structures, batch_size):
            graph = torch_backend.collate([torch_backend.build(s, settings) for s in chunk])
            pair = dgl_backend.collate([dgl_backend.build(s, settings) for s in chunk])
            expected = pure(graph, compute_stress=True)
            got = dgl_model(pair, compute_stress=True)
            for quantity, key in keys.items():
                reference[quantity].append(expected[key].reshape(-1))
                other[quantity].append(got[key].reshape(-1))
    rows = []
    for quantity in keys:
        ref = torch.cat(reference[quantity]).double()
        new = torch.cat(other[quantity]).double()
        diff = float((ref - new).abs().max())
        scale = float(ref.abs().max())
        relative = diff / scale if scale > 0 else diff
        rows.append(EvalRow(label, quantity, diff, scale, relative, relative <= tolerance))
    return rows


# ----------------------------------------------------------------------------- (b) training
def train_history(config: Any, root: Path, device: str) -> list[dict[str, Any]]:
    """Train with the ordinary trainer in a scratch directory; its per-epoch history."""
    from alignn_core.training.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="alignn-parity-") as scratch:
        out = Path(scratch) / "run"
        quiet = Console(file=io.StringIO())
        Trainer(config, root_dir=root, output_dir=out, console=quiet, device=device).run()
        return json.loads((out / "history.json").read_text())


def compare_training(
    label: str, pure_config: Any, dgl_config: Any, root: Path, *, device: str, tolerance: float
) -> list[LossRow]:
    """Check (b) for one config; see the module docstring."""
    pure = train_history(pure_config, root, device)
    dgl = train_history(dgl_config, root, device)
    rows = []
    for a, b in zip(pure, dgl, strict=True):
        diff = max(abs(a["train"]["loss"] - b["train"]["loss"]),
                   abs(a["val"]["loss"] - b["val"]["loss"]))  # fmt: skip
        rows.append(LossRow(label, a["epoch"], a["train"]["loss"], b["train"]["loss"],
                            a["val"]["loss"], b["val"]["loss"], diff,
                            diff <= tolerance))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- report
def versions() -> dict[str, str]:
    """Versions that decide the numbers (recorded with every parity table)."""
    import platform

    import numpy

    from alignn_dgl.availability import import_dgl

    return {"python": platform.python_version(), "torch": torch.__version__,
            "dgl": import_dgl().__version__, "numpy": numpy.__version__}  # fmt: skip


def print_report(report: ParityReport, console: Console) -> None:
    """The two tables (rich); the caller decides the exit code."""
    table = Table(title="(a) same weights, same structures: DGL vs pure")
    for column in ("config", "quantity", "max |Δ|", "max |value|", "relative", "target", "ok"):
        table.add_column(column, justify="left" if column in ("config", "quantity") else "right")
    for row in report.evaluation:
        table.add_row(row.config, row.quantity, f"{row.max_abs_diff:.3g}",
                      f"{row.max_abs_value:.3g}", f"{row.relative:.3g}",
                      f"<= {report.settings['eval_tolerance']:g}", _mark(row.ok))  # fmt: skip
    console.print(table)
    if report.training:
        table = Table(title="(b) same seed, trained: per-epoch loss, pure vs DGL")
        for column in ("config", "epoch", "train pure", "train dgl", "val pure", "val dgl",
                       "max |Δ loss|", "target", "ok"):  # fmt: skip
            table.add_column(column, justify="left" if column == "config" else "right")
        for row in report.training:
            table.add_row(row.config, str(row.epoch), f"{row.train_pure:.6g}",
                          f"{row.train_dgl:.6g}", f"{row.val_pure:.6g}", f"{row.val_dgl:.6g}",
                          f"{row.max_abs_diff:.3g}", f"<= {report.settings['loss_tolerance']:g}",
                          _mark(row.ok))  # fmt: skip
        console.print(table)
    described = ", ".join(f"{key} {value}" for key, value in report.versions.items())
    console.print(f"versions: {described}", highlight=False)
    console.print("parity: " + ("all targets met" if report.ok else "TARGET MISSED"),
                  highlight=False)  # fmt: skip


def _mark(ok: bool) -> str:
    return "yes" if ok else "NO"


def run_parity(
    configs: list[Path],
    *,
    root_dir: Path | None = None,
    epochs: int = 3,
    small: bool = True,
    train: bool = True,
    dtype: str | None = None,
    batch_size: int = 4,
    max_structures: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    eval_tolerance: float = EVAL_TOLERANCE,
    loss_tolerance: float = LOSS_TOLERANCE,
) -> ParityReport:
    """Both checks for every config; the library entry point behind the command."""
    from alignn_dgl.availability import import_dgl

    import_dgl()  # one-line install hint instead of an ImportError deep inside
    report = ParityReport(versions=versions(), settings={
        "epochs": epochs, "small_model": SMALL_MODEL if small else None, "device": device,
        "eval_tolerance": eval_tolerance, "loss_tolerance": loss_tolerance,
        "batch_size": batch_size, "seed": seed, "eval_dtype": dtype or "the config's",
    })  # fmt: skip
    for path in configs:
        pure_config, dgl_config = paired_configs(path, small=small, epochs=epochs)
        root = root_dir if root_dir is not None else path.parent
        label = path.parent.name or str(path)
        eval_dtype = dtype or pure_config.dtype
        _dtype(eval_dtype)  # a one-line error before any work
        report.evaluation += compare_evaluation(
            label, pure_config, dgl_config, root, dtype=eval_dtype, batch_size=batch_size,
            max_structures=max_structures, seed=seed, tolerance=eval_tolerance,
        )  # fmt: skip
        if train:
            report.training += compare_training(
                label, pure_config, dgl_config, root, device=device, tolerance=loss_tolerance
            )
    return report


def _dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "float64": torch.float64}
    if name not in table:
        raise ConfigError(f"parity evaluates in float32 or float64, not {name!r}")
    return table[name]


def parity_command(
    configs: list[Path] = typer.Argument(..., metavar="CONFIG...", help="Run configs (JSON)."),
    root_dir: Path | None = typer.Option(
        None, "--root-dir", help="Data folder [default: each config's folder]."
    ),
    epochs: int = typer.Option(3, "--epochs", min=1, help="Epochs of the training check."),
    full_model: bool = typer.Option(
        False, "--full-model", help="Keep the config's model size (default: a small model)."
    ),
    no_train: bool = typer.Option(False, "--no-train", help="Only the evaluation check."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="Evaluation dtype, float32 or float64 [default: the config's]."
    ),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Evaluation batch size."),
    max_structures: int | None = typer.Option(
        None, "--structures", min=1, help="Evaluate at most this many structures per config."
    ),
    device: str = typer.Option("cpu", "--device", help="Training device."),
    eval_tolerance: float = typer.Option(EVAL_TOLERANCE, "--eval-tolerance"),
    loss_tolerance: float = typer.Option(LOSS_TOLERANCE, "--loss-tolerance"),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Compare the DGL model alignn_atomwise with alignn_atomwise_pure (needs DGL).

    Exit code 1 when a parity target is missed.
    """
    start = time.perf_counter()
    report = run_parity(
        configs, root_dir=root_dir, epochs=epochs, small=not full_model, train=not no_train,
        dtype=dtype, batch_size=batch_size, max_structures=max_structures, device=device,
        eval_tolerance=eval_tolerance, loss_tolerance=loss_tolerance,
    )  # fmt: skip
    report.settings["seconds"] = round(time.perf_counter() - start, 1)
    print_report(report, Console(width=max(Console().width, 120)))
    if json_path is not None:
        json_path.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2) + "\n")
    if not report.ok:
        raise typer.Exit(code=1)
