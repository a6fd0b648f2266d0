"""Whether DGL can be used here, decided once by actually importing it.

DGL is an optional dependency of this plugin: wheels exist only for old torch releases
(``dgl==2.1.0`` with ``torch==2.2.1``), and an installed DGL next to a newer torch fails at
import time rather than at install time. So availability is "``import dgl`` works", not "a
``dgl`` distribution is installed"; everything that needs DGL asks :func:`import_dgl`, and the
plugin registers its graph backend only when :func:`dgl_available` is true.
"""

from __future__ import annotations

import os
from functools import cache
from types import ModuleType

from alignn_core.errors import PluginError

INSTALL_HINT = (
    "install DGL in the DGL plugin's environment (nox -s dgl; see docs/dgl.md: torch==2.2.1 "
    "dgl==2.1.0), or set model.name to 'alignn_atomwise_pure' (same weights and equations, "
    "no DGL)"
)
"""One sentence on how to get DGL or avoid needing it; every DGL error ends with it."""


@cache
def _import() -> tuple[ModuleType | None, str]:
    """Import DGL once; ``(module, "")`` or ``(None, why it failed)``."""
    # Without this DGL prints a backend notice on every import; the plugin only supports torch.
    os.environ.setdefault("DGLBACKEND", "pytorch")
    try:
        import dgl
    except Exception as exc:  # ImportError, but also OSError/RuntimeError from its C libraries
        text = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    return dgl, ""


def dgl_available() -> bool:
    """True when ``import dgl`` succeeds in this interpreter."""
    return _import()[0] is not None


def import_dgl() -> ModuleType:
    """The ``dgl`` module, or a one-line :class:`PluginError` saying why not and what to do."""
    module, reason = _import()
    if module is None:
        detail = "not installed" if reason.startswith("ModuleNotFoundError") else reason
        raise PluginError(f"DGL is not available ({detail}); {INSTALL_HINT}")
    return module
