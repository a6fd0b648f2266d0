"""``alignn predict``, ``alignn relax`` and ``alignn md`` end to end on a tiny model and tiny
structures, with the exact exit codes and one-line messages for user mistakes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from ase.io import read, write

from tests.conftest import EXAMPLES
from tests.inference_models import cu_atoms, make_run, molecule

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("cli") / "model")


@pytest.fixture
def files(tmp_path):
    write(tmp_path / "POSCAR-cu3au", cu_atoms(), format="vasp")
    write(tmp_path / "frames.extxyz", [cu_atoms(seed=s) for s in range(3)], format="extxyz")
    write(tmp_path / "mol.xyz", molecule(), format="extxyz")
    return tmp_path


def test_predict_files_frames_and_forces(run_cli, model_dir, files, monkeypatch):
    monkeypatch.chdir(files)
    code, out, err = run_cli("predict", model_dir, "POSCAR-cu3au", "frames.extxyz", "mol.xyz",
                             "--forces", "forces.extxyz", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert out.strip() == "wrote 5 predictions to predictions.csv and forces.extxyz"
    rows = list(csv.DictReader((files / "predictions.csv").open()))
    assert [r["id"] for r in rows] == ["POSCAR-cu3au", "frames.extxyz@0", "frames.extxyz@1",
                                       "frames.extxyz@2", "mol.xyz"]  # fmt: skip
    assert rows[0]["formula"] == "AuCu3" and rows[4]["stress_xx"] == "" and rows[0]["stress_xx"]
    frames = read(files / "forces.extxyz", index=":")
    assert len(frames) == 5
    np.testing.assert_allclose(frames[0].get_potential_energy(), float(rows[0]["energy"]))
    assert frames[0].get_forces().shape == (4, 3)
    assert float(rows[0]["fmax"]) == pytest.approx(
        np.linalg.norm(frames[0].get_forces(), axis=1).max(), rel=1e-6
    )


def test_predict_a_folder_to_json(run_cli, model_dir, tmp_path):
    out = tmp_path / "p.csv"
    code, _, err = run_cli("predict", model_dir, EXAMPLES / "props", "-o", out, "--forces",
                           tmp_path / "f.json", "--batch-size", "20", "--no-progress")  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    records = json.loads((tmp_path / "f.json").read_text())
    assert len(rows) == len(records) == 50
    assert rows[0]["id"] == "POSCAR-JVASP-10.vasp"
    assert len(records[0]["forces"]) == int(rows[0]["n_atoms"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nope", "{tmp}/POSCAR-cu3au"], "error: {tmp}/nope: model not found; pass a run "
         "directory (config.json + best_model.pt) or a checkpoint file next to its config.json"),
        (["{tmp}", "{tmp}/POSCAR-cu3au"], "error: {tmp}: no config.json in the model directory; a "
         "model directory holds config.json and best_model.pt"),
        (["{model}", "{tmp}/bad.vasp"], "error: {tmp}/bad.vasp: cannot read structure (The "
         "number of scaling factors must be 1 or 3.)"),
        (["{model}", "{tmp}/missing.vasp"], "error: {tmp}/missing.vasp: structure file not found"),
        (["{model}", "{tmp}/POSCAR-cu3au", "{tmp}/thin.vasp"], "error: structure 'thin.vasp': the "
         "periodic cell is only 1e-05 Å wide between lattice planes and would need over "
         "1,000,000 periodic images; check its lattice vectors, or set pbc False on an axis "
         "without one"),
        (["{model}", "{tmp}/POSCAR-cu3au", "--forces", "{tmp}/f.txt"], "error: --forces "
         "{tmp}/f.txt: unsupported extension '.txt'; use .extxyz, .xyz or .json"),
    ],
)  # fmt: skip
def test_predict_mistakes(run_cli, model_dir, files, args, message):
    (files / "bad.vasp").write_text("not a poscar\n")
    thin = cu_atoms()
    thin.set_cell(np.diag([5.0, 5.0, 1e-5]))  # a volume the reader accepts, planes 1e-5 Å apart
    write(files / "thin.vasp", thin, format="vasp")
    argv = [a.format(tmp=files, model=model_dir) for a in args]
    code, _, err = run_cli("predict", *argv, "--no-progress")
    assert code == 2
    assert err.strip() == message.format(tmp=files)
    assert "Traceback" not in err and not (files / "predictions.csv").exists()


def test_relax_converges_with_cell(run_cli, model_dir, files, monkeypatch):
    monkeypatch.chdir(files)
    code, out, err = run_cli("relax", model_dir, "POSCAR-cu3au", "--cell", "--optimizer", "BFGS",
                             "--steps", "200", "--quiet")  # fmt: skip
    assert code == 0, err
    assert out.startswith("converged after ") and "cell: a=" in out
    relaxed = read(files / "cu3au-relaxed.extxyz")
    traj = read(files / "cu3au-relax.traj", index=":")
    assert len(traj) >= 2 and np.linalg.norm(relaxed.get_forces(), axis=1).max() < 0.05
    assert traj[-1].get_potential_energy() <= traj[0].get_potential_energy()


def test_relax_that_runs_out_of_steps_exits_1(run_cli, model_dir, files, monkeypatch):
    monkeypatch.chdir(files)
    code, out, err = run_cli("relax", model_dir, "POSCAR-cu3au", "--fmax", "1e-9", "--steps", "2",
                             "--quiet", "-o", "out.vasp", "--trajectory", "t.extxyz")  # fmt: skip
    assert code == 1
    assert "NOT converged after 2 steps" in out
    assert err.strip().startswith("error: not converged: fmax")
    assert len(read(files / "t.extxyz", index=":")) == 3 and (files / "out.vasp").exists()


def test_relax_mistakes(run_cli, model_dir, files):
    code, _, err = run_cli("relax", model_dir, files / "mol.xyz", "--cell")
    assert code == 2
    assert err.strip() == (f"error: {files / 'mol.xyz'}: --cell needs a structure periodic in "
                           "all three directions (pbc is [False, False, False])")  # fmt: skip
    poscar = files / "POSCAR-cu3au"
    code, _, err = run_cli("relax", model_dir, poscar, "--trajectory", files / "t.vasp")
    assert code == 2
    assert err.strip() == (f"error: --trajectory {files / 't.vasp'}: 'vasp' holds one "
                           "structure; use .traj or .extxyz for a trajectory")  # fmt: skip
    code, _, err = run_cli("relax", model_dir, poscar, "--optimizer", "LBFGSX")
    assert code == 2 and "LBFGSX" in err


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_md_writes_a_trajectory_ase_reads(run_cli, model_dir, files, monkeypatch, ensemble):
    monkeypatch.chdir(files)
    code, out, err = run_cli(
        "md",
        model_dir,
        "POSCAR-cu3au",
        "--ensemble",
        ensemble,
        "--steps",
        "6",
        "--timestep",
        "1",
        "--temperature",
        "300",
        "--interval",
        "2",
    )
    assert code == 0, err
    traj = read(files / "cu3au-md.traj", index=":")
    assert len(traj) == 4  # steps 0, 2, 4, 6
    assert traj[-1].get_velocities().shape == (4, 3) and traj[-1].get_forces().shape == (4, 3)
    log = (files / "cu3au-md.log").read_text().splitlines()
    assert log[0].split()[0] == "Time[ps]" and len(log) == 5
    assert ("energy drift" in out) == (ensemble == "nve")


def test_md_mistakes(run_cli, model_dir, files):
    code, _, err = run_cli("md", model_dir, files / "POSCAR-cu3au", "--timestep", "0")
    assert code == 2 and "--timestep" in err
    code, _, err = run_cli("md", model_dir, files / "POSCAR-cu3au", "--ensemble", "npt")
    assert code == 2 and "npt" in err
    code, _, err = run_cli("md", files / "nope", files / "POSCAR-cu3au")
    assert code == 2 and err.strip().startswith(f"error: {files / 'nope'}: model not found")
    code, _, err = run_cli("md", model_dir, files / "POSCAR-cu3au", "--cuda-graphs", "--device",
                           "cpu")  # fmt: skip
    assert code == 2
    assert err.strip() == (
        "error: CUDA graphs need a CUDA device; this model is on cpu (use device 'cuda')"
    )
