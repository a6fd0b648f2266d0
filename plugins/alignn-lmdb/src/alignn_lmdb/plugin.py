"""Hook implementations of the LMDB plugin (none yet: see the package docstring)."""
