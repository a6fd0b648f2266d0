"""``load_model``: a run directory or checkpoint (ours or upstream ALIGNN's) -> InferenceModel.

Both projects write a run directory with ``config.json`` (the whole training config, the model
under ``"model"``) and ``best_model.pt`` (a plain ``state_dict``), and our parameter names are
upstream's, so one loader serves both. What differs is handled here, explicitly:

- upstream's DGL model ``alignn_atomwise`` is loaded as ``alignn_atomwise_pure`` with the same
  weights (identical parameter names and shapes; the DGL model only lacks the pure model's
  ``_species_table`` buffer, which the eager forward never reads). Its physics is then pure's, so
  the two settings whose *defaults* differ are pinned to what the DGL model did:
  ``penalty_factor`` keeps the value in the file (0.1, the DGL default, when absent; pure's
  default is 0.5) and ``use_zbl`` is false (the DGL model has no ZBL term). ``extra_features``
  (extra DGL-only layers) cannot be converted;
- upstream's property model ``alignn`` (DGL, different layout) is not supported;
- checkpoints are read with ``torch.load(weights_only=True)`` only: a file that needs pickled
  code to load is refused rather than executed. Upstream property checkpoints that nest the
  weights under ``"model"`` are unwrapped.
- the module is constructed under the config's dtype as the default dtype, as both trainers do,
  because the RBF ``gamma`` is derived from the centres at construction (float32 and float64
  differ at 1e-8) and is not stored in the checkpoint.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from alignn_core.config.loader import load_config, read_json
from alignn_core.errors import ConfigError, ModelError
from alignn_core.inference.model import DTYPES, InferenceModel, resolve_device, resolve_dtype
from alignn_core.plugins import FIRST_PARTY_BACKENDS, get_registry
from alignn_core.training.atomic import load_torch

CHECKPOINT = "best_model.pt"
CONFIG = "config.json"
DGL_PENALTY_FACTOR = 0.1
"""``penalty_factor`` default of upstream's DGL ``alignn_atomwise`` (pure's is 0.5)."""


def find_model_files(path: str | Path) -> tuple[Path, Path]:
    """``(config.json, checkpoint)`` for a run directory or a checkpoint file next to its config."""
    path = Path(path)
    if not path.exists():
        raise ModelError(
            f"{path}: model not found; pass a run directory (config.json + {CHECKPOINT}) or a "
            "checkpoint file next to its config.json"
        )
    if path.is_dir():
        config = path / CONFIG
        if not config.is_file():
            raise ModelError(
                f"{path}: no {CONFIG} in the model directory; a model directory holds "
                f"{CONFIG} and {CHECKPOINT}"
            )
        checkpoint = path / CHECKPOINT
        if not checkpoint.is_file():
            others = sorted(p.name for p in path.glob("*.pt"))
            hint = (f"pass one of {', '.join(others)} instead" if others
                    else "training has not saved a model yet")  # fmt: skip
            raise ModelError(f"{path}: no {CHECKPOINT} in the model directory; {hint}")
        return config, checkpoint
    config = path.parent / CONFIG
    if not config.is_file():
        raise ModelError(f"{path}: no {CONFIG} next to the checkpoint (looked in {path.parent})")
    return config, path


def read_model_config(config_path: Path) -> tuple[Any, str, list[str]]:
    """Validated training config, its origin (``alignn`` or ``upstream-dgl``) and notes on any
    conversion that was made."""
    data = read_json(config_path)
    model = data.get("model") if isinstance(data, dict) else None
    name = model.get("name") if isinstance(model, dict) else None
    if name == "alignn":
        raise ModelError(
            f"{config_path}: upstream's DGL property model 'alignn' is not supported by "
            "load_model (different parameter layout); retrain with model.name "
            "'alignn_atomwise_pure' and calculate_gradient false for a property model"
        )
    if name != "alignn_atomwise":
        return load_config(config_path).config, "alignn", []
    assert isinstance(model, dict)
    converted = dict(model)
    converted["name"] = "alignn_atomwise_pure"
    converted["penalty_factor"] = model.get("penalty_factor", DGL_PENALTY_FACTOR)
    converted["use_zbl"] = False
    notes = [
        "upstream DGL model 'alignn_atomwise' loaded as 'alignn_atomwise_pure' (same weights); "
        f"penalty_factor {converted['penalty_factor']}, no ZBL, as the DGL model"
    ]
    if model.get("extra_features"):
        raise ModelError(
            f"{config_path}: model.extra_features={model['extra_features']} adds layers "
            "(fc1, fc2, fc3) that alignn_atomwise_pure does not have; this checkpoint cannot "
            "be converted"
        )
    if model.get("batch_stress") is False:
        notes.append("batch_stress false: upstream's DGL model halves that stress; "
                     "the stress here is the full virial stress")  # fmt: skip
    try:
        config = load_config({**data, "model": converted}).config
    except ConfigError as exc:
        message = str(exc)
        if message.startswith("config: "):
            message = message[len("config: ") :]
        raise ConfigError(f"{config_path}: {message}") from None
    return config, "upstream-dgl", notes


def read_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Weights from a checkpoint, never unpickling code (``weights_only=True``)."""
    return as_state_dict(load_torch(checkpoint), checkpoint)


def as_state_dict(obj: Any, source: Path) -> dict[str, torch.Tensor]:
    """``obj`` as a state dict: a mapping of name -> tensor, or one nested under ``"model"``
    (upstream property checkpoints, and our ``current_state.pt``)."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{source}: not a state_dict (expected a mapping of name -> tensor)")
    return obj


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: Path,
                 model: str, fix: str) -> None:  # fmt: skip
    """Load ``state`` into ``module`` strictly (inference and the trainer's resume share this).

    A mismatch is one :class:`ModelError` line, ``SOURCE: weights do not fit the model MODEL
    (DETAIL); FIX``, where DETAIL names the first parameter whose shape differs with both shapes
    (and how many more differ), or the missing and unexpected names. A model's own load check
    (e.g. ``model.node_update``) keeps its message, prefixed with ``SOURCE``.
    """
    try:
        module.load_state_dict(state, strict=True)
        return
    except ModelError as exc:  # raised by the model's own check, before the key/shape check
        raise ModelError(f"{source}: {exc}") from None
    except RuntimeError as exc:
        detail = weights_mismatch(module, state) or _first_reason(exc)
    raise ModelError(f"{source}: weights do not fit the model {model} ({detail}); {fix}")


def weights_mismatch(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into ``module`` (None when names and shapes fit)."""
    expected = module.state_dict()
    shapes = [
        f"size mismatch for {name}: checkpoint shape {list(state[name].shape)}, model shape "
        f"{list(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state and tuple(state[name].shape) != tuple(tensor.shape)
    ]
    missing, unexpected = _key_mismatch(module, state)
    parts = []
    if shapes:
        more = len(shapes) - 1
        parts.append(shapes[0] + (f", and {more} more parameter{'s' * (more > 1)} differ"
                                   if more else ""))  # fmt: skip
    if missing:
        parts.append(f"missing {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected {_few(unexpected)}")
    return "; ".join(parts) or None


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_model(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    cuda_graphs: bool = False,
) -> InferenceModel:
    """Load a trained model for inference.

    ``path``: a run directory of ours or of upstream ALIGNN (``config.json`` + ``best_model.pt``),
    or a checkpoint file (``.pt``) with its ``config.json`` beside it. ``device``: ``cpu``,
    ``cuda``, ``cuda:1`` ... (default: CUDA when available). ``dtype``: ``float32`` or
    ``float64`` (default: the config's dtype when it is one of those, else float32).
    ``cuda_graphs``: evaluate forces by CUDA graph replay (:meth:`InferenceModel.with_cuda_graphs`).
    """
    config_path, checkpoint = find_model_files(path)
    config, origin, notes = read_model_config(config_path)
    registry = get_registry()
    plugin = registry.get("models", config.model.name)
    if plugin.backend not in registry.graph_backends:
        hint = FIRST_PARTY_BACKENDS.get(plugin.backend, "install the plugin that provides it")
        raise ModelError(f"model {config.model.name!r} needs graph backend {plugin.backend!r}, "
                         f"which no installed plugin provides; {hint}")  # fmt: skip
    backend = registry.graph_backends[plugin.backend]
    trained = config.dtype if config.dtype in DTYPES else "float32"
    dtype_name = resolve_dtype(dtype, default=trained)
    target = resolve_device(device)
    state = read_state_dict(checkpoint)
    with _default_dtype(DTYPES[trained]):
        module = plugin.build(config.model)
    if origin == "upstream-dgl" and "_species_table" not in state:
        # the DGL model has no species-table buffer (a lookup table for exporters, unused by
        # the eager forward): keep the pure model's zeros
        state["_species_table"] = module.state_dict()["_species_table"]
    load_weights(module, state, source=checkpoint, model=f"described in {config_path}",
                 fix="use the config.json the checkpoint was trained with")  # fmt: skip
    module = module.to(target, DTYPES[dtype_name]).eval()
    model = InferenceModel(module, config, plugin=plugin, backend=backend, device=target,
                           dtype=dtype_name, source=Path(path), checkpoint=checkpoint,
                           origin=origin, notes=notes)  # fmt: skip
    return model.with_cuda_graphs() if cuda_graphs else model


def _key_mismatch(module: torch.nn.Module, state: dict) -> tuple[list[str], list[str]]:
    expected = set(module.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)


def _few(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def _first_reason(exc: Exception) -> str:
    """The first specific line of a ``load_state_dict`` error (e.g. a size mismatch)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
