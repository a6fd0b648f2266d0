"""``alignn export torchscript``: the command, the console script, the Exporter object, what it
refuses, and the options it reproduces.

Every successful export has already compared the written file with the eager model on a
two-element probe cell (``check_export``); these tests assert that the comparison ran and was
tight, for each option the scripted path must reproduce.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from alignn_core.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


def test_cli_writes_a_self_describing_file(pure_export: Path) -> None:
    with zipfile.ZipFile(pure_export) as archive:
        names = archive.namelist()
        meta_name = next(n for n in names if n.endswith("/extra/metadata.json"))
        meta = json.loads(archive.read(meta_name))
    assert meta["format_version"] == 1
    assert meta["neighbor_list"]["min_distance"] == pytest.approx(1e-4)
    assert meta["training_config"]["model"]["name"] == "alignn_atomwise_pure"
    assert meta["checkpoint_sha256"] and len(meta["checkpoint_sha256"]) == 64
    assert 14 in meta["supported_atomic_numbers"] and 0 not in meta["supported_atomic_numbers"]
    loaded = torch.jit.load(str(pure_export))
    assert json.loads(loaded.metadata()) == meta
    assert {"forward", "forward_tensors_z"} <= set(loaded._c._method_names())


def test_forward_is_upstreams_signature(pure_export: Path) -> None:
    """``forward`` and ``forward_tensors_z`` are one call; ``compute_stress`` defaults to off."""
    model = torch.jit.load(str(pure_export))
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.3, 1.2, 1.1]], dtype=torch.float64)
    lattice = torch.eye(3, dtype=torch.float64) * 3.0
    numbers = torch.tensor([11, 17])
    src, dst = torch.tensor([0, 1]), torch.tensor([1, 0])
    shift = torch.zeros(2, 3, dtype=torch.long)
    plain = model(positions, lattice, numbers, src, dst, shift)
    named = model.forward_tensors_z(positions, lattice, numbers, src, dst, shift, True)
    assert set(plain) == {"energy", "forces"} and set(named) == {"energy", "forces", "stress"}
    assert plain["energy"].dim() == 0 and named["stress"].shape == (3, 3)
    torch.testing.assert_close(plain["forces"], named["forces"])
    with torch.no_grad():  # grad mode is switched on inside
        assert model(positions, lattice, numbers, src, dst, shift)["forces"].abs().sum() > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(numbers=torch.tensor([11, 200])), "atomic number out of range"),
        (dict(numbers=torch.tensor([11, 0])), "atomic number 0 has no atom features"),
        (dict(src=torch.tensor([0, 2])), "neighbour index out of range"),
        (dict(shift=torch.zeros(2, 2)), "shift [E, 3]"),
        (dict(numbers=torch.tensor([11.0, 17.0])), "int64"),
    ],
)
def test_host_mistakes_are_clear_errors(pure_export: Path, change: dict, message: str) -> None:
    model = torch.jit.load(str(pure_export))
    inputs = dict(
        positions=torch.tensor([[0.0, 0.0, 0.0], [1.3, 1.2, 1.1]]),
        lattice=torch.eye(3) * 3.0,
        numbers=torch.tensor([11, 17]),
        src=torch.tensor([0, 1]),
        dst=torch.tensor([1, 0]),
        shift=torch.zeros(2, 3),
    )
    inputs.update(change)
    with pytest.raises(Exception, match=message.replace("[", r"\[")):
        model.forward_tensors_z(*inputs.values(), False)


def test_console_script_accepts_upstream_flags(pure_run: Path, tmp_path: Path, capsys) -> None:
    from alignn_torchscript.cli import script_main

    output = tmp_path / "upstream_style.pt"
    argv = ["--checkpoint", str(pure_run / "best_model.pt"), "--config",
            str(pure_run / "config.json"), "--out", str(output), "--atom-features", "cgcnn",
            "--test"]  # fmt: skip
    assert script_main(argv) == 0
    assert output.is_file()
    assert script_main(["--model-dir", str(pure_run), "--output", str(output), "--no-check"]) == 0
    assert script_main(["--model-dir", str(pure_run), "-o", str(output),
                        "--atom-features", "basic"]) == 2  # fmt: skip
    assert "silently change" in capsys.readouterr().err
    assert script_main(["-o", str(output)]) == 2  # upstream's bundled default does not exist


def test_exporter_is_registered(pure_run: Path, tmp_path: Path) -> None:
    from alignn_torchscript.export import load_trained, read_metadata, resolve_run

    from alignn_core.plugins import get_registry

    exporter = get_registry().exporters["torchscript"]
    model, config, _ = load_trained(*resolve_run(pure_run / "best_model.pt"))
    path = exporter.export(model, config, tmp_path / "via_registry.pt", dtype="float64")
    assert read_metadata(path)["dtype"] == "float64"


def _refusal(run_cli, run: Path, tmp_path: Path) -> str:
    code, out, err = run_cli("export", "torchscript", run, "-o", tmp_path / "x.pt")
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.pt").exists()
    return err


@pytest.mark.parametrize(
    ("top", "model", "message"),
    [
        ({"neighbor_strategy": "k-nearest", "three_body_cutoff": None}, {}, "'k-nearest'"),
        ({"classification_threshold": 0.5}, {"classification": True}, "classification"),
        ({}, {"link": "log"}, "link 'log'"),
        ({}, {"output_features": 2}, "output_features=2"),
    ],
)
def test_refuses_what_it_cannot_reproduce(
    new_run: Callable[..., Path], run_cli, tmp_path: Path, top, model, message
) -> None:
    assert message in _refusal(run_cli, new_run(top, model), tmp_path)


def test_refuses_missing_inputs(new_run: Callable[..., Path], run_cli, tmp_path: Path) -> None:
    assert "no such run directory" in _refusal(run_cli, tmp_path / "nowhere", tmp_path)
    run = new_run()
    (run / "best_model.pt").unlink()
    assert "checkpoint not found" in _refusal(run_cli, run, tmp_path)
    other = new_run(model={"hidden_features": 8})
    (run / "best_model.pt").write_bytes((other / "best_model.pt").read_bytes())
    assert "do not fit" in _refusal(run_cli, run, tmp_path)


@pytest.mark.parametrize(
    ("top", "model"),
    [
        (
            {},
            {
                "conv_type": "n_alignn",
                "num_heads": 2,
                "use_cutoff_function": True,
                "multiply_cutoff": True,
                "inner_cutoff": 4.0,
            },
        ),
        (
            {"dtype": "float64"},
            {
                "conv_type": "t_alignn",
                "num_heads": 2,
                "lg_on_fly": False,
                "energy_mult_natoms": False,
                "force_mult_natoms": True,
            },
        ),
        (
            {"neighbor_strategy": "radius_graph", "three_body_cutoff": None},
            {"use_cutoff_function": True},
        ),
        (
            {"max_neighbors": None},
            {"gcn_layers": 0, "alignn_layers": 2, "atomwise_output_features": 3},
        ),
        (
            {},
            {"name": "alignn_atomwise_pure_smooth", "radial_cutoff": 4.0,
             "node_update": "gated_sum", "conv_type": "n_alignn", "num_heads": 2},
        ),
        (
            {"dtype": "float64"},
            {"name": "alignn_atomwise_pure_smooth", "radial_basis": "gaussian",
             "angular_basis": "cosine", "mlp_first": False, "energy_mult_natoms": True,
             "radial_learnable": False, "use_atomref": False, "radial_cutoff": 4.5},
        ),
        (
            {"neighbor_strategy": "radius_graph", "three_body_cutoff": None},
            {"name": "alignn_atomwise_pure_smooth", "energy_mult_natoms": True},
        ),
    ],
    ids=["n_alignn-cutoff", "t_alignn-float64-options", "radius_graph", "uncapped", "smooth",
         "smooth-fallbacks-float64", "smooth-radius_graph"],
)  # fmt: skip
def test_options_are_reproduced(new_run: Callable[..., Path], tmp_path: Path, top, model) -> None:
    """The smooth cases also show that the export uses the training graphs' triplets: the probe
    has bonds between three_body_cutoff (3 Å) and cutoff (5 Å), which upstream's smooth export
    would have put into triplets."""
    from alignn_torchscript.export import export_run

    report = export_run(new_run(top, model), tmp_path / "m.pt", dtype=top.get("dtype"))
    assert report.check is not None
    tolerance = 1e-9 if top.get("dtype") == "float64" else 1e-5
    assert max(report.check.values()) <= tolerance, report.check
    if model.get("name") == "alignn_atomwise_pure_smooth":
        assert report.metadata["model_name"] == "alignn_atomwise_pure_smooth"
        expected = None if top.get("neighbor_strategy") == "radius_graph" else 3.0
        assert report.metadata["three_body_cutoff"] == expected


def test_smooth_export_keeps_the_training_triplets(new_run: Callable[..., Path], tmp_path):
    """Eager smooth model on the training graph == exported file on a host list; and building
    triplets from every edge (upstream's smooth export) would give a different energy."""
    from alignn_torch.graphs.backend import build_graph
    from alignn_torch.graphs.line_graph import line_graph_triplets
    from alignn_torch.graphs.strategies import neighbor_list
    from alignn_torchscript.export import export_run, load_trained, probe_structure, resolve_run

    run = new_run({"dtype": "float64"}, {"name": "alignn_atomwise_pure_smooth"})
    exported = torch.jit.load(str(export_run(run, tmp_path / "m.pt").path))
    model, config, _ = load_trained(*resolve_run(run))
    structure = probe_structure(config.atom_features)
    graph = build_graph(structure, config.graph_settings)
    edges, _ = neighbor_list(structure, config.graph_settings)
    got = exported.forward_tensors_z(
        torch.from_numpy(structure.positions), torch.from_numpy(structure.cell),
        torch.from_numpy(structure.numbers), torch.from_numpy(edges.src),
        torch.from_numpy(edges.dst), torch.from_numpy(edges.shift), False,
    )  # fmt: skip
    eager = model(graph)
    torch.testing.assert_close(got["energy"], eager["energy"][0].detach(), rtol=1e-10, atol=0)
    all_src, all_dst = line_graph_triplets(graph.src, graph.dst, None, True)
    assert all_src.numel() > graph.lg_src.numel()  # some bonds are longer than 3 A
    every = dataclasses.replace(graph, lg_src=all_src, lg_dst=all_dst)
    assert abs(float((model(every)["energy"] - eager["energy"]).detach()[0])) > 1e-6


def test_option_warnings_reach_the_user(new_run: Callable[..., Path], run_cli, tmp_path: Path):
    run = new_run(model={"force_mult_natoms": True, "add_reverse_forces": False})
    code, _, err = run_cli("export", "torchscript", run, "-o", tmp_path / "m.pt")
    assert code == 0, err
    assert "force_mult_natoms" in err and "add_reverse_forces" in err
    meta = json.loads(torch.jit.load(str(tmp_path / "m.pt")).metadata())
    assert meta["forces_are_energy_gradient"] is False


def test_radius_graph_refuses_an_isolated_atom(new_run, tmp_path: Path) -> None:
    """Eager mode would grow the cutoff; a fixed host list cannot, so the model says so."""
    from alignn_torchscript.export import export_run

    run = new_run({"neighbor_strategy": "radius_graph", "three_body_cutoff": None, "cutoff": 3.0})
    model = torch.jit.load(str(export_run(run, tmp_path / "m.pt").path))
    positions = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    src, dst = torch.tensor([0, 1]), torch.tensor([1, 0])
    with pytest.raises(Exception, match="atom 2 has no neighbour"):
        model(positions, torch.eye(3) * 10.0, torch.tensor([11, 17, 8]), src, dst,
              torch.zeros(2, 3))  # fmt: skip


def test_cap_and_filter_ignore_host_order(pure_export: Path, pure_run: Path) -> None:
    """A shuffled superset list (skin, coincident pairs never included) gives the same result."""
    from alignn_torch.graphs.neighbors import radius_neighbors

    config = load_config(pure_run / "config.json").config
    rng = np.random.default_rng(3)
    cell = np.array([[4.0, 0.3, 0.0], [0.0, 4.2, 0.2], [0.1, 0.0, 3.9]])
    positions = rng.uniform(0, 1, (6, 3)) @ cell
    numbers = torch.tensor([11, 17, 11, 17, 8, 14])
    model = torch.jit.load(str(pure_export))
    pbc = (True, True, True)
    exact = radius_neighbors(positions, cell, pbc, config.cutoff, max_neighbors=8)
    wide = radius_neighbors(positions, cell, pbc, config.cutoff + 1.5)
    order = rng.permutation(len(wide))
    results = []
    for edges, perm in ((exact, np.arange(len(exact))), (wide, order)):
        results.append(model.forward_tensors_z(
            torch.from_numpy(positions), torch.from_numpy(cell), numbers,
            torch.from_numpy(edges.src[perm]), torch.from_numpy(edges.dst[perm]),
            torch.from_numpy(edges.shift[perm]), True))  # fmt: skip
    for key in ("energy", "forces", "stress"):  # summation order differs: float32 rounding
        scale = float(results[0][key].abs().max())
        torch.testing.assert_close(results[0][key], results[1][key], rtol=0, atol=1e-5 * scale)
