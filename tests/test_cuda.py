"""CUDA: the GPU gives the CPU's numbers, for inference, training, bf16 and the TorchScript export.

Skipped where no CUDA device is visible (CI has none); on a GPU machine run
``pytest tests/test_cuda.py``. Comparisons run in float64 where the model allows it, so a
tensor left on the wrong device or a device-dependent code path shows as a real difference,
not as float32 noise; training compares one epoch's metrics, which CUDA's atomic scatter
order perturbs only at float32 rounding.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from ase import units

import alignn_core
from alignn_core.errors import ModelError
from tests.conftest import EXAMPLES
from tests.inference_models import cu_atoms, make_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 16, "embedding_features": 16}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("model") / "run")


def _predict(run_dir, device: str, structures: list) -> list:
    model = alignn_core.load_model(run_dir, device=device, dtype="float64")
    assert str(model.device).startswith(device)
    return model.predict(structures, batch_size=2)


def test_inference_on_cuda_matches_cpu(run_dir):
    structures = [cu_atoms(1), cu_atoms(2, seed=3)]
    for cpu, gpu in zip(_predict(run_dir, "cpu", structures),
                        _predict(run_dir, "cuda", structures), strict=True):  # fmt: skip
        assert gpu.energy == pytest.approx(cpu.energy, rel=1e-10)
        np.testing.assert_allclose(gpu.forces, cpu.forces, rtol=0, atol=1e-9)
        np.testing.assert_allclose(gpu.stress, cpu.stress, rtol=0, atol=1e-8)
        assert np.abs(cpu.forces).max() > 1e-4  # a structure whose forces say something


def test_ase_calculator_on_cuda_matches_cpu(run_dir):
    atoms = cu_atoms(2, seed=5)
    results = {}
    for device in ("cpu", "cuda"):
        atoms.calc = alignn_core.ALIGNNCalculator(run_dir, device=device, dtype="float64")
        results[device] = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
    assert results["cuda"][0] == pytest.approx(results["cpu"][0], rel=1e-10)
    for index in (1, 2):
        np.testing.assert_allclose(results["cuda"][index], results["cpu"][index], atol=1e-9)


def _train(run_cli, tmp_path, device: str, **changes) -> list[dict]:
    config = json.loads((EXAMPLES / "ff" / "config.json").read_text())
    config.update({"epochs": 1, "batch_size": 8, **changes})
    config["model"].update(TINY)
    path = tmp_path / f"{device}.json"
    path.write_text(json.dumps(config))
    out = tmp_path / f"run-{device}"
    code, _, err = run_cli("run", path, "--root-dir", EXAMPLES / "ff", "--output-dir", out,
                           "--device", device)  # fmt: skip
    assert code == 0, err
    return json.loads((out / "history.json").read_text())


def test_training_on_cuda_matches_cpu_and_loads_on_cpu(run_cli, tmp_path):
    cpu = _train(run_cli, tmp_path, "cpu")
    gpu = _train(run_cli, tmp_path, "cuda")
    for split in ("train", "val"):
        for key, value in cpu[0][split].items():
            assert gpu[0][split][key] == pytest.approx(value, rel=1e-3), (split, key)
    # a GPU-trained checkpoint serves on a CPU-only machine
    state = torch.load(tmp_path / "run-cuda" / "best_model.pt", map_location="cpu",
                       weights_only=True)  # fmt: skip
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    prediction = _predict(tmp_path / "run-cuda", "cpu", [cu_atoms(1)])[0]
    assert np.isfinite(prediction.forces).all()


def test_training_with_cuda_graphs_matches_eager_training(run_cli, tmp_path):
    """Two epochs with replayed steps against eager ones: same losses and MAEs (float32,
    atomic-add order aside), and the checkpoint predicts what the eager one does."""
    (tmp_path / "graphs").mkdir()
    eager = _train(run_cli, tmp_path, "cuda", epochs=2)
    replayed = _train(run_cli, tmp_path / "graphs", "cuda", epochs=2, cuda_graphs=True)
    for epoch in range(2):
        for split in ("train", "val"):
            for key, value in eager[epoch][split].items():
                assert replayed[epoch][split][key] == pytest.approx(value, rel=2e-3), (epoch, key)
    structures = [cu_atoms(1, seed=2)]
    a = _predict(tmp_path / "run-cuda", "cpu", structures)[0]
    b = _predict(tmp_path / "graphs" / "run-cuda", "cpu", structures)[0]
    np.testing.assert_allclose(b.forces, a.forces, rtol=1e-2, atol=1e-4)


def test_bf16_autocast_trains_on_cuda(run_cli, tmp_path):
    history = _train(run_cli, tmp_path, "cuda", use_amp=True)
    assert all(np.isfinite(v) for v in history[0]["train"].values())


def test_torchscript_export_runs_on_cuda(run_dir, tmp_path):
    from alignn_torch.graphs.strategies import neighbor_list
    from alignn_torchscript.export import export_run

    from alignn_core.structures import Structure

    path = export_run(run_dir, tmp_path / "model.pt", dtype="float64").path
    structure = Structure.from_ase(cu_atoms(2, seed=7))
    settings = alignn_core.load_model(run_dir, device="cpu").settings
    edges, _ = neighbor_list(structure, settings)
    arrays = (structure.positions, structure.cell, structure.numbers, edges.src, edges.dst,
              edges.shift)  # fmt: skip
    results = {}
    for device in ("cpu", "cuda"):
        module = torch.jit.load(str(path), map_location=device)
        inputs = [torch.from_numpy(np.asarray(a)).to(device) for a in arrays]
        results[device] = {k: v.cpu() for k, v in module.forward_tensors_z(*inputs, True).items()}
    for key, value in results["cpu"].items():
        torch.testing.assert_close(results["cuda"][key], value, rtol=1e-10, atol=1e-9)


def _eager_and_replayed(run_dir, dtype: str):
    eager = alignn_core.load_model(run_dir, device="cuda", dtype=dtype)
    return eager, eager.with_cuda_graphs(max_captures=2)


def test_cuda_graphs_replay_the_eager_model_along_md(run_dir):
    """NVE steps with both calculators side by side: every step's energy, forces and stress
    from replayed graphs equal eager ones (float64), through bucket changes as triplet counts
    move, and no capture falls back to eager (a fallback warns: an error here)."""
    from ase.md.verlet import VelocityVerlet

    from alignn_core.cli.md_command import thermalize

    eager, replayed = _eager_and_replayed(run_dir, "float64")
    atoms = cu_atoms(2, seed=11)
    thermalize(atoms, 600.0, np.random.default_rng(0))
    reference = atoms.copy()
    atoms.calc = replayed.calculator()
    reference.calc = eager.calculator()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(15):
            assert atoms.get_potential_energy() == pytest.approx(
                reference.get_potential_energy(), rel=1e-11, abs=1e-11
            )
            np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-10)
            np.testing.assert_allclose(atoms.get_stress(), reference.get_stress(), atol=1e-12)
            VelocityVerlet(atoms, 2 * units.fs).run(1)
            VelocityVerlet(reference, 2 * units.fs).run(1)
    counts = replayed.cuda_graph_counts
    assert counts["replays"] >= 16 and 1 <= counts["captures"] <= 4


def test_cuda_graphs_survive_to_and_refuse_the_cpu(run_dir):
    _, replayed = _eager_and_replayed(run_dir, "float32")
    assert replayed.to(dtype="float64").uses_cuda_graphs
    with pytest.raises(ModelError, match="CUDA graphs need a CUDA device"):
        replayed.to(device="cpu")


def test_cuda_graphs_predict_batches_like_eager(run_dir):
    eager, replayed = _eager_and_replayed(run_dir, "float32")
    structures = [cu_atoms(1, seed=s) for s in range(5)] + [cu_atoms(2, seed=9)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for a, b in zip(eager.predict(structures, batch_size=3),
                        replayed.predict(structures, batch_size=3), strict=True):  # fmt: skip
            assert b.energy == pytest.approx(a.energy, rel=1e-5)
            np.testing.assert_allclose(b.forces, a.forces, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(b.stress, a.stress, rtol=1e-4, atol=1e-4)


def test_md_command_with_cuda_graphs_follows_the_eager_trajectory(run_cli, run_dir, tmp_path):
    """``alignn md --device cuda --cuda-graphs`` end to end: same seed, same trajectory as
    the eager run (float64), frame by frame."""
    from ase.io import read, write

    write(tmp_path / "cu3au.vasp", cu_atoms(2, seed=13), format="vasp")
    trajectories = {}
    for flags in ((), ("--cuda-graphs",)):
        out = tmp_path / f"md{len(flags)}.traj"
        code, _, err = run_cli("md", run_dir, tmp_path / "cu3au.vasp", "--device", "cuda",
                               "--dtype", "float64", "--steps", "20", "--temperature", "500",
                               "-o", out, "--log", tmp_path / f"md{len(flags)}.log",
                               *flags)  # fmt: skip
        assert code == 0, err
        trajectories[flags] = read(out, index=":")
    eager, replayed = trajectories.values()
    assert len(eager) == len(replayed) == 21
    for a, b in zip(eager, replayed, strict=True):
        np.testing.assert_allclose(b.positions, a.positions, rtol=0, atol=1e-9)
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), rel=1e-10)
