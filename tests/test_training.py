"""End-to-end training through the CLI on the bundled examples (small models, few epochs)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from tests.conftest import EXAMPLES

SMALL = {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 16, "embedding_features": 16}


def _config(tmp_path, example: str, changes: dict | None = None, model: dict | None = None):
    config = json.loads((EXAMPLES / example / "config.json").read_text())
    config.update({"epochs": 2, "batch_size": 8, **(changes or {})})
    config["model"].update({**SMALL, **(model or {})})
    path = tmp_path / f"{example}.json"
    path.write_text(json.dumps(config))
    return path


def test_property_model_trains_and_writes_outputs(run_cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli("run", _config(tmp_path, "props"), "--root-dir",
                                EXAMPLES / "props", "--output-dir", out)  # fmt: skip
    assert code == 0, err
    for name in ("config.json", "best_model.pt", "last_model.pt", "current_model.pt",
                 "current_state.pt", "history.json", "history_train.json", "history_val.json",
                 "ids_train_val_test.json", "predictions_train.csv", "predictions_val.csv",
                 "predictions_test.csv", "prediction_results_test_set.csv", "Test_results.json",
                 "report.png", "run_summary.json"):  # fmt: skip
        assert (out / name).exists(), name
    ids = json.loads((out / "ids_train_val_test.json").read_text())
    assert [len(ids[k]) for k in ("id_train", "id_val", "id_test")] == [40, 5, 5]
    rows = list(csv.DictReader((out / "predictions_test.csv").open()))
    assert [r["id"] for r in rows] == ids["id_test"]
    state = torch.load(out / "best_model.pt", weights_only=True)
    assert "fc.weight" in state
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    summary = json.loads((out / "run_summary.json").read_text())
    # the reported test MAE is the one in the predictions file (best weights, not last)
    mae = sum(abs(float(r["prediction"]) - float(r["target"])) for r in rows) / len(rows)
    assert summary["metrics"]["test"]["target_mae"] == pytest.approx(mae, rel=1e-5)
    assert "Best model" in stdout


def test_force_field_trains_with_forces_and_stress(run_cli, tmp_path):
    out = tmp_path / "ff"
    code, _, err = run_cli("run", _config(tmp_path, "ff"), "--root-dir", EXAMPLES / "ff",
                           "--output-dir", out)  # fmt: skip
    assert code == 0, err
    predictions = json.loads((out / "predictions_test.json").read_text())
    first = predictions[0]
    n_atoms = len(first["forces_target"])
    assert len(first["forces_prediction"]) == n_atoms and len(first["forces_prediction"][0]) == 3
    assert len(first["stress_prediction"]) == 3
    history = json.loads((out / "history.json").read_text())
    assert {"graph_mae", "forces_mae", "stress_mae"} <= set(history[0]["val"])


def test_finished_run_is_not_overwritten(run_cli, tmp_path):
    out = tmp_path / "run"
    config = _config(tmp_path, "props", {"epochs": 1})
    assert run_cli("run", config, "--root-dir", EXAMPLES / "props", "--output-dir", out)[0] == 0
    before = (out / "best_model.pt").read_bytes()
    code, _, err = run_cli("run", config, "--root-dir", EXAMPLES / "props", "--output-dir", out)
    assert code == 2
    assert err.strip() == (
        f"error: {out}: holds a finished run; choose another --output-dir, pass --overwrite, "
        "or set resume_checkpoint to continue it"
    )
    assert (out / "best_model.pt").read_bytes() == before
    assert run_cli("run", config, "--root-dir", EXAMPLES / "props", "--output-dir", out,
                   "--overwrite")[0] == 0  # fmt: skip


def test_resume_continues_the_history(run_cli, tmp_path):
    out = tmp_path / "run"
    first = _config(tmp_path, "props", {"epochs": 1, "lr_total_epochs": 2})
    assert run_cli("run", first, "--root-dir", EXAMPLES / "props", "--output-dir", out)[0] == 0
    second = _config(tmp_path, "props", {"epochs": 2, "lr_total_epochs": 2,
                                         "resume_checkpoint": True})  # fmt: skip
    code, stdout, err = run_cli(
        "run", second, "--root-dir", EXAMPLES / "props", "--output-dir", out
    )
    assert code == 0, err
    assert "resuming after epoch 1" in stdout
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]


def test_cpu_training_is_deterministic(run_cli, tmp_path):
    config = _config(tmp_path, "ff", {"epochs": 1})
    for name in ("a", "b"):
        assert run_cli("run", config, "--root-dir", EXAMPLES / "ff", "--output-dir",
                       tmp_path / name)[0] == 0  # fmt: skip
    a = torch.load(tmp_path / "a" / "best_model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "best_model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_third_party_plugin_trains(run_cli, tmp_path):
    config = json.loads((EXAMPLES / "props" / "config.json").read_text())
    config.update({"epochs": 1, "batch_size": 8})
    config["model"] = {"name": "mean_pool_mlp", "atom_input_features": 92}
    path = tmp_path / "plugin.json"
    path.write_text(json.dumps(config))
    assert run_cli("config", "validate", path)[0] == 0
    code, _, err = run_cli("run", path, "--root-dir", EXAMPLES / "props", "--output-dir",
                           tmp_path / "out")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "out" / "best_model.pt").exists()


def test_rejected_setting_is_a_clear_error(run_cli, tmp_path):
    config = _config(tmp_path, "props", {"dataset": "dft_3d"})
    code, _, err = run_cli("run", config, "--output-dir", tmp_path / "o")
    assert code == 2
    assert err.strip() == (
        "error: dataset 'dft_3d' would need a download; set dataset to 'user_data' and pass "
        "the data folder with --root-dir"
    )


def test_missing_structure_file_names_the_row(run_cli, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(EXAMPLES / "props", data)
    (data / "POSCAR-JVASP-10.vasp").unlink()
    code, _, err = run_cli("run", _config(tmp_path, "props"), "--root-dir", data,
                           "--output-dir", tmp_path / "o")  # fmt: skip
    assert code == 2
    assert err.strip() == f"error: {data / 'POSCAR-JVASP-10.vasp'}: structure file not found"


def test_bf16_autocast_trains(run_cli, tmp_path):
    out = tmp_path / "amp"
    config = _config(tmp_path, "ff", {"epochs": 1, "use_amp": True})
    code, _, err = run_cli("run", config, "--root-dir", EXAMPLES / "ff", "--output-dir", out)
    assert code == 0, err
    history = json.loads((out / "history.json").read_text())
    assert all(v == v for v in history[0]["train"].values())  # finite, not NaN


def test_upstream_mlearn_layout_and_one_element_warnings(run_cli, tmp_path):
    """Upstream's mlearn folders repeat the test records as validation records, and a
    one-element force field on node_update 'upstream' is geometry-blind at initialisation:
    both get a one-line warning naming what to do."""
    records = json.loads((EXAMPLES / "mlearn-cu" / "id_prop.json").read_text())
    train, test = records[:6], records[-2:]
    data = tmp_path / "cu"
    data.mkdir()
    (data / "id_prop.json").write_text(json.dumps(train + test + test))
    config = json.loads((EXAMPLES / "mlearn-cu" / "config_reduced.json").read_text())
    config.update({"epochs": 1, "batch_size": 4, "n_train": 6, "n_val": 2, "n_test": 2})
    config["model"].update(SMALL)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code, stdout, err = run_cli("run", path, "--root-dir", data, "--output-dir", tmp_path / "o")
    assert code == 0, err
    text = " ".join(stdout.split())
    assert ("warning: 2 of 2 test structures also appear in the validation set: the best model "
            "is then selected on test data") in text  # fmt: skip
    assert ("warning: one-element dataset with forces and model.node_update 'upstream'") in text
    assert "use node_update 'gated_sum' (docs/elemental.md)" in text
