"""The CLI: exit codes (0 ok, 2 user error, 1 runtime failure), messages, plugin commands."""

from __future__ import annotations

import json

from tests.conftest import EXAMPLES


def test_version(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("alignn ")


def test_config_validate_ok(run_cli):
    code, out, _ = run_cli("config", "validate", EXAMPLES / "props" / "config.json")
    assert code == 0
    assert "ok" in out and "alignn_atomwise_pure" in out


def test_config_unknown_field_exit_2_without_traceback(run_cli, write_config):
    path = write_config({"epoch": 3})
    code, _, err = run_cli("config", "validate", path)
    assert code == 2
    assert err.strip() == f"error: {path}: unknown field 'epoch'; did you mean 'epochs'?"
    assert "Traceback" not in err


def test_missing_config_file(run_cli, tmp_path):
    code, _, err = run_cli("config", "validate", tmp_path / "nope.json")
    assert code == 2
    assert err.strip() == f"error: {tmp_path / 'nope.json'}: file not found"


def test_json_syntax_error_names_line_and_column(run_cli, write_config):
    path = write_config(raw='{\n  "epochs": 3,\n  "model": {"name": }\n}')
    code, _, err = run_cli("config", "validate", path)
    assert code == 2
    assert err.strip() == f"error: {path}: invalid JSON at line 3, column 21: Expecting value"


def test_debug_shows_traceback(run_cli, write_config):
    path = write_config({"epoch": 3})
    code, _, err = run_cli("--debug", "config", "validate", path)
    assert code == 2 and "Traceback" in err


def test_usage_error_is_exit_2(run_cli):
    code, _, err = run_cli("run")
    assert code == 2 and "CONFIG" in err


def test_config_show_fills_defaults(run_cli, write_config):
    code, out, _ = run_cli("config", "show", write_config())
    assert code == 0
    shown = json.loads(out)
    assert shown["three_body_cutoff"] == 3.5 and shown["model"]["zbl_cutoff"] == 0.9


def test_config_schema_is_json_schema(run_cli):
    code, out, _ = run_cli("config", "schema")
    schema = json.loads(out)
    assert code == 0 and schema["title"] == "TrainingConfig" and "model" in schema["properties"]


def test_plugins_list_json_shows_first_and_third_party(run_cli):
    code, out, _ = run_cli("plugins", "list", "--json")
    assert code == 0
    plugins = {p["name"]: p for p in json.loads(out)}
    assert plugins["torch"]["distribution"] == "alignn-torch"
    assert plugins["torch"]["registers"] == {
        "graph_backends": ["torch"],
        "models": ["alignn_atomwise_pure", "alignn_atomwise_pure_smooth"],
    }
    assert plugins["dgl"]["registers"]["models"] == ["alignn_atomwise"]  # + backend with DGL
    assert plugins["example"]["distribution"] == "alignn-example-plugin"
    assert plugins["example"]["registers"] == {"models": ["mean_pool_mlp"]}
    assert {"lmdb", "torchscript", "core.memory_dataset"} <= set(plugins)


def test_plugins_list_table(run_cli):
    code, out, _ = run_cli("plugins", "list")
    assert code == 0 and "alignn-torch" in out and "alignn-example-plugin" in out
