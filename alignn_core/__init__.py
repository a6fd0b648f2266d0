"""alignn: plugin-based ALIGNN graph neural networks for materials.

The core holds the config schema, plugin manager, data readers and the training loop; graph
backends, models, caches and exporters come from plugins (see ``docs/plugins.md``).

``load_model`` and ``ALIGNNCalculator`` are exported lazily (PEP 562): importing ``alignn_core``
stays cheap (no torch, no ASE) for the CLI's fast paths and for tools that only read configs.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alignn_core.ase import ALIGNNCalculator
    from alignn_core.inference import load_model

try:
    __version__ = version("alignn-core")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["ALIGNNCalculator", "__version__", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from alignn_core.inference import load_model

        return load_model
    if name == "ALIGNNCalculator":
        from alignn_core.ase import ALIGNNCalculator

        return ALIGNNCalculator
    raise AttributeError(f"module 'alignn_core' has no attribute {name!r}")
