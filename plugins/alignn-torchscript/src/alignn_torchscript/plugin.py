"""Hook implementations of the TorchScript plugin (none yet: see the package docstring)."""
