"""alignn: plugin-based ALIGNN graph neural networks for materials.

The core holds the config schema, plugin manager, data readers and the training loop; graph
backends, models, caches and exporters come from plugins (see ``docs/plugins.md``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alignn-core")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
