"""Readers for upstream ALIGNN's data layout (``id_prop.csv`` / ``id_prop.json``)."""

from alignn_core.io.id_prop import DataKeys, find_id_prop, read_dataset
from alignn_core.io.structures import read_structure, structure_from_jarvis

__all__ = ["DataKeys", "find_id_prop", "read_dataset", "read_structure", "structure_from_jarvis"]
