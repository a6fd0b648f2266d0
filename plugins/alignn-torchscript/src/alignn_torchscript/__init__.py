"""TorchScript export plugin (placeholder: the exporter is tracked in its own issue)."""

__version__ = "0.1.0"
