"""Bad input through the CLI (issue 10): one line naming the file, entry or field and what to do,
exit code 2, no traceback, and an output directory left exactly as it was. Also: checkpoints
that do not fit the config, caches from another version, and what ``alignn run`` does to an
output directory that already holds a run.

Cases already pinned elsewhere are not repeated here: JSON syntax errors, unknown fields and a
missing config file (test_cli), a missing structure file and a finished run (test_training),
truncated or planted checkpoints (test_security), and the readers' exact messages for forces,
stresses, non-numeric targets and an empty id_prop.json (test_io).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from alignn_core.training.atomic import temp_files
from tests.conftest import EXAMPLES

SMALL = {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 8, "embedding_features": 8}
POSCAR = (EXAMPLES / "props" / "POSCAR-JVASP-10.vasp").read_text()
FLAT_POSCAR = "\n".join(
    [*POSCAR.splitlines()[:2], "1 0 0", "2 0 0", "0 0 1", *POSCAR.splitlines()[5:]]
)  # two parallel lattice vectors: zero volume
THIN_POSCAR = "\n".join(
    [*POSCAR.splitlines()[:2], "5 0 0", "0 5 0", "0 0 0.0001", *POSCAR.splitlines()[5:]]
)  # a volume the reader accepts, lattice planes 1e-4 Å apart: the neighbour search refuses it


def _config(path: Path, example: str = "props", model: dict | None = None, **changes) -> Path:
    config = json.loads((EXAMPLES / example / "config.json").read_text())
    config.update({"epochs": 1, "batch_size": 8, "progress": False, **changes})
    config["model"].update({**SMALL, **(model or {})})
    path.write_text(json.dumps(config))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def _error_line(run_cli, *args) -> str:
    """The one stderr line of a command that must fail with exit code 2."""
    code, _, err = run_cli(*args)
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def earlier(tmp_path) -> Path:
    """An output directory holding files a failed run must leave alone."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"from": "an earlier run"}\n')
    (out / "history.json").write_text("[]\n")
    (out / "notes.txt").write_text("precious")
    return out


# -- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "raw", "message"),
    [
        ({"epochs": "ten"}, None, "epochs: Input should be a valid integer, unable to parse string "
         "as an integer (got 'ten')"),
        ({"cutoff": -1}, None, "cutoff: Input should be greater than 0 (got -1)"),
        ({"train_ratio": 0.9, "val_ratio": 0.2}, None,
         "train_ratio + val_ratio + test_ratio = 1.2 exceeds 1; lower one of them"),
        ({"batch_size": 0}, None, "batch_size: Input should be greater than or equal to 1 (got 0)"),
        ({}, b"", "file is empty; expected a JSON object"),
        ({}, b" \n\t\n", "file is empty; expected a JSON object"),
        ({}, b"\xff\xfe{}", "not UTF-8 text (invalid start byte at byte 0)"),
        ({}, b"[1, 2]", "expected a JSON object at the top level"),
    ],
    ids=["wrong-type", "negative-cutoff", "ratios-over-1", "batch-size-0", "empty-file",
         "blank-file", "not-utf8", "not-an-object"],
)  # fmt: skip
def test_bad_config(run_cli, tmp_path, earlier, changes, raw, message):
    path = _config(tmp_path / "config.json", **changes)
    if raw is not None:
        path.write_bytes(raw)
    before = _snapshot(earlier)
    line = _error_line(run_cli, "run", path, "--root-dir", EXAMPLES / "props", "--output-dir",
                       earlier)  # fmt: skip
    assert line == f"error: {path}: {message}"
    assert _snapshot(earlier) == before


def test_config_path_is_a_directory(run_cli, tmp_path):
    line = _error_line(run_cli, "run", tmp_path, "--output-dir", tmp_path / "out")
    assert line == f"error: {tmp_path}: is a directory, expected a JSON config file"
    assert not (tmp_path / "out").exists()


# -- data -----------------------------------------------------------------------------------------
def _csv_data(root: Path, rows: str, files: dict[str, str | bytes | None]) -> Path:
    root.mkdir()
    (root / "id_prop.csv").write_text(rows)
    for name, content in files.items():
        if content is None:
            (root / name).mkdir()
        elif isinstance(content, bytes):
            (root / name).write_bytes(content)
        else:
            (root / name).write_text(content)
    return root


GOOD = {"a.vasp": POSCAR}
CIF = """data_x
_cell_length_a 3.3
_cell_length_b 3.3
_cell_length_c 6.2
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 120
loop_
  _atom_site_type_symbol
  _atom_site_fract_x
"""  # a loop cut off before its rows


@pytest.mark.parametrize(
    ("rows", "files", "message"),
    [
        ("a.vasp,1.0\na.vasp,nan\n", GOOD, "{d}/id_prop.csv:2: column 2 is nan; targets must be "
         "finite"),
        ("a.vasp,inf\n", GOOD, "{d}/id_prop.csv:1: column 2 is inf; targets must be finite"),
        ("a.vasp,1,-inf\n", GOOD, "{d}/id_prop.csv:1: column 3 is -inf; targets must be finite"),
        ("bad.cif,1\n", {"bad.cif": CIF}, "{d}/bad.cif: cannot read structure (StopIteration)"),
        ("bad.xyz,1\n", {"bad.xyz": "3\ncomment\nSi 0 0 0\n"},
         "{d}/bad.xyz: cannot read structure (ase.io.extxyz: Frame has 1 atoms, expected 3)"),
        ("bin.vasp,1\n", {"bin.vasp": b"\xff\xfe\x00\x01"}, "{d}/bin.vasp: cannot read structure "
         "('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"),
        ("flat.vasp,1\n", {"flat.vasp": FLAT_POSCAR},
         "{d}/flat.vasp: lattice is degenerate (cell volume 0 Å^3)"),
        ("a.vasp,1\nthin.vasp,1\n" * 6, {"a.vasp": POSCAR, "thin.vasp": THIN_POSCAR},
         "structure 'thin.vasp': the periodic cell is only 0.0001 Å wide between lattice planes "
         "and would need over 1,000,000 periodic images; check its lattice vectors, or set pbc "
         "False on an axis without one"),
        ("folder.vasp,1\n", {"folder.vasp": None},
         "{d}/folder.vasp: is a directory, expected a structure file"),
        ("a.vasp\n", GOOD, "{d}/id_prop.csv:1: expected 'structure_file,target[,...]', got "
         "['a.vasp']"),
        ("a.vasp,1\na.vasp,1,2\n", GOOD,
         "{d}/id_prop.csv: targets have different lengths [1, 2]; all must match"),
        ("", {}, "{d}/id_prop.csv: dataset is empty"),
        ("\n\n", {}, "{d}/id_prop.csv: dataset is empty"),
    ],
    ids=["nan-target", "inf-target", "minus-inf-second-target", "malformed-cif", "malformed-xyz",
         "binary-poscar", "zero-volume-lattice", "thin-lattice", "directory-not-file",
         "no-target-column", "ragged-targets", "empty-csv", "blank-csv"],
)  # fmt: skip
def test_bad_csv_data(run_cli, tmp_path, earlier, rows, files, message):
    data = _csv_data(tmp_path / "data", rows, files)
    before = _snapshot(earlier)
    line = _error_line(run_cli, "run", _config(tmp_path / "c.json"), "--root-dir", data,
                       "--output-dir", earlier)  # fmt: skip
    assert line == "error: " + message.format(d=data)
    assert _snapshot(earlier) == before


def _ff_data(root: Path, mutate) -> Path:
    entries = json.loads((EXAMPLES / "ff" / "id_prop.json").read_text())[:12]
    mutate(entries)
    root.mkdir()
    (root / "id_prop.json").write_text(json.dumps(entries))
    return root


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e[1].update(forces=[[0, 0, 0]]),
         "entry 1: 'forces' has shape [1, 3]; expected [n_atoms, 3] = [10, 3]"),
        (lambda e: e[2].update(stresses=[1, 2, 3, 4, 5]),
         "entry 2: 'stresses' has shape [5]; expected 6 Voigt values (xx, yy, zz, yz, xz, xy) "
         "or a 3x3 matrix"),
        (lambda e: e[3].update(total_energy=float("inf")),
         "entry 3: 'total_energy' contains NaN or inf"),
    ],
    ids=["forces-shape", "stress-length", "inf-energy"],
)  # fmt: skip
def test_bad_force_field_data(run_cli, tmp_path, earlier, mutate, message):
    data = _ff_data(tmp_path / "data", mutate)
    config = _config(tmp_path / "c.json", "ff")
    before = _snapshot(earlier)
    line = _error_line(run_cli, "run", config, "--root-dir", data, "--output-dir", earlier)
    assert line == f"error: {data / 'id_prop.json'}: {message}"
    assert _snapshot(earlier) == before


def test_json_data_that_is_not_utf8(run_cli, tmp_path, earlier):
    data = tmp_path / "data"
    data.mkdir()
    (data / "id_prop.json").write_bytes(b'[{"jid": "\xe9"}]')
    line = _error_line(run_cli, "run", _config(tmp_path / "c.json", "ff"), "--root-dir", data,
                       "--output-dir", earlier)  # fmt: skip
    assert line == f"error: {data / 'id_prop.json'}: not UTF-8 text (bad byte at offset 10)"


def test_root_dir_that_is_a_file(run_cli, tmp_path, earlier):
    line = _error_line(run_cli, "run", _config(tmp_path / "c.json"), "--root-dir",
                       EXAMPLES / "props" / "id_prop.csv", "--output-dir", earlier)  # fmt: skip
    assert line == (f"error: {EXAMPLES / 'props' / 'id_prop.csv'}: not a directory; --root-dir "
                    "must be the folder holding id_prop")  # fmt: skip


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_output_dir_that_is_a_file(run_cli, tmp_path, extra):
    target = tmp_path / "results.txt"
    target.write_text("precious")
    line = _error_line(run_cli, "run", _config(tmp_path / "c.json"), "--root-dir",
                       EXAMPLES / "props", "--output-dir", target, *extra)  # fmt: skip
    assert line == f"error: {target}: exists and is not a directory; choose another --output-dir"
    assert target.read_text() == "precious"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_train": 40, "n_val": 5, "n_test": 10}, "split needs n_train + n_val + n_test = "
         "40 + 5 + 10 = 55 structures but the dataset has 50; lower the counts"),
        ({"val_ratio": 0.0}, "split leaves the validation set empty; set n_val or val_ratio so "
         "that at least one structure is used for validation"),
        ({"train_ratio": 0.0}, "split leaves the training set empty; raise n_train or "
         "train_ratio"),
    ],
    ids=["more-than-the-dataset", "empty-val", "empty-train"],
)  # fmt: skip
def test_impossible_split(run_cli, tmp_path, earlier, changes, message):
    before = _snapshot(earlier)
    line = _error_line(run_cli, "run", _config(tmp_path / "c.json", **changes), "--root-dir",
                       EXAMPLES / "props", "--output-dir", earlier)  # fmt: skip
    assert line == f"error: {message}"
    assert _snapshot(earlier) == before


def test_duplicate_ids_and_an_empty_test_split_train(run_cli, tmp_path):
    """Repeated ids are allowed (frames of one trajectory share one); rows keep their index.
    With test_ratio 0 there is no test set and no test outputs, and that is not an error."""
    data = tmp_path / "data"
    shutil.copytree(EXAMPLES / "props", data)
    rows = (data / "id_prop.csv").read_text().splitlines()
    (data / "id_prop.csv").write_text("\n".join(rows[:20] + rows[:20]) + "\n")
    out = tmp_path / "out"
    config = _config(tmp_path / "c.json", test_ratio=0.0, val_ratio=0.2, train_ratio=0.8)
    code, _, err = run_cli("run", config, "--root-dir", data, "--output-dir", out)
    assert code == 0, err
    ids = json.loads((out / "ids_train_val_test.json").read_text())
    assert (len(ids["id_train"]), len(ids["id_val"]), ids["id_test"]) == (32, 8, [])
    assert len(set(ids["id_train"])) < len(ids["id_train"])  # duplicates kept
    lines = (out / "predictions_train.csv").read_text().splitlines()[1:]
    assert len({tuple(line.split(",")[:2]) for line in lines}) == 32  # (id, index) unique
    assert not (out / "predictions_test.csv").exists()
    assert not (out / "prediction_results_test_set.csv").exists()
    summary = json.loads((out / "run_summary.json").read_text())
    assert set(summary["metrics"]) == {"train", "val"}


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 1-epoch property run (hidden_features 8) to copy from."""
    from alignn_core.cli.app import main

    root = tmp_path_factory.mktemp("trained")
    config = _config(root / "config.json")
    assert main(["run", str(config), "--root-dir", str(EXAMPLES / "props"), "--output-dir",
                 str(root / "run")]) == 0  # fmt: skip
    return root / "run"


def _copy_run(trained: Path, to: Path, finished: bool = False) -> Path:
    shutil.copytree(trained, to, ignore=shutil.ignore_patterns("cache"))
    if not finished:
        (to / "run_summary.json").unlink()
    return to


MISMATCH = ("size mismatch for atom_embedding.layer.0.weight: checkpoint shape [8, 92], model "
            "shape [16, 92], and 54 more parameters differ")  # fmt: skip


def test_resume_with_a_config_of_other_shapes(run_cli, tmp_path, trained):
    out = _copy_run(trained, tmp_path / "run")
    before = _snapshot(out)
    config = _config(tmp_path / "c.json", model={"hidden_features": 16}, epochs=2,
                     resume_checkpoint=True)  # fmt: skip
    line = _error_line(run_cli, "run", config, "--root-dir", EXAMPLES / "props", "--output-dir",
                       out)  # fmt: skip
    assert line == (
        f"error: {out / 'current_state.pt'}: weights do not fit the model of this config "
        f"({MISMATCH}); resume with the config the run was started with "
        f"({out / 'config.json'}), or train in another --output-dir"
    )
    assert _snapshot(out) == before  # config.json still describes the checkpoints


def test_predict_with_a_config_of_other_shapes(run_cli, tmp_path, trained):
    out = _copy_run(trained, tmp_path / "run", finished=True)
    config = json.loads((out / "config.json").read_text())
    config["model"]["hidden_features"] = 16
    (out / "config.json").write_text(json.dumps(config))
    line = _error_line(run_cli, "predict", out, EXAMPLES / "props" / "POSCAR-JVASP-10.vasp",
                       "-o", tmp_path / "p.csv", "--no-progress")  # fmt: skip
    assert line == (
        f"error: {out / 'best_model.pt'}: weights do not fit the model described in "
        f"{out / 'config.json'} ({MISMATCH}); use the config.json the checkpoint was trained with"
    )
    assert not (tmp_path / "p.csv").exists()


def test_resume_from_a_state_file_that_is_not_one(run_cli, tmp_path, trained):
    out = _copy_run(trained, tmp_path / "run")
    shutil.copy(out / "best_model.pt", out / "current_state.pt")  # a state dict, not a state
    before = _snapshot(out)
    config = _config(tmp_path / "c.json", epochs=2, resume_checkpoint=True)
    line = _error_line(run_cli, "run", config, "--root-dir", EXAMPLES / "props", "--output-dir",
                       out)  # fmt: skip
    assert line == (f"error: {out / 'current_state.pt'}: not a training state written by alignn "
                    "run (no 'epoch'); start a new run in another --output-dir")  # fmt: skip
    assert _snapshot(out) == before


def test_resume_from_a_truncated_state(run_cli, tmp_path, trained):
    out = _copy_run(trained, tmp_path / "run")
    data = (out / "current_state.pt").read_bytes()
    (out / "current_state.pt").write_bytes(data[: len(data) // 3])
    before = _snapshot(out)
    config = _config(tmp_path / "c.json", epochs=2, resume_checkpoint=True)
    line = _error_line(run_cli, "run", config, "--root-dir", EXAMPLES / "props", "--output-dir",
                       out)  # fmt: skip
    assert line.startswith(f"error: {out / 'current_state.pt'}: cannot load the checkpoint with "
                           "torch.load(weights_only=True) (")  # fmt: skip
    assert _snapshot(out) == before


def test_resume_with_nothing_to_resume(run_cli, tmp_path, earlier):
    before = _snapshot(earlier)
    config = _config(tmp_path / "c.json", resume_checkpoint=True)
    line = _error_line(run_cli, "run", config, "--root-dir", EXAMPLES / "props", "--output-dir",
                       earlier)  # fmt: skip
    assert line == (f"error: {earlier}: resume_checkpoint is set but there is no "
                    "current_state.pt and current_model.pt to resume from")  # fmt: skip
    assert _snapshot(earlier) == before


# -- an output directory that holds a run ---------------------------------------------------------
def test_unfinished_run_is_not_restarted_silently(run_cli, tmp_path, trained):
    out = _copy_run(trained, tmp_path / "run")  # checkpoints, no run_summary.json
    before = _snapshot(out)
    config = _config(tmp_path / "c.json", epochs=2)
    line = _error_line(run_cli, "run", config, "--root-dir", EXAMPLES / "props", "--output-dir",
                       out)  # fmt: skip
    assert line == (
        f"error: {out}: holds an unfinished run (current_state.pt but no run_summary.json); set "
        "resume_checkpoint to continue it, pass --overwrite to start again, or choose another "
        "--output-dir"
    )
    assert _snapshot(out) == before


def test_overwrite_removes_every_output_of_the_old_run(run_cli, tmp_path, trained):
    out = _copy_run(trained, tmp_path / "run", finished=True)
    # outputs a force-field run would have left, which this property run does not write
    (out / "predictions_test.json").write_text("[]")
    (out / ".best_model.pt.abcd1234.tmp").write_bytes(b"torn")  # a killed write's temp file
    (out / "notes.txt").write_text("precious")
    (out / "cache").mkdir()
    (out / "cache" / "keep").write_text("x")
    config = _config(tmp_path / "c.json")
    code, _, err = run_cli("run", config, "--root-dir", EXAMPLES / "props", "--output-dir", out,
                           "--overwrite")  # fmt: skip
    assert code == 0, err
    assert not (out / "predictions_test.json").exists() and temp_files(out) == []
    assert (out / "notes.txt").read_text() == "precious" and (out / "cache" / "keep").exists()
    assert (out / "run_summary.json").exists() and (out / "best_model.pt").exists()


def test_written_files_follow_the_umask(tmp_path):
    import os

    from alignn_core.training.atomic import save_json

    save_json({"a": 1}, tmp_path / "x.json")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask


# -- caches ---------------------------------------------------------------------------------------
def test_cache_of_another_version_through_the_cli(run_cli, tmp_path):
    """A cache whose manifest says another format/backend version (an older or newer
    alignn-lmdb or graph backend) is refused with read_existing true and rebuilt without."""
    pytest.importorskip("alignn_lmdb")
    from alignn_core.plugins import get_registry

    version = get_registry().graph_backends["torch"].version
    cache = tmp_path / "cache"
    first = _config(tmp_path / "a.json", use_lmdb=True, cache_dir=str(cache))
    assert run_cli("run", first, "--root-dir", EXAMPLES / "props", "--output-dir",
                   tmp_path / "a")[0] == 0  # fmt: skip
    manifest_path = cache / "train" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(format_version=0, backend_version="0.0-old")
    manifest_path.write_text(json.dumps(manifest))
    reuse = _config(tmp_path / "b.json", use_lmdb=True, cache_dir=str(cache), read_existing=True)
    line = _error_line(run_cli, "run", reuse, "--root-dir", EXAMPLES / "props", "--output-dir",
                       tmp_path / "b")  # fmt: skip
    assert line == (
        f"error: {cache / 'train'} was built from different inputs (format_version: cache 0, "
        f'run 1; backend_version: cache "0.0-old", run "{version}"); set read_existing to false '
        "to rebuild it"
    )
    rebuild = _config(tmp_path / "c.json", use_lmdb=True, cache_dir=str(cache))
    code, _, err = run_cli("run", rebuild, "--root-dir", EXAMPLES / "props", "--output-dir",
                           tmp_path / "c")  # fmt: skip
    assert code == 0, err
    assert json.loads(manifest_path.read_text())["backend_version"] == str(version)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_upstream_pickled_cache_is_refused_without_running(run_cli, tmp_path):
    """Upstream ALIGNN's LMDB caches hold pickles and no manifest: with read_existing true the
    run stops at the missing manifest, before a single record is decoded."""
    lmdb = pytest.importorskip("lmdb")
    cache = tmp_path / "cache"
    marker = tmp_path / "pwned"
    for split in ("train", "val", "test"):
        (cache / split).mkdir(parents=True)
        env = lmdb.open(str(cache / split), map_size=1 << 22)
        with env.begin(write=True) as txn:
            txn.put(b"0", pickle.dumps(_Payload(marker)))
        env.close()
    config = _config(tmp_path / "c.json", use_lmdb=True, cache_dir=str(cache), read_existing=True)
    line = _error_line(run_cli, "run", config, "--root-dir", EXAMPLES / "props", "--output-dir",
                       tmp_path / "out")  # fmt: skip
    assert line == (f"error: {cache / 'train'}: not an alignn-lmdb cache (no manifest.json); "
                    "set read_existing to false to rebuild it")  # fmt: skip
    assert not marker.exists()
