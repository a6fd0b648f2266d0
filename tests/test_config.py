"""Config loading: upstream configs load, mistakes give exact one-line messages (exit 2)."""

from __future__ import annotations

import json

import pytest

from alignn_core.config import load_config
from alignn_core.errors import ConfigError
from tests.conftest import EXAMPLES, REPO

SHARED = REPO.parent / "shared" / "data"
UPSTREAM_CONFIGS = sorted(SHARED.glob("*/config*.json")) + sorted(
    SHARED.glob("mlearn/*/config*.json")
)

PURE = {"name": "alignn_atomwise_pure", "atom_input_features": 92}


def _error(data) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return str(info.value)


@pytest.mark.parametrize("path", UPSTREAM_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_upstream_configs_load_unchanged(path):
    loaded = load_config(path)
    assert loaded.config.model.name == "alignn_atomwise"  # the DGL plugin's config class
    assert loaded.config.version == json.loads(path.read_text())["version"]


@pytest.mark.parametrize("path", UPSTREAM_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_upstream_configs_load_as_pure(path):
    data = json.loads(path.read_text())
    data["model"]["name"] = "alignn_atomwise_pure"
    config = load_config(data).config
    assert config.model.penalty_factor == data["model"].get("penalty_factor", 0.5)


def test_defaults_match_upstream():
    config = load_config({"model": PURE}).config
    assert (config.cutoff, config.three_body_cutoff, config.max_neighbors) == (5.0, 3.5, 12)
    assert (config.epochs, config.batch_size, config.learning_rate) == (300, 64, 1e-2)
    assert config.neighbor_strategy == "k-nearest" and config.keep_data_order is True
    model = config.model
    assert (model.hidden_features, model.edge_input_features, model.penalty_factor) == (64, 80, 0.5)
    assert model.use_zbl is None and model.zbl_enabled is True


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"epoch": 3, "model": PURE}, "config: unknown field 'epoch'; did you mean 'epochs'?"),
        ({"model": {**PURE, "hiden_features": 3}},
         "config: unknown field 'model.hiden_features'; did you mean 'hidden_features'?"),
        ({"zzz": 1, "model": PURE}, "config: unknown field 'zzz'; remove it"),
        ({"model": {"name": "alignn_atomwise_pure"}},
         "config: model.atom_input_features is 1 but atom_features 'cgcnn' has 92 features; "
         "set model.atom_input_features to 92"),
        ({"atom_features": "basic", "model": PURE},
         "config: model.atom_input_features is 92 but atom_features 'basic' has 11 features; "
         "set model.atom_input_features to 11"),
        ({"cutoff": 3.0, "model": PURE},
         "config: three_body_cutoff (3.5) must be <= cutoff (3.0)"),
        ({"batch_size": 0, "model": PURE},
         "config: batch_size: Input should be greater than or equal to 1 (got 0)"),
        ({"cutoff": -1, "three_body_cutoff": None, "model": PURE},
         "config: cutoff: Input should be greater than 0 (got -1)"),
        ({"train_ratio": 0.9, "val_ratio": 0.2, "model": PURE},
         "config: train_ratio + val_ratio + test_ratio = 1.2 exceeds 1; lower one of them"),
        ({"cuda_graphs": True, "use_amp": True, "model": PURE},
         "config: cuda_graphs cannot be combined with use_amp yet; set one of them false"),
        ({"cuda_graphs": True, "distributed": True, "model": PURE},
         "config: cuda_graphs cannot be combined with distributed yet; set one of them false"),
        ({"neighbor_strategy": "pure_torch", "model": {**PURE, "three_body_cutoff": 3.0}},
         "config: model.three_body_cutoff (3.0) differs from the graph's three_body_cutoff (3.5); "
         "exported models would use different triplets than training did: make them equal"),
        ({"model": {"name": ["x"]}}, "config: model.name must be a string (available: "
         "alignn_atomwise, alignn_atomwise_pure, alignn_atomwise_pure_smooth, "
         "mean_pool_mlp)"),
        ({}, 'config: missing "model" section; add {"model": {"name": ...}} (available: '
         "alignn_atomwise, alignn_atomwise_pure, alignn_atomwise_pure_smooth, "
         "mean_pool_mlp)"),
        ({"model": {"name": "alignn_atomwise_pur"}},
         "config: unknown model.name 'alignn_atomwise_pur' (available: alignn_atomwise, "
         "alignn_atomwise_pure, alignn_atomwise_pure_smooth, mean_pool_mlp); did you mean "
         "'alignn_atomwise_pure'?"),
    ],
)  # fmt: skip
def test_config_errors(data, message):
    assert _error(data) == message


def test_first_party_model_not_installed_says_how(monkeypatch):
    from alignn_core import plugins

    registry = plugins.get_registry()
    monkeypatch.delitem(registry.models, "alignn_atomwise")
    from alignn_core.config import loader

    loader._training_config_class.cache_clear()
    message = _error({"model": {"name": "alignn_atomwise"}})
    assert message == (
        "config: unknown model.name 'alignn_atomwise' (available: alignn_atomwise_pure, "
        "alignn_atomwise_pure_smooth, mean_pool_mlp); 'alignn_atomwise' is provided by the "
        "alignn-dgl plugin, which is not installed: pip install plugins/alignn-dgl (or pip "
        "install alignn-dgl)"
    )


def test_warnings_are_loud_not_silent():
    loaded = load_config({"batch_size": 4, "model": {**PURE, "gradwise_weight": 0,
                          "include_pos_deriv": True, "batch_stress": False}})  # fmt: skip
    assert loaded.warnings == [
        "model.gradwise_weight is 0, so calculate_gradient is turned off: no forces or stress "
        "are computed or trained (set gradwise_weight > 0 to train forces)",
        "model.batch_stress=false is ignored: stress is always computed per structure "
        "(upstream's DGL model would return one stress for the whole batch)",
        "model.include_pos_deriv=true is ignored by alignn_atomwise_pure: forces are exact "
        "derivatives through the edge vectors already",
    ]
    assert loaded.config.model.loss_weights().forces == 0


def test_force_mult_natoms_warns_only_when_forces_are_trained():
    trained = load_config({"model": {**PURE, "force_mult_natoms": True}}).warnings
    assert [w for w in trained if "force_mult_natoms" in w] == [
        "model.force_mult_natoms=true trains forces as N x (-dE/dx), so energy and forces "
        "disagree by a factor N and MD does not conserve energy; measured on mlearn Cu "
        "(reduced config, 3 epochs) it left energies at 1519 meV/atom vs 16 with false: "
        "set it to false unless you reproduce upstream's recipe"
    ]
    untrained = load_config({"model": {**PURE, "force_mult_natoms": True, "gradwise_weight": 0}})
    assert not [w for w in untrained.warnings if "force_mult_natoms" in w]


def test_model_three_body_cutoff_follows_the_graph():
    config = load_config({"neighbor_strategy": "pure_torch", "three_body_cutoff": 3.0,
                          "model": PURE}).config  # fmt: skip
    assert config.model.three_body_cutoff == 3.0


def test_bundled_examples_validate():
    for name in ("props", "ff"):
        assert (
            load_config(EXAMPLES / name / "config.json").config.model.name == "alignn_atomwise_pure"
        )


def test_schema_contains_plugin_models():
    from alignn_core.config import training_config_class

    schema = json.dumps(training_config_class().model_json_schema())
    for name in ("alignn_atomwise_pure", "alignn_atomwise", "mean_pool_mlp", "hidden_features"):
        assert name in schema
