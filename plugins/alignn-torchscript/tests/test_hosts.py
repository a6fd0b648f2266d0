"""The exported file in the hosts it is made for.

1. A Python process with torch and ASE but none of our packages (``ase_host.py``): ASE's
   neighbour list, an independent ``max_neighbors`` cap, float64 and float32 inputs, and a
   superset list with skin that the model must filter and cap itself.
2. A C++ program compiled against the libtorch inside the torch wheel (``cpp/alignn_eval.cpp``).

Both are compared with the *eager* model evaluated on graphs from our own backend, to 1e-5
relative (float32 model).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from alignn_core.structures import Structure

HERE = Path(__file__).resolve().parent
CPP_SOURCE = HERE.parent / "cpp" / "alignn_eval.cpp"
BUILD_BUDGET_S = 180
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


def cubic() -> Atoms:
    """Rattled 8-atom rock-salt NaCl, cubic cell."""
    atoms = bulk("NaCl", "rocksalt", a=5.0, cubic=True)
    atoms.rattle(0.08, seed=1)
    return atoms


def triclinic() -> Atoms:
    """Three elements in a skewed cell with a 0.8 Å O-Cu bond (penalty and ZBL both act)."""
    cell = np.array([[3.3, 0.2, 0.1], [0.7, 3.1, -0.3], [0.4, 0.6, 3.4]])
    frac = np.array([[0.05, 0.1, 0.0], [0.52, 0.45, 0.4], [0.3, 0.8, 0.7], [0.8, 0.2, 0.5]])
    positions = frac @ cell
    positions[2] = positions[1] + np.array([0.5, 0.45, 0.4]) * 0.80 / np.sqrt(0.6125)
    return Atoms(numbers=[11, 8, 29, 14], positions=positions, cell=cell, pbc=True)


def copper() -> Atoms:
    """1-atom fcc Cu: the atom's 12 nearest neighbours are all its own images (a tied shell
    that the 8-neighbour cap must split exactly as eager mode does)."""
    return bulk("Cu", "fcc", a=3.61)


def cscl() -> Atoms:
    """2-atom CuZn (CsCl type), sheared and rattled: small cell, real forces."""
    atoms = bulk("CuZn", "cesiumchloride", a=2.95)
    atoms.set_cell(
        atoms.cell[:] + np.array([[0, 0.1, 0], [0.05, 0, 0], [0, -0.1, 0]]), scale_atoms=True
    )
    atoms.positions[1] += [0.07, -0.04, 0.05]
    return atoms


STRUCTURES: dict[str, Callable[[], Atoms]] = {
    "cubic": cubic,
    "triclinic": triclinic,
    "fcc_cu_1atom": copper,
    "cscl_2atom": cscl,
}


def eager_reference(run: Path, atoms: Atoms, dtype: torch.dtype = torch.float32) -> dict:
    """Energy, forces and stress of the *eager* model of ``run`` on ``atoms``, with the graph
    built by our own backend (independent of any host neighbour list)."""
    from alignn_torch.graphs.backend import build_graph
    from alignn_torchscript.export import load_trained, resolve_run

    model, config, _ = load_trained(*resolve_run(run))
    model = model.to(dtype)
    settings = config.graph_settings.model_copy(update={"dtype": str(dtype).split(".")[-1]})
    output = model(build_graph(Structure.from_ase(atoms), settings), compute_stress=True)
    return {
        "energy": float(output["energy"][0].detach()),
        "forces": output["grad"].detach().double().numpy(),
        "stress": output["stresses"][0].detach().double().numpy(),
    }


def assert_close(got: Any, expected: Any, what: str, rtol: float = 1e-5, atol: float = 1e-6):
    """``max |got - expected| <= rtol * max |expected| + atol`` (one scale per quantity, so
    near-zero components are judged against the quantity's size, not their own)."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    error = float(np.abs(got - expected).max()) if got.size else 0.0
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    assert error <= rtol * scale + atol, f"{what}: max error {error:.3g} (scale {scale:.3g})"


def _child_env() -> dict[str, str]:
    """The child must not find our sources through PYTHONPATH either (editable installs are
    blocked inside ``ase_host.py`` itself); one thread, as in the parent."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def ase_host_results(pure_export: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run ``ase_host.py`` once on every structure (loading torch dominates its run time)."""
    request = {
        "model": str(pure_export),
        "structures": [
            {
                "numbers": atoms.numbers.tolist(),
                "positions": atoms.positions.tolist(),
                "cell": atoms.cell[:].tolist(),
            }
            for atoms in (make() for make in STRUCTURES.values())
        ],
    }
    done = subprocess.run(
        [sys.executable, str(HERE / "ase_host.py")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=tmp_path_factory.mktemp("ase_host"),
        env=_child_env(),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_host_without_our_packages_reads_metadata(ase_host_results: dict) -> None:
    assert ase_host_results["loaded"] == []  # nothing of ours was importable in the child
    meta = ase_host_results["metadata"]
    attributes = ase_host_results["attributes"]
    assert meta["format"] == "alignn-torchscript"
    assert meta["neighbor_strategy"] == attributes["neighbor_strategy"] == "pure_torch"
    assert meta["cutoff"] == attributes["cutoff"] == 5.0
    assert meta["max_neighbors"] == attributes["max_neighbors"] == 8
    assert meta["three_body_cutoff"] == attributes["three_body_cutoff"] == 3.0
    assert meta["atom_features"] == "cgcnn"
    assert meta["units"]["stress"] == "GPa" and "tensile positive" in meta["stress_sign"]
    assert meta["model_config"]["hidden_features"] == 16
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["forces_are_energy_gradient"] is True


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_ase_host_matches_eager(name: str, pure_run: Path, ase_host_results: dict) -> None:
    index = list(STRUCTURES).index(name)
    atoms = STRUCTURES[name]()
    expected = eager_reference(pure_run, atoms)
    results = ase_host_results["results"][index]
    for variant in ("capped", "superset", "float32"):
        got = results[variant]
        for key in ("energy", "forces", "stress"):
            assert_close(got[key], expected[key], f"{name}/{variant}/{key}")
    # The host-capped list is exactly the graph the backend builds.
    assert results["capped"]["edges"] > results["capped"]["edges"] * 0  # non-empty
    assert results["superset"]["edges"] > results["capped"]["edges"]


def test_one_atom_cell_sees_its_own_images(pure_run: Path, ase_host_results: dict) -> None:
    """fcc Cu, 1 atom: every edge is to an image of itself and the 12-fold tied shell is cut to
    8 by the cap; the energy must still be the eager one and the forces vanish by symmetry."""
    index = list(STRUCTURES).index("fcc_cu_1atom")
    got = ase_host_results["results"][index]["capped"]
    assert got["edges"] == 8
    assert np.abs(np.asarray(got["forces"])).max() < 1e-5


# ---------------------------------------------------------------------------- C++ host
def _compile_command(output: Path) -> list[str]:
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [
        "g++",
        "-std=c++20",
        "-O1",
        str(CPP_SOURCE),
        "-o",
        str(output),
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
    ]
    command += [f"-I{path}" for path in cpp_extension.include_paths()]
    for path in cpp_extension.library_paths():
        command += [f"-L{path}", f"-Wl,-rpath,{path}"]
    return [*command, "-ltorch", "-ltorch_cpu", "-lc10"]


@pytest.fixture(scope="module")
def cpp_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build ``alignn_eval`` with g++ against the wheel's libtorch (about 25 s here)."""
    if shutil.which("g++") is None:
        pytest.skip("no g++: the C++ host is not built")
    binary = tmp_path_factory.mktemp("cpp") / "alignn_eval"
    start = time.monotonic()
    try:
        done = subprocess.run(
            _compile_command(binary),
            capture_output=True,
            text=True,
            timeout=BUILD_BUDGET_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"building the C++ host took more than {BUILD_BUDGET_S} s")
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"built {binary} in {time.monotonic() - start:.0f} s")
    return binary


def _structure_text(atoms: Atoms, edges: Any, stress: bool) -> str:
    lines = [
        f"{len(atoms)} {len(edges.src)} {int(stress)}",
        " ".join(f"{v:.17g}" for v in atoms.cell[:].ravel()),
    ]
    lines += [
        f"{z} {x:.17g} {y:.17g} {w:.17g}"
        for z, (x, y, w) in zip(atoms.numbers, atoms.positions, strict=True)
    ]
    lines += [
        f"{i} {j} {a} {b} {c}"
        for i, j, (a, b, c) in zip(edges.src, edges.dst, edges.shift, strict=True)
    ]
    return "\n".join(lines) + "\n"


def _parse_cpp(text: str, n_atoms: int) -> dict[str, Any]:
    lines = text.strip().splitlines()
    header = dict(line.split() for line in lines[:5])
    forces = [[float(v) for v in line.split()] for line in lines[5 : 5 + n_atoms]]
    result: dict[str, Any] = {"header": header, "energy": float(header["energy"]), "forces": forces}
    if len(lines) > 5 + n_atoms:
        assert lines[5 + n_atoms] == "stress"
        result["stress"] = [[float(v) for v in line.split()] for line in lines[6 + n_atoms :]]
    return result


@pytest.mark.parametrize("name", ["triclinic", "cscl_2atom"])
def test_cpp_host_matches_eager(name: str, cpp_host: Path, pure_run: Path, pure_export: Path):
    """The C++ host gets the backend's own edge list (the ASE test covers independent lists)."""
    from alignn_torch.graphs.strategies import neighbor_list

    from alignn_core.config import load_config

    atoms = STRUCTURES[name]()
    settings = load_config(pure_run / "config.json").config.graph_settings
    edges, _ = neighbor_list(Structure.from_ase(atoms), settings)
    text = _structure_text(atoms, edges, True)
    done = subprocess.run(
        [str(cpp_host), str(pure_export)],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_child_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = _parse_cpp(done.stdout, len(atoms))
    assert float(got["header"]["cutoff"]) == 5.0
    assert int(got["header"]["max_neighbors"]) == 8
    assert int(got["header"]["metadata_bytes"]) > 100
    expected = eager_reference(pure_run, atoms)
    for key in ("energy", "forces", "stress"):
        assert_close(got[key], expected[key], f"C++ {name}/{key}")


def test_cpp_host_reports_bad_input(cpp_host: Path, pure_export: Path) -> None:
    """An unknown element is a clear error from inside the model, not a wrong energy."""
    text = "1 0 0\n3 0 0 0 3 0 0 0 3\n0 0 0 0\n"
    done = subprocess.run(
        [str(cpp_host), str(pure_export)],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_child_env(),
    )
    assert done.returncode == 1
    assert "atomic number 0" in done.stderr
