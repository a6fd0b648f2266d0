"""Readers: upstream's data layout, and one-line errors naming file, entry and field."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from alignn_core.config.model import LossWeights
from alignn_core.errors import DataError
from alignn_core.io import DataKeys, read_dataset
from tests.conftest import EXAMPLES

FF = LossWeights(graph=1, forces=1, stress=1)


def _ff_dir(tmp_path, mutate=None, count: int = 3):
    entries = json.loads((EXAMPLES / "ff" / "id_prop.json").read_text())[:count]
    if mutate:
        mutate(entries)
    (tmp_path / "id_prop.json").write_text(json.dumps(entries))
    return tmp_path


def _error(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_dataset(*args, **kwargs)
    return str(info.value)


def test_csv_example_reads_poscars():
    records = read_dataset(EXAMPLES / "props")
    assert len(records) == 50 and records[0].id == "POSCAR-JVASP-90856.vasp"
    assert records[0].target.shape == (1,)


def test_json_voigt_stress_becomes_symmetric_3x3(tmp_path):
    def set_voigt(entries):
        entries[0]["stresses"] = [1, 2, 3, 4, 5, 6]

    record = read_dataset(_ff_dir(tmp_path, set_voigt), weights=FF)[0]
    # xx, yy, zz, yz, xz, xy
    assert np.array_equal(record.stress, [[1, 6, 5], [6, 2, 4], [5, 4, 3]])


def test_fractional_and_cartesian_coords_agree(tmp_path):
    entries = json.loads((EXAMPLES / "ff" / "id_prop.json").read_text())[:1]
    atoms = entries[0]["atoms"]
    cart = np.asarray(atoms["coords"]) @ np.asarray(atoms["lattice_mat"])
    entries.append({**entries[0], "atoms": {**atoms, "coords": cart.tolist(), "cartesian": True}})
    (tmp_path / "id_prop.json").write_text(json.dumps(entries))
    a, b = read_dataset(tmp_path, weights=FF)
    assert np.allclose(a.structure.positions, b.structure.positions)


def test_zipped_json_is_read(tmp_path):
    (tmp_path / "plain").mkdir()
    source = _ff_dir(tmp_path / "plain")
    with zipfile.ZipFile(tmp_path / "id_prop.json.zip", "w") as archive:
        archive.write(source / "id_prop.json", "id_prop.json")
    assert len(read_dataset(tmp_path, weights=FF)) == 3


def test_custom_keys(tmp_path):
    def rename(entries):
        for e in entries:
            e["energy"] = e.pop("total_energy")
            e["name"] = e.pop("jid")

    expected = json.loads((EXAMPLES / "ff" / "id_prop.json").read_text())[0]["jid"]
    records = read_dataset(_ff_dir(tmp_path, rename), DataKeys(target="energy", id="name"))
    assert records[0].id == expected


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e[1].update(forces=[[0, 0, 0]]),
         "entry 1: 'forces' has shape [1, 3]; expected [n_atoms, 3] = [10, 3]"),
        (lambda e: e[2].update(stresses=[1, 2, 3]),
         "entry 2: 'stresses' has shape [3]; expected 6 Voigt values (xx, yy, zz, yz, xz, xy) "
         "or a 3x3 matrix"),
        (
            lambda e: e[0].update(total_energy=float("nan")),
            "entry 0: 'total_energy' contains NaN or inf",
        ),
        (lambda e: e[0].update(total_energy="abc"), "entry 0: 'total_energy' is not numeric"),
        (lambda e: e[0].pop("forces"),
         "entry 0: missing key 'forces' (choose the key with the matching *_key option)"),
        (lambda e: e[1]["atoms"].pop("lattice_mat"), "entry 1: atoms is missing key 'lattice_mat'"),
        (lambda e: e[1]["atoms"]["elements"].__setitem__(0, "Xx"),
         "entry 1: unknown element symbol 'Xx'"),
    ],
)  # fmt: skip
def test_bad_json_records(tmp_path, mutate, message):
    root = _ff_dir(tmp_path, mutate)
    assert _error(root, weights=FF) == f"{root / 'id_prop.json'}: {message}"


def test_bad_csv_rows(tmp_path):
    (tmp_path / "id_prop.csv").write_text("POSCAR-JVASP-10.vasp,1.0\nPOSCAR-JVASP-10.vasp,abc\n")
    (tmp_path / "POSCAR-JVASP-10.vasp").write_text(
        (EXAMPLES / "props" / "POSCAR-JVASP-10.vasp").read_text()
    )
    assert _error(tmp_path) == f"{tmp_path / 'id_prop.csv'}:2: column 2 is not a number: 'abc'"


def test_malformed_poscar(tmp_path):
    (tmp_path / "id_prop.csv").write_text("bad.vasp,1.0\n")
    (tmp_path / "bad.vasp").write_text("not a poscar\n")
    assert _error(tmp_path).startswith(f"{tmp_path / 'bad.vasp'}: cannot read structure (")


def test_no_id_prop(tmp_path):
    assert _error(tmp_path) == f"{tmp_path}: no id_prop.json, id_prop.json.zip or id_prop.csv found"


def test_empty_dataset(tmp_path):
    (tmp_path / "id_prop.json").write_text("[]")
    assert _error(tmp_path) == f"{tmp_path / 'id_prop.json'}: dataset is empty"


def test_non_utf8(tmp_path):
    (tmp_path / "id_prop.csv").write_bytes(b"\xff\xfe,1\n")
    assert _error(tmp_path) == f"{tmp_path / 'id_prop.csv'}: not UTF-8 text (bad byte at offset 0)"
