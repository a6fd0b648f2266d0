"""``id_prop.csv`` / ``id_prop.json`` readers with upstream's layout and key options.

Every problem is reported as one line naming the file, the row/entry and the field.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignn_core.config.model import LossWeights
from alignn_core.errors import DataError
from alignn_core.io.structures import read_structure, structure_from_jarvis
from alignn_core.structures import Record

ID_PROP_NAMES = ("id_prop.json.zip", "id_prop.json", "id_prop.csv")
VOIGT_ORDER = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
"""6-vector stress order xx, yy, zz, yz, xz, xy (ASE's, as upstream reads it)."""


@dataclass(frozen=True)
class DataKeys:
    """Which record keys hold what (upstream's ``--target_key`` ... options)."""

    target: str = "total_energy"
    id: str = "jid"
    forces: str = "forces"
    stress: str = "stresses"
    atomwise: str = "forces"
    additional: str = "additional_output"

    @classmethod
    def from_config(cls, config) -> DataKeys:
        return cls(
            target=config.target_key,
            id=config.id_key,
            forces=config.force_key,
            stress=config.stresswise_key,
            atomwise=config.atomwise_key,
            additional=config.additional_output_key,
        )


def find_id_prop(root: Path) -> Path:
    """The data file in ``root``, in upstream's order of preference."""
    if not root.exists():
        raise DataError(f"{root}: data directory not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; --root-dir must be the folder holding id_prop")
    for name in ID_PROP_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no id_prop.json, id_prop.json.zip or id_prop.csv found")


def read_dataset(
    root: Path,
    keys: DataKeys = DataKeys(),
    weights: LossWeights = LossWeights(),
    file_format: str = "auto",
) -> list[Record]:
    """Read every record of the data directory ``root``."""
    path = find_id_prop(root)
    if path.suffix == ".csv":
        records = _read_csv(path, root, file_format)
    else:
        records = _read_json(path, keys, weights)
    if not records:
        raise DataError(f"{path}: dataset is empty")
    widths = {r.target.size for r in records}
    if len(widths) > 1:
        raise DataError(f"{path}: targets have different lengths {sorted(widths)}; all must match")
    return records


def _read_csv(path: Path, root: Path, file_format: str) -> list[Record]:
    text = _read_text(path)
    records = []
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip():
            continue
        where = f"{path}:{line_no}"
        if len(row) < 2:
            raise DataError(f"{where}: expected 'structure_file,target[,...]', got {row!r}")
        name = row[0].strip()
        values = [_finite(value, where, f"column {i + 2}") for i, value in enumerate(row[1:])]
        structure = read_structure(root / name, file_format)
        records.append(Record(id=name, structure=structure, target=np.asarray(values)))
    return records


def _read_json(path: Path, keys: DataKeys, weights: LossWeights) -> list[Record]:
    if path.name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                text = archive.read("id_prop.json").decode("utf-8")
        except (zipfile.BadZipFile, KeyError) as exc:
            raise DataError(f"{path}: not a zip holding id_prop.json ({exc})") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: id_prop.json inside is not UTF-8 text") from None
    else:
        text = _read_text(path)
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of records")
    return [_json_record(entry, i, path, keys, weights) for i, entry in enumerate(entries)]


def _json_record(entry, index: int, path: Path, keys: DataKeys, weights: LossWeights) -> Record:
    where = f"{path}: entry {index}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object")
    if "atoms" not in entry:
        raise DataError(f"{where}: missing key 'atoms'")
    structure = structure_from_jarvis(entry["atoms"], where)
    n = structure.n_atoms
    record_id = str(entry.get(keys.id, index))
    target = _array(_required(entry, keys.target, where), where, keys.target)
    record = Record(id=record_id, structure=structure, target=target.reshape(-1))
    if weights.forces:
        record.forces = _shaped(entry, keys.forces, where, (n, 3), "[n_atoms, 3]")
    if weights.stress:
        stress = _array(_required(entry, keys.stress, where), where, keys.stress)
        if stress.shape == (6,):
            full = np.zeros((3, 3))
            for value, (a, b) in zip(stress, VOIGT_ORDER, strict=True):
                full[a, b] = full[b, a] = value
            stress = full
        elif stress.shape != (3, 3):
            raise DataError(
                f"{where}: {keys.stress!r} has shape {list(stress.shape)}; expected 6 Voigt "
                "values (xx, yy, zz, yz, xz, xy) or a 3x3 matrix"
            )
        record.stress = stress
    if weights.atomwise:
        values = _array(_required(entry, keys.atomwise, where), where, keys.atomwise)
        if values.shape[0] != n:
            raise DataError(f"{where}: {keys.atomwise!r} has {values.shape[0]} rows for {n} atoms")
        record.atomwise = values.reshape(n, -1)  # (N,) -> (N, 1): upstream broadcasts N x N
    if weights.additional:
        record.additional = _array(
            _required(entry, keys.additional, where), where, keys.additional
        ).reshape(-1)
    return record


def _required(entry: dict, key: str, where: str):
    if key not in entry:
        raise DataError(
            f"{where}: missing key {key!r} (choose the key with the matching *_key option)"
        )
    return entry[key]


def _array(value, where: str, key: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {key!r} is not numeric") from None
    if not np.isfinite(array).all():
        raise DataError(f"{where}: {key!r} contains NaN or inf")
    return array


def _shaped(entry: dict, key: str, where: str, shape: tuple, text: str) -> np.ndarray:
    array = _array(_required(entry, key, where), where, key)
    if array.shape != shape:
        raise DataError(
            f"{where}: {key!r} has shape {list(array.shape)}; expected {text} = {list(shape)}"
        )
    return array


def _finite(value: str, where: str, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{where}: {column} is not a number: {value.strip()!r}") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: {column} is {value.strip()}; targets must be finite")
    return number


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
