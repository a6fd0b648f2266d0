"""The :class:`~alignn_core.protocols.Exporter` object registered as ``torchscript``.

It adapts the protocol's ``export(model, config, output, **options)`` to
:func:`alignn_torchscript.export.export_torchscript`, so code that holds a trained model (a
notebook, another plugin) exports without going through a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class TorchScriptExporter:
    """Exporter ``torchscript``: options ``dtype`` ("float32"/"float64") and ``check`` (bool)."""

    name = "torchscript"

    def export(self, model: torch.nn.Module, config: Any, output: Path, **options: Any) -> Path:
        """Write ``model`` (eager ``alignn_atomwise_pure[_smooth]``, trained) to ``output``."""
        from alignn_torchscript.export import export_torchscript

        return export_torchscript(model, config, Path(output), **options).path


TORCHSCRIPT_EXPORTER = TorchScriptExporter()
"""The instance the plugin hook registers."""
