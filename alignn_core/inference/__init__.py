"""Using a trained model: :func:`load_model`, batched :meth:`InferenceModel.predict`, and an ASE
calculator (:class:`alignn_core.ase.ALIGNNCalculator`). See ``docs/inference.md``."""

from alignn_core.inference.loading import find_model_files, load_model
from alignn_core.inference.model import GraphBuilder, InferenceModel, Prediction
from alignn_core.inference.structures import LabelledStructure, gather, read_frames

__all__ = [
    "GraphBuilder",
    "InferenceModel",
    "LabelledStructure",
    "Prediction",
    "find_model_files",
    "gather",
    "load_model",
    "read_frames",
]
