"""Export a trained ``alignn_atomwise_pure`` (or ``alignn_atomwise_pure_smooth``) model to a
self-contained TorchScript file.

The file needs nothing but libtorch: weights, the scripted code, the atomic-number -> feature
table and the neighbour-list contract are inside it, and ``metadata.json`` (a TorchScript extra
file, i.e. ``<archive>/extra/metadata.json`` in the zip) says how to call it.

Export refuses, with one line and exit code 2, anything whose exported energy would differ
from eager mode: other models, classification/link/multi-output heads, and the ``k-nearest``
graph (its edges depend on shell completion, cutoff growth and canonisation that a host's
neighbour list cannot reproduce). What it accepts is checked: after writing, the file is
loaded back and compared with the eager model on a probe structure.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from alignn_torch.graphs.backend import build_graph
from alignn_torch.graphs.neighbors import PURE_TORCH_MIN_D2, TIE_TOLERANCE
from alignn_torch.graphs.strategies import RADIUS_GRAPH_MIN_DISTANCE, neighbor_list
from alignn_torch.model.alignn_atomwise_pure import ALIGNNAtomWisePure
from alignn_torch.model.alignn_atomwise_pure_smooth import ALIGNNAtomWisePureSmooth

from alignn_core.config import GraphSettings, load_config
from alignn_core.errors import UserError
from alignn_core.features import feature_table, supported_numbers
from alignn_core.plugins import get_registry
from alignn_core.structures import Structure
from alignn_core.training.atomic import load_torch
from alignn_core.units import EV_PER_A3_TO_GPA
from alignn_torchscript.module import ExportedALIGNN, ExportedALIGNNSmooth, NeighborContract

FORMAT = "alignn-torchscript"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
EXPORTABLE_MODELS = ("alignn_atomwise_pure", "alignn_atomwise_pure_smooth")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
ENTRY_POINT = (
    "forward_tensors_z(positions[N,3] float, lattice[3,3] float, atomic_numbers[N] int64, "
    "src[E] int64, dst[E] int64, shift[E,3], compute_stress: bool) -> Dict[str, Tensor]"
)


class ExportError(UserError):
    """The model or its config cannot be exported faithfully (exit code 2, one line)."""


class ExportCheckError(RuntimeError):
    """The written file disagrees with the eager model on the probe structure (a bug: exit 1)."""


@dataclass
class ExportReport:
    """What :func:`export_torchscript` wrote and what a user should know about it."""

    path: Path
    metadata: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    check: dict[str, float] | None = None


# ---------------------------------------------------------------------------- loading
def resolve_run(
    source: Path, config: Path | None = None, weights: str = "best_model.pt"
) -> tuple[Path, Path]:
    """(config.json, checkpoint) of a run directory or of a checkpoint file.

    A run directory holds ``config.json`` (the resolved config) and ``best_model.pt``; a
    checkpoint file takes its ``config.json`` from its folder unless ``config`` is given.
    """
    source = Path(source)
    if not source.exists():
        raise ExportError(f"{source}: no such run directory or checkpoint")
    if source.is_dir():
        checkpoint = source / weights
        config_path = config or source / "config.json"
    else:
        checkpoint = source
        config_path = config or source.parent / "config.json"
    if not checkpoint.is_file():
        raise ExportError(f"{checkpoint}: checkpoint not found (choose one with --weights)")
    if not Path(config_path).is_file():
        raise ExportError(f"{config_path}: run config not found; pass it with --config")
    return Path(config_path), checkpoint


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``, also when wrapped as ``{"state_dict": ...}``/``{"model": ...}``.

    Read with the core's safe loader (``weights_only=True``: a checkpoint is data, never code);
    a truncated file or a pickle that would run code is its one-line error.
    """
    state = load_torch(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path}: expected a state dict of tensors")
    return state


def load_trained(config_path: Path, checkpoint: Path) -> tuple[torch.nn.Module, Any, list[str]]:
    """(eager model with the checkpoint's weights, TrainingConfig, config warnings).

    The model is built through the plugin registry, exactly as training built it; exportability
    is checked before any weights are read, so a refusal is immediate.
    """
    loaded = load_config(config_path)
    config = loaded.config
    check_exportable(config)
    plugin = get_registry().get("models", config.model.name)
    model = plugin.build(config.model)
    state = load_state_dict(checkpoint)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
        problem = f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        missing, unexpected = [None], []
        problem = " ".join(str(exc).split("\n")[1:2]).strip()
    if missing or unexpected:
        raise ExportError(
            f"{checkpoint}: weights do not fit the model of {config_path} ({problem}); "
            "is it the checkpoint of this run?"
        )
    dtype = next(iter(state.values())).dtype if state else torch.float32
    model = model.to(dtype if dtype in (torch.float32, torch.float64) else torch.float32)
    return model.eval(), config, list(loaded.warnings)


# ---------------------------------------------------------------------------- checks
def check_exportable(config: Any) -> list[str]:
    """Raise :class:`ExportError` for what the export cannot reproduce; return warnings for what
    it reproduces faithfully but a host should know (e.g. forces that are not -dE/dx)."""
    model = config.model
    if model.name not in EXPORTABLE_MODELS:
        hint = ""
        if model.name == "alignn_atomwise":
            hint = (
                "; its weights load into alignn_atomwise_pure: set model.name to "
                "'alignn_atomwise_pure' in a copy of config.json, check the fields it rejects, "
                "and export that"
            )
        raise ExportError(
            f"cannot export model {model.name!r}: the TorchScript export supports "
            f"{' and '.join(map(repr, EXPORTABLE_MODELS))} only{hint}"
        )
    if model.classification:
        raise ExportError(
            "cannot export a classification model: the exported entry point returns an energy "
            "and its forces"
        )
    if model.link != "identity":
        raise ExportError(
            f"cannot export link {model.link!r}: the exported energy is the pre-link output, "
            "which would silently differ from the model's prediction; only 'identity' exports"
        )
    if model.output_features != 1:
        raise ExportError(
            f"cannot export output_features={model.output_features}: the exported entry point "
            "returns one energy per structure"
        )
    strategy = config.neighbor_strategy
    if strategy == "k-nearest":
        raise ExportError(
            "cannot export a neighbor_strategy 'k-nearest' model: its edges depend on shell "
            "completion, cutoff growth and canonisation over the whole structure, which a host's "
            "radius neighbour list cannot reproduce; retrain with 'pure_torch' (or 'radius_graph')"
        )
    if strategy not in ("pure_torch", "radius_graph"):
        raise ExportError(
            f"cannot export neighbor_strategy {strategy!r}: only 'pure_torch' and 'radius_graph' "
            "graphs are built from a radius neighbour list"
        )
    return export_warnings(config)


def export_warnings(config: Any) -> list[str]:
    """Faithfully exported options that make the output unsuitable for plain MD."""
    model = config.model
    notes = []
    if not model.computes_gradient:
        notes.append(
            "the model was trained without forces (calculate_gradient false or gradwise_weight "
            "0): exported forces are -dE/dx of an energy model never fitted to forces, and ZBL "
            "is off as in eager mode"
        )
    if model.force_mult_natoms:
        notes.append(
            "force_mult_natoms is true: exported forces are N x (-dE/dx), as in eager mode; "
            "MD with them does not conserve energy"
        )
    if not model.add_reverse_forces:
        notes.append(
            "add_reverse_forces is false: forces keep only the incoming-edge half, as in eager "
            "mode; they are not -dE/dx"
        )
    if not model.lg_on_fly and model.alignn_layers > 0:
        notes.append(
            "lg_on_fly is false: forces and stress miss the angular terms, as in eager mode"
        )
    if model.atomwise_output_features or model.additional_output_features:
        notes.append("the atomwise/additional output heads are not part of the export")
    if config.neighbor_strategy == "radius_graph":
        notes.append(
            "radius_graph model: the exported module raises when an atom has no neighbour "
            f"within cutoff {config.cutoff} A (training would have grown the cutoff)"
        )
    return notes


def neighbor_contract(settings: GraphSettings) -> NeighborContract:
    """The edge rule of ``settings`` as the exported module applies it to a host's list."""
    if settings.neighbor_strategy == "pure_torch":
        limit = settings.triplet_cutoff
        return NeighborContract(
            strategy="pure_torch",
            cutoff=settings.cutoff,
            min_distance_sq=PURE_TORCH_MIN_D2,
            max_neighbors=int(settings.max_neighbors or 0),
            three_body_cutoff=None if limit is None or limit >= settings.cutoff else limit,
            require_neighbor=False,
            cutoff_extra=0.0,
            line_graph=settings.compute_line_graph,
            tie_tolerance=TIE_TOLERANCE,
        )
    if settings.neighbor_strategy == "radius_graph":
        return NeighborContract(
            strategy="radius_graph",
            cutoff=settings.cutoff,
            min_distance_sq=RADIUS_GRAPH_MIN_DISTANCE**2,
            max_neighbors=0,
            three_body_cutoff=None,
            require_neighbor=True,
            cutoff_extra=settings.cutoff_extra,
            line_graph=settings.compute_line_graph,
            tie_tolerance=TIE_TOLERANCE,
        )
    raise ExportError(f"cannot export neighbor_strategy {settings.neighbor_strategy!r}")


# ---------------------------------------------------------------------------- metadata
def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def build_metadata(
    config: Any,
    contract: NeighborContract,
    dtype: torch.dtype,
    warnings: list[str],
    checkpoint_sha256: str | None = None,
) -> dict[str, Any]:
    """Everything a host needs, as plain JSON (readable without torch: it is a zip member)."""
    max_neighbors = contract.max_neighbors or None
    if contract.strategy == "pure_torch":
        host = (
            "pass a full directed list of all pairs with d <= cutoff (superset allowed: the "
            "model drops d > cutoff and coincident pairs d^2 <= 1e-8, then keeps the "
            "max_neighbors nearest per source itself, ties broken by (distance to 1e-8 A, dst, "
            "shift)); include an atom's own periodic images"
        )
    else:
        host = (
            "pass a full directed list of all pairs with d <= cutoff (superset allowed); every "
            "atom needs at least one neighbour within cutoff or the model raises"
        )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": config.model.name,
        "entry_point": ENTRY_POINT,
        "outputs": {
            "energy": "0-d, eV (total energy, penalty and ZBL included)",
            "forces": "[N, 3], eV/A",
            "stress": "[3, 3], GPa, only when compute_stress is true",
        },
        "dtype": str(dtype).removeprefix("torch."),
        "cutoff": contract.cutoff,
        "three_body_cutoff": contract.three_body_cutoff,
        "max_neighbors": max_neighbors,
        "neighbor_strategy": contract.strategy,
        "atom_features": config.atom_features,
        "neighbor_list": {
            "strategy": contract.strategy,
            "cutoff": contract.cutoff,
            "cutoff_inclusive": True,
            "min_distance": float(np.sqrt(contract.min_distance_sq)),
            "max_neighbors": max_neighbors,
            "three_body_cutoff": contract.three_body_cutoff,
            "full_directed": True,
            "edge_vector": "r = positions[dst] - positions[src] + shift @ lattice",
            "host": host,
        },
        "supported_atomic_numbers": [int(z) for z in supported_numbers(config.atom_features)],
        "units": {
            "positions": "A",
            "lattice": "A, rows are cell vectors",
            "energy": "eV",
            "forces": "eV/A",
            "stress": "GPa",
        },
        "stress_sign": (
            "tensile positive: sigma = (1/V) dE/d(strain) (ASE's sign); pressure = "
            "-trace(sigma)/3; ASE eV/A^3 = GPa / " + repr(EV_PER_A3_TO_GPA)
        ),
        "forces_are_energy_gradient": bool(
            not config.model.force_mult_natoms
            and config.model.add_reverse_forces
            and (config.model.lg_on_fly or config.model.alignn_layers == 0)
        ),
        "warnings": warnings,
        "model_config": config.model.model_dump(mode="json"),
        "graph_settings": config.graph_settings.model_dump(mode="json"),
        "training_config": config.model_dump(mode="json"),
        "versions": {
            "alignn-core": _version("alignn-core"),
            "alignn-torch": _version("alignn-torch"),
            "alignn-torchscript": _version("alignn-torchscript"),
            "torch": torch.__version__,
        },
        "checkpoint_sha256": checkpoint_sha256,
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``metadata.json`` of an exported file (through torch; hosts may unzip it instead)."""
    files = {METADATA_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return json.loads(files[METADATA_FILE])


# ---------------------------------------------------------------------------- export
def export_dtype(model: torch.nn.Module, dtype: str | None) -> torch.dtype:
    """The exported file's dtype: ``dtype`` (float32/float64) or, without one, the model's."""
    if dtype is None:
        model_dtype = model.fc.weight.dtype
        return model_dtype if model_dtype in DTYPES.values() else torch.float32
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ExportError(f"dtype {dtype!r} is not exportable; use float32 or float64")


def exported_module(
    model: torch.nn.Module, config: Any, dtype: torch.dtype, metadata_text: str = "{}"
) -> ExportedALIGNN:
    """The module that :func:`export_torchscript` scripts, still eager.

    Exposed so a benchmark can time the very same entry point (``forward_tensors_z`` from a
    neighbour list) with and without TorchScript.
    """
    smooth = config.model.name == "alignn_atomwise_pure_smooth"
    if (
        not isinstance(model, ALIGNNAtomWisePure)
        or isinstance(model, ALIGNNAtomWisePureSmooth) != smooth
    ):
        raise ExportError(
            f"cannot export a {type(model).__name__}: expected the {config.model.name} module"
        )
    table = torch.from_numpy(np.array(feature_table(config.atom_features)))
    known = torch.zeros(table.shape[0], dtype=torch.bool)
    known[torch.from_numpy(supported_numbers(config.atom_features))] = True
    exported_class = ExportedALIGNNSmooth if smooth else ExportedALIGNN
    contract = neighbor_contract(config.graph_settings)
    return exported_class.from_model(model, contract, table, known, metadata_text, dtype)


def export_torchscript(
    model: torch.nn.Module,
    config: Any,
    output: Path,
    *,
    dtype: str | None = None,
    check: bool = True,
    checkpoint_sha256: str | None = None,
) -> ExportReport:
    """Script ``model`` (an eager ``alignn_atomwise_pure`` or ``alignn_atomwise_pure_smooth``
    with trained weights) into ``output``.

    ``dtype`` (float32/float64) defaults to the model's; ``check`` compares the written file
    with the eager model on a probe structure and raises :class:`ExportCheckError` (leaving
    no file behind) if they disagree.
    """
    warnings = check_exportable(config)
    torch_dtype = export_dtype(model, dtype)
    contract = neighbor_contract(config.graph_settings)
    metadata = build_metadata(config, contract, torch_dtype, warnings, checkpoint_sha256)
    text = json.dumps(metadata, indent=2, sort_keys=True)
    scripted = torch.jit.script(exported_module(model, config, torch_dtype, text))

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
    os.close(handle)
    try:
        torch.jit.save(scripted, temporary, _extra_files={METADATA_FILE: text})
        result = check_export(model, config, temporary, torch_dtype) if check else None
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return ExportReport(path=output, metadata=metadata, warnings=warnings, check=result)


def probe_structure(atom_features: str) -> Structure | None:
    """A rattled, sheared 8-atom zincblende cell of SiC (or of the first two known elements).

    Two elements, because with a single species ALIGNN's node features depend on geometry only
    through the 1e-6 in the gate normalisation (every gated mean averages identical values), so
    monatomic forces are float noise and would prove nothing. Small enough that every atom sees
    its own periodic images at common cutoffs; rattled so forces and stress are non-trivial.
    """
    known = [int(z) for z in supported_numbers(atom_features)]
    if not known:
        return None
    pair = [14, 6] if 14 in known and 6 in known else (known + known)[:2]
    frac = np.array(
        [
            [0, 0, 0],
            [0, 0.5, 0.5],
            [0.5, 0, 0.5],
            [0.5, 0.5, 0],
            [0.25, 0.25, 0.25],
            [0.25, 0.75, 0.75],
            [0.75, 0.25, 0.75],
            [0.75, 0.75, 0.25],
        ]
    )
    cell = np.array([[4.36, 0.0, 0.0], [0.1, 4.33, 0.0], [0.05, -0.08, 4.40]])
    rng = np.random.default_rng(0)
    positions = frac @ cell + rng.normal(0.0, 0.05, (8, 3))
    return Structure(numbers=np.repeat(pair, 4), positions=positions, cell=cell)


def check_export(
    model: torch.nn.Module, config: Any, path: str | Path, dtype: torch.dtype
) -> dict[str, float] | None:
    """Load ``path`` back and compare with the eager ``model`` on :func:`probe_structure`.

    The neighbour list handed to the file is the graph backend's own edge list, so the check
    isolates the export (the host-side list is verified in the tests with ASE's). Returns the
    largest relative errors, or None when no probe applies (a radius_graph model whose cutoff
    is shorter than the probe's bonds).
    """
    structure = probe_structure(config.atom_features)
    settings = config.graph_settings.model_copy(update={"dtype": str(dtype).split(".")[-1]})
    if structure is None:
        return None
    edges, _ = neighbor_list(structure, settings)
    if (
        config.neighbor_strategy == "radius_graph"
        and np.bincount(edges.src, minlength=structure.n_atoms).min() == 0
    ):
        return None
    reference = model if model.fc.weight.dtype == dtype else copy.deepcopy(model).to(dtype)
    reference.eval()
    expected = reference(build_graph(structure, settings), compute_stress=True)
    loaded = torch.jit.load(str(path), map_location="cpu")
    got = loaded.forward_tensors_z(
        torch.from_numpy(structure.positions),  # float64, as a LAMMPS host would pass them
        torch.from_numpy(structure.cell),
        torch.from_numpy(structure.numbers),
        torch.from_numpy(edges.src),
        torch.from_numpy(edges.dst),
        torch.from_numpy(edges.shift),
        True,
    )
    errors = {
        "energy": _relative(got["energy"], expected["energy"][0]),
        "forces": _relative(got["forces"], expected["grad"]),
        "stress": _relative(got["stress"], expected["stresses"][0]),
    }
    tolerance = 1e-4 if dtype == torch.float32 else 1e-9
    bad = {key: value for key, value in errors.items() if not value <= tolerance}
    if bad:
        raise ExportCheckError(
            f"exported model disagrees with the eager model on the probe structure "
            f"(relative errors {bad}, tolerance {tolerance}); the file was not written"
        )
    return errors


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max(max |expected|, 1e-12): one scale per quantity."""
    scale = max(float(expected.detach().abs().max()) if expected.numel() else 0.0, 1e-12)
    return float((got.detach() - expected.detach()).abs().max()) / scale if got.numel() else 0.0


def export_run(
    source: Path,
    output: Path,
    *,
    config: Path | None = None,
    weights: str = "best_model.pt",
    dtype: str | None = None,
    check: bool = True,
) -> ExportReport:
    """``alignn export torchscript``: a run directory (or checkpoint) -> ``output``."""
    config_path, checkpoint = resolve_run(source, config, weights)
    model, training_config, config_warnings = load_trained(config_path, checkpoint)
    report = export_torchscript(
        model,
        training_config,
        output,
        dtype=dtype,
        check=check,
        checkpoint_sha256=file_sha256(checkpoint),
    )
    report.warnings = config_warnings + report.warnings
    return report
