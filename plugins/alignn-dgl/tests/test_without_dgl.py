"""Life without DGL (the default suite's environment): the plugin loads, its config validates,
and everything that would need DGL says in one line how to get it or what to use instead.

Absence is simulated (fixture ``without_dgl``), so these tests also run where DGL is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alignn_dgl.availability import INSTALL_HINT, dgl_available
from alignn_dgl.config import ALIGNNAtomWiseConfig
from alignn_dgl.plugin import ALIGNNAtomWiseModel

from alignn_core.config.loader import load_config
from alignn_core.errors import ConfigError, PluginError
from alignn_core.plugins import FIRST_PARTY_BACKENDS, build_registry, load_plugins

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def dgl_config(tmp_path, **model):
    """The bundled force-field example as an ``alignn_atomwise`` config, written to tmp_path."""
    data = json.loads((EXAMPLES / "ff" / "config.json").read_text())
    data["model"] = {**data["model"], "name": "alignn_atomwise", "hidden_features": 8,
                     "embedding_features": 8, **model}  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_plugins_list_shows_the_plugin(run_cli):
    code, out, _ = run_cli("plugins", "list", "--json")
    plugins = {p["name"]: p for p in json.loads(out)}
    assert code == 0 and plugins["dgl"]["distribution"] == "alignn-dgl"
    expected = {"models": ["alignn_atomwise"]}
    if dgl_available():
        expected["graph_backends"] = ["dgl"]
    assert plugins["dgl"]["registers"] == expected


def test_without_dgl_only_the_config_is_registered(without_dgl):
    registry = build_registry(load_plugins())
    assert registry.models["alignn_atomwise"].config_class is ALIGNNAtomWiseConfig
    assert "dgl" not in registry.graph_backends
    assert "torch" in registry.graph_backends


def test_dgl_era_config_validates_without_dgl(tmp_path, without_dgl):
    loaded = load_config(dgl_config(tmp_path))
    assert loaded.config.model.name == "alignn_atomwise"
    assert loaded.config.model.penalty_factor == 0.1  # DGL's default, not pure's 0.5


@pytest.mark.parametrize("field", ["use_zbl", "three_body_cutoff", "conv_type"])
def test_pure_only_fields_are_rejected(tmp_path, without_dgl, field):
    value = {"use_zbl": True, "three_body_cutoff": 3.0, "conv_type": "alignn"}[field]
    with pytest.raises(ConfigError, match=f"unknown field 'model.{field}'"):
        load_config(dgl_config(tmp_path, **{field: value}))


def test_training_without_dgl_is_one_line_with_the_way_out(tmp_path, run_cli, without_dgl):
    code, _, err = run_cli("run", dgl_config(tmp_path), "--root-dir", EXAMPLES / "ff",
                             "--output-dir", tmp_path / "out")  # fmt: skip
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1] == (
        "error: model 'alignn_atomwise' needs graph backend 'dgl', which no installed plugin "
        f"provides; {FIRST_PARTY_BACKENDS['dgl']}"
    )
    assert "alignn_atomwise_pure" in lines[-1] and "docs/dgl.md" in lines[-1]
    assert not (tmp_path / "out" / "best_model.pt").exists()


def test_building_the_model_without_dgl_says_how(without_dgl):
    with pytest.raises(PluginError) as info:
        ALIGNNAtomWiseModel().build(ALIGNNAtomWiseConfig(name="alignn_atomwise"))
    assert str(info.value) == f"DGL is not available (not installed); {INSTALL_HINT}"


def test_parity_without_dgl_is_one_line(run_cli, without_dgl):
    code, _, err = run_cli("parity", EXAMPLES / "ff" / "config.json", "--no-train")
    assert code == 2
    assert err.strip() == f"error: DGL is not available (not installed); {INSTALL_HINT}"


def test_parity_help_without_dgl(run_cli, without_dgl):
    code, out, _ = run_cli("parity", "--help")
    assert code == 0 and "alignn_atomwise_pure" in out
