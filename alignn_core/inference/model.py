"""A trained model ready for inference: graphs from its backend, batched predictions, a calculator.

Backend-neutral: graphs come from the graph backend the model's plugin names, the module from the
plugin; the only model-specific convention used is the output dict of
:class:`~alignn_core.protocols.ModelPlugin` (``out``, ``energy``, ``grad``, ``stresses``, ...),
plus an optional ``compute_stress`` keyword that asks for forces and stress even when the model
was configured without them (what a calculator needs).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.data.samples import built_graphs
from alignn_core.errors import ModelError
from alignn_core.inference.structures import LabelledStructure, gather
from alignn_core.structures import Structure

if TYPE_CHECKING:
    from alignn_core.ase import ALIGNNCalculator

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype | None, default: str = "float32") -> str:
    """Name of a supported inference dtype (float32/float64); anything else is a user error."""
    if dtype is None:
        dtype = default
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} is not supported for inference; use float32 or float64")
    return dtype


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a CUDA device on a CPU-only torch is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"device {device!r} is not valid ({exc})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available to torch")
    return resolved


@dataclass
class Prediction:
    """One structure's prediction.

    ``out`` is the graph-level head after the link (``[D]``; for force fields the energy per
    atom when ``energy_mult_natoms``). When forces were computed: ``energy`` (eV, the total
    energy whose negative gradient the model differentiates, penalty and ZBL included),
    ``forces`` (``[N, 3]`` eV/Å) and, for periodic structures, ``stress`` (``[3, 3]`` GPa,
    tensile positive: ASE's sign; divide by 160.21766208 for eV/Å³).
    """

    label: str
    n_atoms: int
    out: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    atomwise: np.ndarray | None = None
    additional: np.ndarray | None = None
    source: str | None = None
    frame: int | None = None
    structure: Structure | None = field(default=None, repr=False)


class GraphBuilder:
    """Builds graphs of one system's successive configurations.

    Uses the backend's ``incremental_builder(settings, skin)`` when it has one (neighbour-list
    reuse, results identical to fresh builds) and plain ``build`` otherwise, so a third-party
    backend works without implementing reuse.
    """

    def __init__(self, backend: Any, settings: GraphSettings, skin: float | None) -> None:
        self._backend = backend
        self._settings = settings
        factory = getattr(backend, "incremental_builder", None)
        self._incremental = factory(settings, skin) if factory and skin is not None else None

    @property
    def reuses(self) -> int:
        """Neighbour searches answered from the cache (0 without reuse)."""
        return int(getattr(self._incremental, "reuses", 0))

    @property
    def rebuilds(self) -> int:
        """Full neighbour searches (0 without reuse support: every build is fresh then)."""
        return int(getattr(self._incremental, "rebuilds", 0))

    def build(self, structure: Structure) -> Any:
        if self._incremental is not None:
            return self._incremental.build(structure)
        return self._backend.build(structure, self._settings)


class InferenceModel:
    """A loaded model (see :func:`alignn_core.inference.load_model`)."""

    def __init__(
        self,
        module: torch.nn.Module,
        config: Any,
        *,
        plugin: Any,
        backend: Any,
        device: torch.device,
        dtype: str,
        source: Path | None = None,
        checkpoint: Path | None = None,
        origin: str = "alignn",
        notes: Sequence[str] = (),
    ) -> None:
        self.module = module.eval()
        self.config = config
        self.plugin = plugin
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.source = source
        self.checkpoint = checkpoint
        self.origin = origin
        self.notes = list(notes)
        self._accepts_compute_stress = (
            "compute_stress" in inspect.signature(module.forward).parameters
        )
        self._captured: Callable[[Any], dict[str, torch.Tensor]] | None = None
        self._max_captures = 0

    def __repr__(self) -> str:
        graphs = ", cuda_graphs=True" if self.uses_cuda_graphs else ""
        return (f"InferenceModel({self.config.model.name!r}, source={str(self.source)!r}, "
                f"device={str(self.device)!r}, dtype={self.dtype!r}{graphs})")  # fmt: skip

    # ------------------------------------------------------------------ properties
    @property
    def settings(self) -> GraphSettings:
        """Graph settings of the training config, built in the inference dtype."""
        return self.config.graph_settings.model_copy(update={"dtype": self.dtype})

    @property
    def is_force_field(self) -> bool:
        """True when the model was trained with forces (its energy is a potential)."""
        return bool(getattr(self.config.model, "computes_gradient", False))

    @property
    def output_width(self) -> int:
        """Entries of ``out`` per structure (2 for a classifier's log-probabilities)."""
        model = self.config.model
        if getattr(model, "classification", False):
            return 2
        return int(getattr(model, "output_features", 1) or 1)

    def to(self, device: str | torch.device | None = None,
           dtype: str | torch.dtype | None = None) -> InferenceModel:  # fmt: skip
        """This model on another device/dtype: ``self`` if nothing changes, else a copy (the
        original keeps its weights where they are, like ``Tensor.to``). A copy of a model with
        CUDA graphs has them too, so it must stay on a CUDA device."""
        new_device = self.device if device is None else resolve_device(device)
        new_dtype = self.dtype if dtype is None else resolve_dtype(dtype)
        if new_device == self.device and new_dtype == self.dtype:
            return self
        module = copy.deepcopy(self.module).to(new_device, DTYPES[new_dtype])
        moved = self._around(module, new_device, new_dtype)
        if self._captured is None:
            return moved
        # the copy replays graphs of its own weights; a CPU copy is refused like any CPU model
        return moved.with_cuda_graphs(self._max_captures)

    def _around(self, module: torch.nn.Module, device: torch.device, dtype: str) -> InferenceModel:
        """A model like this one (config, plugin, source, notes) around ``module``."""
        return InferenceModel(module, self.config, plugin=self.plugin, backend=self.backend,
                              device=device, dtype=dtype, source=self.source,
                              checkpoint=self.checkpoint, origin=self.origin,
                              notes=self.notes)  # fmt: skip

    @property
    def uses_cuda_graphs(self) -> bool:
        """True when force evaluations replay captured CUDA graphs (:meth:`with_cuda_graphs`)."""
        return self._captured is not None

    @property
    def cuda_graph_counts(self) -> dict[str, int]:
        """``captures`` made and ``replays`` run so far by CUDA graphs (empty without them, or
        when the plugin's runner does not count): one capture per size bucket met means the
        buckets fit the run; a capture every few calls means the sizes keep changing."""
        runner = self._captured
        counts = {"captures": getattr(runner, "captures_made", None),
                  "replays": getattr(runner, "replays", None)}  # fmt: skip
        return {key: int(value) for key, value in counts.items() if value is not None}

    def with_cuda_graphs(self, max_captures: int = 4) -> InferenceModel:
        """This model evaluating forces by CUDA graph replay: a new ``InferenceModel`` sharing
        the module (weights are not copied).

        For repeated calls on one system (MD, relaxation) on a GPU, where a call is bound by
        kernel launches: each call is padded to a size bucket and the bucket's captured graph is
        replayed (docs/inference.md). Needs a CUDA device and a model plugin that provides
        ``captured_forward``; calls without forces still run eagerly.
        """
        if self.device.type != "cuda":
            raise ModelError(
                f"CUDA graphs need a CUDA device; this model is on {self.device} "
                "(use device 'cuda')"
            )
        factory = getattr(self.plugin, "captured_forward", None)
        if factory is None:
            raise ModelError(f"model {self.config.model.name!r} does not support CUDA graphs "
                             "(its plugin has no captured_forward)")  # fmt: skip
        if max_captures < 1:
            raise ModelError(f"max_captures must be >= 1, got {max_captures}")
        copy_ = self._around(self.module, self.device, self.dtype)
        copy_._captured = factory(self.module, max_captures=max_captures)
        copy_._max_captures = max_captures
        return copy_

    # ------------------------------------------------------------------ graphs and forward
    def graph_builder(self, skin: float | None = None) -> GraphBuilder:
        """A builder for successive configurations of one system (``skin`` in Å enables
        neighbour-list reuse where the backend supports it; None builds afresh every time)."""
        return GraphBuilder(self.backend, self.settings, skin)

    def forward(self, graph: Any, *, gradients: bool) -> dict[str, torch.Tensor]:
        """Run the module on a (batched) graph; ``gradients`` asks for forces and stress even if
        the model was configured without them. Returned tensors are detached, on the device."""
        if gradients and self._captured is not None:
            return self._captured(graph)
        kwargs: dict[str, Any] = {}
        if gradients:
            if self._accepts_compute_stress:
                kwargs["compute_stress"] = True
            elif not self.is_force_field:
                raise ModelError(
                    f"model {self.config.model.name!r} cannot compute forces (its forward has "
                    "no compute_stress option and it was not configured with forces)"
                )
        with torch.no_grad():
            return self.module(graph.to(self.device), **kwargs)

    def predict(
        self,
        structures: Any,
        *,
        batch_size: int = 16,
        forces: bool | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """Predict for ASE Atoms, :class:`Structure` objects, structure files (every frame) or
        folders of them, ``batch_size`` structures per forward pass.

        ``forces``: None computes forces, energy and (periodic structures) stress exactly when
        the model is a force field; True forces them for any model, False skips them where the
        model allows. ``progress`` is called with the number of structures finished per batch.
        """
        if batch_size < 1:
            raise ModelError(f"batch_size must be >= 1, got {batch_size}")
        gradients = self.is_force_field if forces is None else bool(forces)
        results: list[Prediction] = []
        for chunk in _chunks(gather(structures), batch_size):
            results.extend(self._predict_batch(chunk, gradients))
            if progress is not None:
                progress(len(chunk))
        return results

    def _predict_batch(self, chunk: list[LabelledStructure], gradients: bool) -> list[Prediction]:
        graphs = list(built_graphs(self.backend, [item.structure for item in chunk], self.settings,
                                   labels=[item.label for item in chunk]))  # fmt: skip
        output = self.forward(self.backend.collate(graphs), gradients=gradients)
        counts = [item.structure.n_atoms for item in chunk]
        starts = np.cumsum([0, *counts])
        arrays = {key: value.detach().to("cpu", torch.float64).numpy()
                  for key, value in output.items() if isinstance(value, torch.Tensor)}  # fmt: skip
        have_forces = "grad" in arrays
        predictions = []
        for i, item in enumerate(chunk):
            a, b = starts[i], starts[i + 1]
            prediction = Prediction(
                label=item.label, n_atoms=counts[i], out=np.atleast_1d(arrays["out"][i]),
                source=item.source, frame=item.frame, structure=item.structure,
            )  # fmt: skip
            if have_forces:
                if "energy" in arrays:
                    prediction.energy = float(np.atleast_1d(arrays["energy"][i])[0])
                prediction.forces = arrays["grad"][a:b]
                if "stresses" in arrays and has_volume(item.structure):
                    prediction.stress = arrays["stresses"][i]
            if "atomwise_pred" in arrays:
                prediction.atomwise = arrays["atomwise_pred"][a:b]
            if "additional" in arrays:
                prediction.additional = arrays["additional"][i]
            predictions.append(prediction)
        return predictions

    def calculator(self, **kwargs: Any) -> ALIGNNCalculator:
        """An ASE calculator on this model (keywords: see :class:`ALIGNNCalculator`)."""
        from alignn_core.ase import ALIGNNCalculator

        return ALIGNNCalculator(self, **kwargs)


def has_volume(structure: Structure) -> bool:
    """Stress needs a periodic structure with a non-degenerate cell (a molecule has none)."""
    return any(structure.pbc) and structure.volume > 1e-12


def _chunks(items: Iterable[LabelledStructure], size: int) -> Iterable[list[LabelledStructure]]:
    chunk: list[LabelledStructure] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
