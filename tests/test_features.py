"""Atom feature tables: widths, coverage, and the error for elements without features."""

from __future__ import annotations

import numpy as np
import pytest

from alignn_core.errors import DataError
from alignn_core.features import FEATURE_WIDTHS, atom_features, feature_table, supported_numbers


@pytest.mark.parametrize("name", sorted(FEATURE_WIDTHS))
def test_tables_have_the_documented_width(name):
    assert feature_table(name).shape[1] == FEATURE_WIDTHS[name]


def test_coverage_matches_jarvis():
    assert supported_numbers("cgcnn").tolist() == list(range(1, 101))
    assert supported_numbers("basic").tolist() == list(range(1, 104))
    assert supported_numbers("cfid").tolist() == list(range(1, 104))


def test_cgcnn_rows_are_concatenated_one_hots():
    # nine one-hot blocks; an element with a missing property (jarvis' table) has a zero block
    table = feature_table("cgcnn")[1:101]
    assert set(np.unique(table)) == {0.0, 1.0}
    assert table.sum(axis=1).max() == 9 and table.sum(axis=1).min() >= 6


def test_atomic_number_and_basic_start_with_z():
    numbers = np.array([1, 14, 29, 83])
    assert atom_features(numbers, "atomic_number")[:, 0].tolist() == [1, 14, 29, 83]
    assert atom_features(numbers, "basic")[:, 0].tolist() == [1, 14, 29, 83]


def test_distinct_elements_have_distinct_rows():
    # up to Ba every element is distinguishable; some lanthanides/actinides share cgcnn rows
    rows = atom_features(np.arange(1, 57), "cgcnn")
    assert len({tuple(r) for r in rows}) == 56


def test_unsupported_element_is_an_error():
    with pytest.raises(DataError) as info:
        atom_features(np.array([29, 101]), "cgcnn")
    assert str(info.value) == (
        "element with atomic number 101 has no 'cgcnn' atom features; use atom_features "
        "'atomic_number' or remove it from the data"
    )
