"""Inference API and ASE calculator: loading, batching, physics consistency, neighbour reuse.

Physics checks run in float64 against ASE's own finite differences, so they test the units and
the sign convention of forces and stress, not just self-consistency.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.md.verlet import VelocityVerlet
from ase.units import fs

import alignn_core
from alignn_core.cli.md_command import thermalize
from alignn_core.errors import ConfigError, ModelError
from alignn_core.inference import InferenceModel
from alignn_core.units import EV_PER_A3_TO_GPA
from tests.conftest import EXAMPLES
from tests.inference_models import cu_atoms, make_run, molecule, run_config

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("model") / "run")


@pytest.fixture(scope="module")
def model64(run_dir):
    return alignn_core.load_model(run_dir, device="cpu", dtype="float64")


# ------------------------------------------------------------------ loading


def test_lazy_exports_do_not_import_torch_at_package_import():
    import subprocess
    import sys

    code = ("import sys, alignn_core; assert 'torch' not in sys.modules; "
            "from alignn_core import load_model, ALIGNNCalculator; print('ok')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_round_trip_matches_the_saved_module(run_dir):
    """Directory and checkpoint path load the same weights; predict equals a direct forward."""
    from alignn_core.config.loader import load_config
    from alignn_core.plugins import get_registry

    model = alignn_core.load_model(run_dir, device="cpu")
    by_file = alignn_core.load_model(run_dir / "best_model.pt", device="cpu")
    assert model.dtype == "float32" and model.origin == "alignn" and model.notes == []
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, by_file.module.state_dict()[key]), key
    config = load_config(run_dir / "config.json").config
    module = get_registry().models[config.model.name].build(config.model)
    module.load_state_dict(torch.load(run_dir / "best_model.pt", weights_only=True))
    module.eval()
    atoms = cu_atoms()
    backend = get_registry().graph_backends["torch"]
    direct = module(backend.build(alignn_core.inference.structures.structure_from_atoms(atoms),
                                  config.graph_settings), compute_stress=True)  # fmt: skip
    (prediction,) = model.predict(atoms)
    assert prediction.energy == pytest.approx(float(direct["energy"][0].detach()), rel=1e-6)
    np.testing.assert_allclose(prediction.forces, direct["grad"].detach().numpy(), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(prediction.stress, direct["stresses"][0].detach().numpy(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_batch_equals_single_structures(model64):
    structures = [cu_atoms(seed=1), cu_atoms(seed=2, a=3.7), molecule()]
    batched = model64.predict(structures, batch_size=3)
    for atoms, got in zip(structures, batched, strict=True):
        (single,) = model64.predict(atoms)
        assert got.energy == pytest.approx(single.energy, rel=1e-12)
        np.testing.assert_allclose(got.forces, single.forces, rtol=1e-10, atol=1e-12)
    assert batched[2].stress is None and batched[0].stress is not None  # molecule: no volume


def test_float32_and_float64_agree(run_dir, model64):
    model32 = alignn_core.load_model(run_dir, device="cpu", dtype="float32")
    atoms = cu_atoms(repeat=2)
    (p32,), (p64,) = model32.predict(atoms), model64.predict(atoms)
    assert p32.energy == pytest.approx(p64.energy, rel=1e-5)
    scale = np.abs(p64.forces).max()
    assert np.abs(p32.forces - p64.forces).max() <= 1e-4 * scale


def test_to_returns_a_copy_and_leaves_the_original(model64):
    model32 = model64.to(dtype="float32")
    assert model32 is not model64 and model64.module.fc.weight.dtype == torch.float64
    assert model32.module.fc.weight.dtype == torch.float32
    assert model64.to(dtype="float64", device="cpu") is model64


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_without_cuda_is_a_user_error(run_dir):
    with pytest.raises(ModelError, match="CUDA is not available"):
        alignn_core.load_model(run_dir, device="cuda")


def test_cuda_graphs_need_cuda_and_a_plugin_that_captures(model64):
    with pytest.raises(ModelError) as caught:
        model64.with_cuda_graphs()
    assert str(caught.value) == (
        "CUDA graphs need a CUDA device; this model is on cpu (use device 'cuda')"
    )
    # a third-party model plugin without ``captured_forward`` (the device is only looked at)
    elsewhere = InferenceModel(
        model64.module, model64.config, plugin=object(), backend=model64.backend,
        device=torch.device("cuda"), dtype="float64",
    )  # fmt: skip
    with pytest.raises(ModelError) as caught:
        elsewhere.with_cuda_graphs()
    assert str(caught.value) == (
        "model 'alignn_atomwise_pure' does not support CUDA graphs (its plugin has no "
        "captured_forward)"
    )
    assert not model64.uses_cuda_graphs and "cuda_graphs" not in repr(model64)
    assert model64.cuda_graph_counts == {}


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "{p}: model not found; pass a run directory (config.json + best_model.pt) "
                    "or a checkpoint file next to its config.json"),
        ("empty_dir", "{p}: no config.json in the model directory; a model directory holds "
                      "config.json and best_model.pt"),
        ("no_checkpoint", "{p}: no best_model.pt in the model directory; pass one of "
                          "last_model.pt instead"),
        ("lonely_checkpoint", "{p}: no config.json next to the checkpoint (looked in {d})"),
    ],
)  # fmt: skip
def test_model_path_mistakes(tmp_path, run_dir, layout, message):
    path = tmp_path / "m"
    if layout == "empty_dir":
        path.mkdir()
    elif layout == "no_checkpoint":
        path.mkdir()
        (path / "config.json").write_text((run_dir / "config.json").read_text())
        (path / "last_model.pt").write_bytes((run_dir / "best_model.pt").read_bytes())
    elif layout == "lonely_checkpoint":
        path.mkdir()
        path = path / "best_model.pt"
        path.write_bytes((run_dir / "best_model.pt").read_bytes())
    with pytest.raises(ModelError) as info:
        alignn_core.load_model(path)
    assert str(info.value) == message.format(p=path, d=path.parent)


def test_pickled_code_is_refused(tmp_path, run_dir):
    path = tmp_path / "m"
    path.mkdir()
    (path / "config.json").write_text((run_dir / "config.json").read_text())
    torch.save({"fc.weight": torch.zeros(1), "evil": ModelError("x")}, path / "best_model.pt")
    with pytest.raises(ModelError, match=r"cannot load the checkpoint with torch.load\("
                                         r"weights_only=True\)"):  # fmt: skip
        alignn_core.load_model(path)


def test_weights_of_another_architecture(tmp_path, run_dir):
    other = make_run(tmp_path / "other", model={"hidden_features": 8})
    (other / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(ModelError, match=r"weights do not fit the model described in .*"
                                         r"size mismatch for"):  # fmt: skip
        alignn_core.load_model(other)


def test_upstream_property_model_alignn_is_refused(tmp_path, run_dir):
    path = tmp_path / "m"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**run_config(), "model": {"name": "alignn"}}))
    (path / "best_model.pt").write_bytes((run_dir / "best_model.pt").read_bytes())
    with pytest.raises(ModelError, match="upstream's DGL property model 'alignn' is not supported"):
        alignn_core.load_model(path)


@pytest.mark.parametrize("penalty", [None, 0.3])
def test_dgl_alignn_atomwise_loads_as_pure(tmp_path, penalty):
    """Same weights under the pure model; DGL's penalty_factor (stated or its 0.1 default) and
    no ZBL, whatever the pure model's defaults are."""
    model = {**run_config()["model"], "name": "alignn_atomwise"}
    model.pop("three_body_cutoff", None)
    if penalty is not None:
        model["penalty_factor"] = penalty
    run = make_run(tmp_path / "dgl", raw_config={**run_config(), "model": model})
    state = torch.load(run / "best_model.pt", weights_only=True)
    del state["_species_table"]  # the DGL model has no such buffer
    torch.save(state, run / "best_model.pt")
    loaded = alignn_core.load_model(run, device="cpu")
    assert loaded.config.model.name == "alignn_atomwise_pure" and loaded.origin == "upstream-dgl"
    assert loaded.config.model.penalty_factor == (0.1 if penalty is None else penalty)
    assert loaded.config.model.zbl_enabled is False
    assert loaded.notes and "loaded as 'alignn_atomwise_pure'" in loaded.notes[0]
    saved = torch.load(run / "best_model.pt", weights_only=True)
    assert torch.equal(loaded.module.state_dict()["fc.weight"], saved["fc.weight"])


def test_dgl_extra_features_cannot_be_converted(tmp_path):
    model = {**run_config()["model"], "name": "alignn_atomwise", "extra_features": 4}
    model.pop("three_body_cutoff", None)
    path = tmp_path / "m"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**run_config(), "model": model}))
    (path / "best_model.pt").write_bytes(b"")
    with pytest.raises(ModelError, match=r"model.extra_features=4 adds layers \(fc1, fc2, fc3\)"):
        alignn_core.load_model(path)


def test_converted_config_errors_name_the_file(tmp_path):
    model = {**run_config()["model"], "name": "alignn_atomwise", "hidden_featurs": 3}
    path = tmp_path / "m"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**run_config(), "model": model}))
    (path / "best_model.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=rf"^{path / 'config.json'}: unknown field "
                                          r"'model.hidden_featurs'"):  # fmt: skip
        alignn_core.load_model(path)


# ------------------------------------------------------------------ calculator physics


def test_forces_and_stress_are_ase_finite_differences(model64):
    """F = -dE/dx and ASE's stress (1/V) dE/dε in eV/Å³ (sign included), both against ASE's
    central differences of the calculator's own energy."""
    atoms = cu_atoms(repeat=1, rattle=0.1)
    atoms.set_cell(atoms.cell * [1.0, 1.02, 0.97], scale_atoms=True)  # non-hydrostatic
    atoms.calc = model64.calculator(skin=None)
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 1e-2 and np.abs(stress).max() > 1e-4  # a real test
    numeric_forces = calculate_numerical_forces(atoms, eps=1e-5)
    numeric_stress = calculate_numerical_stress(atoms, eps=1e-6)
    np.testing.assert_allclose(forces, numeric_forces, atol=1e-6 * np.abs(forces).max() + 1e-9)
    np.testing.assert_allclose(stress, numeric_stress, atol=1e-6 * np.abs(stress).max() + 1e-10)
    assert atoms.get_potential_energy() == atoms.calc.results["free_energy"]


def test_stress_unit_is_gpa_over_160(model64):
    atoms = cu_atoms(rattle=0.1)
    (prediction,) = model64.predict(atoms)
    atoms.calc = model64.calculator()
    voigt = atoms.get_stress()
    s = prediction.stress / EV_PER_A3_TO_GPA
    expected = [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
    np.testing.assert_allclose(voigt, expected, rtol=1e-12, atol=0)
    # compressed cell -> more repulsive? not guaranteed for a random model; the sign is covered
    # by the finite-difference test above (ASE's numerical stress is tensile positive).


def test_molecule_has_forces_but_no_stress(model64):
    atoms = molecule()
    atoms.calc = model64.calculator()
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-5),
                               atol=1e-6 * np.abs(forces).max())  # fmt: skip
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-9)  # translation invariance
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_energy_includes_the_penalty_so_forces_stay_its_gradient(model64):
    """A 0.8 Å bond switches the short-bond penalty on. Our energy includes it (upstream's ASE
    energy, out × N, does not): finite differences of the energy must still give the forces."""
    atoms = molecule()
    atoms.positions[1] = atoms.positions[0] + [0.8, 0.0, 0.05]
    atoms.calc = model64.calculator()
    (prediction,) = model64.predict(atoms)
    penalty = model64.config.model.penalty_factor * (1.0 - np.linalg.norm(atoms.get_distance(0, 1)))
    # each of the two directed edges 0->1, 1->0 carries the penalty
    assert prediction.energy - prediction.out[0] * len(atoms) == pytest.approx(
        2 * penalty, rel=1e-9
    )
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-6),
                               atol=1e-6 * np.abs(forces).max())  # fmt: skip


def test_non_force_field_is_refused(tmp_path):
    run = make_run(tmp_path / "prop", model={"calculate_gradient": False,
                                             "energy_mult_natoms": False})  # fmt: skip
    model = alignn_core.load_model(run, device="cpu")
    with pytest.raises(ModelError, match="not trained as a force field"):
        model.calculator()
    (prediction,) = model.predict(cu_atoms())
    assert prediction.forces is None and prediction.energy is None and prediction.out.shape == (1,)


def test_force_mult_natoms_forces_are_n_times_the_gradient(tmp_path):
    """Such a model's forces are N x (-dE/dx): the calculator warns, and conserved_energy is
    kinetic + N E (what MD then conserves)."""
    run = make_run(tmp_path / "fmn", model={"force_mult_natoms": True})
    with pytest.warns(UserWarning, match="force_mult_natoms"):
        calc = alignn_core.ALIGNNCalculator(run, device="cpu", dtype="float64")
    atoms = cu_atoms(rattle=0.1)
    atoms.calc = calc
    forces = atoms.get_forces()
    numeric = calculate_numerical_forces(atoms, eps=1e-5) * len(atoms)
    np.testing.assert_allclose(forces, numeric, atol=1e-6 * np.abs(forces).max())
    assert calc.conserved_energy(atoms) == pytest.approx(len(atoms) * atoms.get_potential_energy())


# ------------------------------------------------------------------ neighbour reuse


@pytest.mark.parametrize("changes", [{}, {"max_neighbors": None},
                                     {"neighbor_strategy": "k-nearest"}])  # fmt: skip
def test_reuse_is_exactly_a_fresh_rebuild_along_md(tmp_path, changes):
    """NVE MD driven by the reusing calculator; at every step a calculator that rebuilds the
    graph from scratch must give bit-identical forces and energy."""
    run = make_run(tmp_path / "m", **changes)
    model = alignn_core.load_model(run, device="cpu", dtype="float64")
    reusing, fresh = model.calculator(skin=0.3), model.calculator(skin=None)
    atoms = cu_atoms(repeat=2, rattle=0.05)
    thermalize(atoms, 3000, np.random.default_rng(0))
    atoms.calc = reusing
    dyn = VelocityVerlet(atoms, timestep=2 * fs)
    checked = []

    def compare():
        probe = atoms.copy()
        probe.calc = fresh
        assert np.array_equal(probe.get_forces(), atoms.get_forces())
        assert probe.get_potential_energy() == atoms.get_potential_energy()
        checked.append(dyn.nsteps)

    dyn.attach(compare, interval=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no hidden fallbacks
        dyn.run(20)
    assert len(checked) == 21
    assert reusing.reuses > 0 and reusing.rebuilds >= 2 and fresh.reuses == 0


def test_a_trained_run_predicts_what_training_evaluated(run_cli, tmp_path):
    """Train (1 epoch, tiny) through the CLI, then load_model on the run directory must give the
    trainer's own test-set predictions (graph target, forces, stress) back."""
    from alignn_core.io.id_prop import DataKeys, read_dataset

    config = json.loads((EXAMPLES / "ff" / "config.json").read_text())
    config.update({"epochs": 1, "batch_size": 8, "dtype": "float64", "use_lmdb": False})
    config["model"].update({"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 16,
                            "embedding_features": 16})  # fmt: skip
    path = tmp_path / "ff.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    code, _, err = run_cli("run", path, "--root-dir", EXAMPLES / "ff", "--output-dir", out)
    assert code == 0, err
    model = alignn_core.load_model(out, device="cpu")
    assert model.dtype == "float64"
    loaded = model.config
    records = read_dataset(EXAMPLES / "ff", DataKeys.from_config(loaded),
                           loaded.model.loss_weights(), "auto")  # fmt: skip
    expected = json.loads((out / "predictions_test.json").read_text())
    # by index: ids repeat in this data set (frames of one trajectory)
    predictions = model.predict([records[row["index"]].structure for row in expected])
    for row, got in zip(expected, predictions, strict=True):
        np.testing.assert_allclose(got.out, row["prediction"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.forces, row["forces_prediction"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.stress, row["stress_prediction"], rtol=1e-9, atol=1e-12)
