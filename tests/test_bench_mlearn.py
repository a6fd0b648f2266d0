"""``alignn bench mlearn``: the carved validation split, variants, outputs, reuse, bad inputs.

The data is a made-up one-element folder in the mlearn layout (first n_train train, then a copy
of the test records as upstream's val, then the test records), written per test; the models
are tiny and train one epoch.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from alignn_core.bench import mlearn
from alignn_core.errors import UserError
from tests.conftest import EXAMPLES

N_TRAIN, N_TEST = 12, 4
TINY = ["--epochs", "1", "--hidden-features", "8", "--embedding-features", "8",
        "--alignn-layers", "1", "--gcn-layers", "1", "--batch-size", "4", "--cutoff", "4",
        "--max-neighbors", "8"]  # fmt: skip
RUN_FIELDS = (
    "element", "variant", "seed", "precision", "run_dir", "reused", "resumed", "status",
    "error", "test_energy_mae_meV_per_atom", "test_force_mae_eV_per_A",
    "val_energy_mae_meV_per_atom", "val_force_mae_eV_per_A", "epochs_run", "best_epoch",
    "wall_time_s", "train_atoms", "train_atoms_per_s",
)  # fmt: skip


def _record(rng, jid: int) -> dict:
    """A rattled 4-atom fcc cell of a made-up element with a per-atom energy and forces."""
    a = 3.9
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = frac + rng.normal(0, 0.02, frac.shape)
    return {
        "jid": str(jid),
        "atoms": {"lattice_mat": (np.eye(3) * a).tolist(), "coords": frac.tolist(),
                  "elements": ["Al"] * 4, "cartesian": False},
        "total_energy": float(-3.7 + rng.normal(0, 0.05)),
        "forces": rng.normal(0, 0.2, (4, 3)).tolist(),
        "stresses": [0.0] * 6,
    }  # fmt: skip


def write_folder(path, n_train=N_TRAIN, n_test=N_TEST, config_changes=None):
    """mlearn layout: n_train records, a copy of the test records (upstream's val), the test."""
    rng = np.random.default_rng(7)
    train = [_record(rng, i + 1) for i in range(n_train)]
    test = [_record(rng, n_train + n_test + i + 1) for i in range(n_test)]
    copy = [{**r, "jid": str(n_train + i + 1)} for i, r in enumerate(test)]
    path.mkdir(parents=True, exist_ok=True)
    (path / "id_prop.json").write_text(json.dumps(train + copy + test))
    config = {
        "dataset": "user_data", "target": "target", "atom_features": "cgcnn",
        "neighbor_strategy": "k-nearest", "random_seed": 123, "n_train": n_train,
        "n_val": n_test, "n_test": n_test, "epochs": 50, "batch_size": 5,
        "learning_rate": 0.001, "criterion": "l1", "keep_data_order": True, "num_workers": 0,
        "cutoff": 8.0, "max_neighbors": 12, "use_canonize": False, "store_outputs": False,
        "model": {"name": "alignn_atomwise", "alignn_layers": 4, "gcn_layers": 4,
                  "atom_input_features": 92, "hidden_features": 256, "gradwise_weight": 1.0,
                  "force_mult_natoms": True, "use_cutoff_function": True},
    }  # fmt: skip
    config.update(config_changes or {})
    (path / "config_upstream.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "Al")


def test_smoke_two_variants_two_precisions_eps_and_reuse(run_cli, folder, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "mlearn", folder, "--output", out, "--variants",
            "upstream,up_eps4:model.node_update_eps=1e-4", "--precision", "float32,bf16",
            "--val-fraction", "0.25", "--split-seed", "3", "--eval-eps", "1e-4,0",
            "--set", "model.gradwise_weight=10", *TINY]  # fmt: skip
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    assert "run 4/4" in stdout
    result = json.loads((out / "results.json").read_text())
    for key in ("date", "alignn_version", "machine", "settings", "variants", "elements", "runs",
                "summary"):  # fmt: skip
        assert key in result, key
    assert result["machine"]["torch"] and result["settings"]["split_seed"] == 3
    [element] = result["elements"]
    assert element["label"] == "Al" and element["elements"] == ["Al"]
    split = element["split"]
    # val: a seeded share of the training records; disjoint from train and test
    assert split["counts"] == {"train": 9, "val": 3, "test": N_TEST}
    assert all(i < N_TRAIN for i in split["val_indices"] + split["train_indices"])
    assert not set(split["val_indices"]) & set(split["train_indices"])
    assert split["test_indices"] == list(range(N_TRAIN + N_TEST, N_TRAIN + 2 * N_TEST))
    assert split["unused_indices"] == list(range(N_TRAIN, N_TRAIN + N_TEST))  # upstream's copy
    assert split["layout"]["val_is_copy_of_test"] is True
    assert split["test_structures_also_in_val"] == 0
    assert split["val_ids"] == [str(i + 1) for i in split["val_indices"]]
    assert split["split_seed"] == 3
    expected = mlearn.carve_split(mlearn.read_folder(folder), 0.25, 3)
    assert split["val_indices"] == expected.val
    # the derived dataset the trainer read: train, val, test in that order
    derived = json.loads((out / "data" / "Al" / "id_prop.json").read_text())
    source = json.loads((folder / "id_prop.json").read_text())
    order = split["train_indices"] + split["val_indices"] + split["test_indices"]
    assert [r["jid"] for r in derived] == [source[i]["jid"] for i in order]
    base = element["baselines"]
    energies = [r["total_energy"] for r in source]
    mean = np.mean(energies[:N_TRAIN])
    assert base["constant_energy_mae_meV_per_atom"] == pytest.approx(
        1000 * np.mean([abs(e - mean) for e in energies[-N_TEST:]])
    )
    assert base["zero_force_mae_eV_per_A"] == pytest.approx(
        np.mean(np.abs([r["forces"] for r in source[-N_TEST:]]))
    )
    assert element["variants"]["up_eps4"]["config"]["model"]["node_update_eps"] == 1e-4
    assert element["variants"]["upstream"]["config"]["model"]["gradwise_weight"] == 10
    assert element["variants"]["upstream"]["config"]["neighbor_strategy"] == "pure_torch"

    runs = result["runs"]
    assert [(r["variant"], r["precision"]) for r in runs] == [
        ("upstream", "float32"), ("upstream", "bf16"), ("up_eps4", "float32"), ("up_eps4", "bf16")
    ]  # fmt: skip
    for run in runs:
        for key in RUN_FIELDS:
            assert key in run, key
        assert run["status"] == "ok", run["error"]
        assert run["epochs_run"] == 1 and run["best_epoch"] == 1
        assert run["train_atoms"] == 9 * 4 and run["train_atoms_per_s"] > 0
        assert set(run["eval_eps"]) == {"0.0001", "0"}  # NaN at eps 0 is a result, not a crash
        assert all(isinstance(v, float) for v in run["eval_eps"]["0"].values())
        if run["variant"] == "up_eps4":  # re-evaluated at the trained eps: the headline number
            same = run["eval_eps"]["0.0001"]
            for key in ("test_energy_mae_meV_per_atom", "test_force_mae_eV_per_A"):
                assert same[key] == pytest.approx(run[key], rel=1e-5), key
    # the run's own test predictions give the reported MAE (energies are per atom)
    run_dir = out / "runs" / "Al" / "upstream" / "seed0-float32"
    rows = json.loads((run_dir / "predictions_test.json").read_text())
    assert len(rows) == N_TEST
    mae = 1000 * np.mean([abs(r["prediction"][0] - r["target"][0]) for r in rows])
    assert runs[0]["test_energy_mae_meV_per_atom"] == pytest.approx(mae, rel=1e-5)
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["n_train"], config["n_val"], config["n_test"]) == (9, 3, N_TEST)
    assert config["use_amp"] is False and config["random_seed"] == 0
    assert json.loads((out / "runs/Al/upstream/seed0-bf16/config.json").read_text())["use_amp"]
    summary = {(r["variant"], r["precision"]): r for r in result["summary"]}
    assert summary[("upstream", "float32")]["n_ok"] == 1
    md = (out / "results.md").read_text()
    assert "| element | variant | precision | energy MAE (meV/atom) | force MAE (eV/Å) |" in md
    assert "| Al | upstream | float32 |" in md and "| Al | up_eps4 | bf16 |" in md
    assert "constant energy (meV/atom)" in md and "eps 0.0001" in md
    assert "bf16 autocast vs float32" in md and "split seed 3" in md

    # the same command again reuses the finished runs and says so
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    again = json.loads((out / "results.json").read_text())
    assert all(r["reused"] for r in again["runs"])
    energy = "test_energy_mae_meV_per_atom"
    assert again["runs"][0][energy] == runs[0][energy]
    assert "reused from an earlier invocation" in (out / "results.md").read_text()


def test_finished_run_with_other_settings_is_refused(run_cli, folder, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "mlearn", folder, "--output", out, "--variants", "gated_sum",
            "--max-train", "6", "--max-test", "2", *TINY]  # fmt: skip
    code, _, err = run_cli(*args)
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    assert result["elements"][0]["split"]["counts"] == {"train": 5, "val": 1, "test": 2}
    assert result["runs"][0]["status"] == "ok"
    code, _, err = run_cli(*args, "--learning-rate", "0.01")
    run_dir = out / "runs" / "Al" / "gated_sum" / "seed0-float32"
    assert code == 2
    assert err.strip() == (
        f"error: {run_dir}: holds a finished run with other settings (learning_rate: 0.001 "
        "there, 0.01 now); use another --output, or --overwrite to retrain"
    )
    code, _, err = run_cli(*args, "--split-seed", "1")
    assert code == 2 and "holds the data of a benchmark with another split" in err
    # interrupted (no run_summary.json): resumed with the same settings, restarted with others
    (run_dir / "run_summary.json").unlink()
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    assert "with these settings: resuming" in stdout
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["resumed"] and run["status"] == "ok" and run["epochs_run"] == 1
    (run_dir / "run_summary.json").unlink()
    code, stdout, err = run_cli(*args, "--learning-rate", "0.01")
    assert code == 0, err
    assert "starting again" in stdout
    assert json.loads((run_dir / "config.json").read_text())["learning_rate"] == 0.01


def test_a_failed_run_is_recorded_and_the_others_continue(run_cli, folder, tmp_path, monkeypatch):
    from alignn_core.training.trainer import Trainer

    original = Trainer.run

    def run(self):
        if self.config.model.node_update == "gated_sum":
            raise RuntimeError("planted failure")
        return original(self)

    monkeypatch.setattr(Trainer, "run", run)
    out = tmp_path / "bench"
    args = ["--variants", "gated_sum,upstream", "--max-train", "6", "--max-test", "2", *TINY]
    code, _, err = run_cli("bench", "mlearn", folder, "--output", out, *args)
    assert code == 1
    assert "1 of 2 runs failed (first: Al gated_sum seed 0: RuntimeError: planted failure)" in err
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["failed", "ok"]
    assert runs[0]["error"] == "RuntimeError: planted failure"
    assert "seed 0 failed: RuntimeError: planted failure" in (out / "results.md").read_text()


def test_missing_config_upstream(run_cli, folder, tmp_path):
    (folder / "config_upstream.json").unlink()
    code, _, err = run_cli("bench", "mlearn", folder, "--output", tmp_path / "o")
    assert code == 2
    assert err.strip() == (
        f"error: {folder}: no config_upstream.json (the mlearn layout needs id_prop.json and "
        "config_upstream.json)"
    )
    assert not (tmp_path / "o").exists()


def test_counts_must_match_records(run_cli, tmp_path):
    folder = write_folder(tmp_path / "Al", config_changes={"n_train": 13})
    code, _, err = run_cli("bench", "mlearn", folder, "--output", tmp_path / "o")
    assert code == 2
    assert err.strip() == (
        f"error: {folder}: config_upstream.json has n_train + n_val + n_test = 13 + 4 + 4 = 21 "
        "but id_prop.json holds 20 records"
    )


def test_unknown_variant(run_cli, folder, tmp_path):
    code, _, err = run_cli("bench", "mlearn", folder, "--output", tmp_path / "o",
                           "--variants", "upstream,fancy")  # fmt: skip
    assert code == 2
    assert err.strip() == (
        "error: unknown variant 'fancy'; built-in variants: upstream, gated_sum, smooth (or "
        "define one as NAME:key=value;key=value)"
    )


def test_variant_with_unregistered_model(run_cli, folder, tmp_path, monkeypatch):
    registered = mlearn.model_config_classes()
    without_smooth = {k: v for k, v in registered.items() if k != mlearn.SMOOTH}
    monkeypatch.setattr(mlearn, "model_config_classes", lambda: without_smooth)
    code, _, err = run_cli("bench", "mlearn", folder, "--output", tmp_path / "o",
                           "--variants", "upstream,smooth")  # fmt: skip
    assert code == 2
    assert err.strip() == (
        "error: variant 'smooth' needs model 'alignn_atomwise_pure_smooth', which no installed "
        f"plugin registers (registered: {', '.join(sorted(without_smooth))})"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "n_test=3"], "--set n_test: set by the benchmark itself"),
        (["--set", "model.nope=3"], "--set model.nope: 'nope' is not a field of any variant's"),
        (["--set", "epochs"], "--set: 'epochs' is not key=value"),
        (["--variants", "x:n_val=2"], "variant 'x': n_val is set by the benchmark itself"),
        (["--variants", "upstream:model.node_update_eps=1"], "variant name 'upstream' is built"),
        (["--variants", "a:model.node_update=bad"], "Al variant a: model.node_update: "),
        (["--precision", "fp8"], "--precision: unknown precision 'fp8'"),
        (["--amp", "--precision", "bf16"], "--amp is short for --precision bf16"),
        (["--val-fraction", "1"], "--val-fraction must be between 0 and 1"),
        (["--preset", "huge"], "unknown --preset 'huge' (available: reduced)"),
        (["--seeds", "0,x"], "--seeds: 'x' is not a valid int"),
    ],
)
def test_bad_options_are_one_line_errors(run_cli, folder, tmp_path, args, message):
    code, _, err = run_cli("bench", "mlearn", folder, "--output", tmp_path / "o", *args)
    assert code == 2
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_carved_split_is_seeded_and_disjoint(folder):
    data = mlearn.read_folder(folder)
    a = mlearn.carve_split(data, 0.25, 0)
    assert a.val == mlearn.carve_split(data, 0.25, 0).val
    assert a.val != mlearn.carve_split(data, 0.25, 5).val
    assert sorted(a.train + a.val) == list(range(N_TRAIN))
    small = mlearn.carve_split(data, 0.1, 0, max_train=6, max_test=1)
    assert len(small.val) == 1 and max(small.train + small.val) < 6
    assert small.test == [N_TRAIN + N_TEST]
    with pytest.raises(UserError, match="leaves none to train on"):
        mlearn.carve_split(data, 0.9, 0, max_train=2)


def test_variants_parse_and_switch_models():
    variants = mlearn.parse_variants(
        ["upstream,gated_sum", "wide:model.hidden_features=32;epochs=3,lst:model.x=[1,2]"]
    )
    assert [v.name for v in variants] == ["upstream", "gated_sum", "wide", "lst"]
    assert variants[2].overrides == {"model.hidden_features": 32, "epochs": 3}
    assert variants[3].overrides == {"model.x": [1, 2]}
    assert mlearn.parse_value("1e-4") == 1e-4 and mlearn.parse_value("gated_sum") == "gated_sum"


def test_preset_reduced_matches_the_example_config():
    from tests.conftest import EXAMPLES

    reduced = json.loads((EXAMPLES / "mlearn-cu" / "config_reduced.json").read_text())
    upstream = json.loads((EXAMPLES / "mlearn-cu" / "config_upstream.json").read_text())
    base = mlearn.base_config(upstream, "reduced", {})
    for key in ("neighbor_strategy", "cutoff", "max_neighbors", "batch_size", "scheduler",
                "learning_rate"):  # fmt: skip
        assert base[key] == reduced[key], key
    for key in ("alignn_layers", "gcn_layers", "hidden_features", "embedding_features",
                "gradwise_weight", "name"):  # fmt: skip
        assert base["model"][key] == reduced["model"][key], key


def test_switching_model_keeps_shared_fields(folder):
    """A variant on another model keeps the base fields that model has (drops the others)."""
    classes = mlearn.model_config_classes()
    if mlearn.SMOOTH not in classes:
        pytest.skip("alignn_atomwise_pure_smooth is not registered")
    data = mlearn.read_folder(folder)
    split = mlearn.carve_split(data, 0.25, 0)
    base = mlearn.base_config(data.upstream, None, {"cutoff": 4.0})
    [smooth] = mlearn.parse_variants(["smooth"])
    config = mlearn.variant_config(base, smooth, {"model.node_update_eps": 1e-4}, split, "Al")
    assert config.config.model.name == mlearn.SMOOTH
    assert config.config.model.hidden_features == 256
    assert config.config.model.energy_mult_natoms is True  # mlearn energies are per atom
    if "radial_cutoff" in classes[mlearn.SMOOTH].model_fields:
        assert config.config.model.radial_cutoff == 4.0
    assert "use_cutoff_function" in config.dropped
    assert math.isclose(getattr(config.config.model, "node_update_eps", 1e-4), 1e-4)


def test_preset_survives_options_that_were_not_given() -> None:
    """Options left at None must not mask the preset (a bug once trained the full config)."""
    upstream = json.loads((EXAMPLES / "mlearn-cu" / "config_upstream.json").read_text())
    options = {"cutoff": None, "max_neighbors": None, "model.hidden_features": None,
               "model.gcn_layers": 3}  # fmt: skip
    config = mlearn.base_config(upstream, "reduced", options)
    assert (config["cutoff"], config["max_neighbors"]) == (5.0, 12)
    assert config["model"]["hidden_features"] == 64
    assert config["model"]["embedding_features"] == 64
    assert config["model"]["gcn_layers"] == 3  # a given option beats the preset
