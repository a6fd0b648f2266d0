"""Per-element atom feature tables (``atom_features`` in the config).

The tables are data shipped with the package (generated from jarvis-tools by
``tools/reference/make_feature_tables.py``), so nothing is downloaded. Row ``Z`` of a table is the
feature vector of the element with atomic number ``Z``; row 0 is unused.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import numpy as np

from alignn_core.errors import DataError

FEATURE_WIDTHS = {"cgcnn": 92, "basic": 11, "atomic_number": 1, "cfid": 438}
MAX_Z = 118


def feature_width(name: str) -> int:
    """Width of a feature set: cgcnn 92, basic 11, atomic_number 1, cfid 438."""
    return FEATURE_WIDTHS[name]


@cache
def _table_and_mask(name: str) -> tuple[np.ndarray, np.ndarray]:
    width = feature_width(name)
    table = np.zeros((MAX_Z + 1, width), dtype=np.float64)
    known = np.zeros(MAX_Z + 1, dtype=bool)
    if name == "atomic_number":
        table[:, 0] = np.arange(MAX_Z + 1)
        known[1:] = True
    else:
        text = resources.files("alignn_core.features").joinpath(f"tables/{name}.json").read_text()
        for z, row in json.loads(text)["rows"].items():
            table[int(z)] = row
            known[int(z)] = True
    table.setflags(write=False)
    known.setflags(write=False)
    return table, known


def feature_table(name: str) -> np.ndarray:
    """The full ``[MAX_Z + 1, F]`` table (rows of unsupported elements are zero)."""
    return _table_and_mask(name)[0]


def supported_numbers(name: str) -> np.ndarray:
    """Atomic numbers that have a row in the ``name`` table."""
    return np.flatnonzero(_table_and_mask(name)[1])


def atom_features(numbers: np.ndarray, name: str) -> np.ndarray:
    """Feature rows for ``numbers`` (``[N]`` -> ``[N, F]``); unknown elements are an error."""
    table, known = _table_and_mask(name)
    numbers = np.asarray(numbers, dtype=np.int64)
    bad = numbers[(numbers < 1) | (numbers > MAX_Z)]
    if bad.size == 0:
        bad = numbers[~known[numbers]]
    if bad.size:
        raise DataError(
            f"element with atomic number {int(bad[0])} has no {name!r} atom features; "
            f"use atom_features 'atomic_number' or remove it from the data"
        )
    return table[numbers]
