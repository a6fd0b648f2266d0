"""Training ``alignn_atomwise`` end to end, checkpoint interchange through files, and the
``alignn parity`` command. Needs DGL (``nox -s dgl``); skipped in the default suite.

Runs use a few structures of the bundled force-field example and a tiny model, so each
training takes seconds; the full parity table (docs/dgl.md) comes from ``nox -s parity``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("dgl")

from alignn_dgl.parity import paired_configs, run_parity

import alignn_core
from alignn_core.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TINY_SPLIT = {"n_train": 6, "n_val": 2, "n_test": 2, "batch_size": 2, "epochs": 1}


@pytest.fixture(autouse=True, scope="module")
def _threads(single_thread) -> Iterator[None]:
    yield


def write_config(tmp_path: Path, name: str = "alignn_atomwise", **model: object) -> Path:
    """The force-field example, tiny, as model ``name``; data stays in examples/ff."""
    data = json.loads((EXAMPLES / "ff" / "config.json").read_text())
    data.update(TINY_SPLIT, progress=False, use_lmdb=False)
    data["model"] = {**data["model"], "name": name, "alignn_layers": 1, "gcn_layers": 1,
                     "hidden_features": 8, "embedding_features": 8, **model}  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_alignn_run_trains_the_dgl_model_and_the_pure_model_loads_it(tmp_path, run_cli):
    config = write_config(tmp_path)
    out = tmp_path / "run"
    code, _, err = run_cli("run", config, "--root-dir", EXAMPLES / "ff", "--output-dir", out)
    assert code == 0, err
    saved = torch.load(out / "best_model.pt", weights_only=True)
    assert "_species_table" in saved
    # load_model reads an alignn_atomwise run as alignn_atomwise_pure, strictly
    loaded = alignn_core.load_model(out, device="cpu")
    assert loaded.config.model.name == "alignn_atomwise_pure" and loaded.origin == "upstream-dgl"
    state = loaded.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def test_paired_configs_pin_differing_defaults(tmp_path):
    pure, dgl = paired_configs(write_config(tmp_path, name="alignn_atomwise_pure"), small=True)
    assert pure.model.name == "alignn_atomwise_pure" and dgl.model.name == "alignn_atomwise"
    assert pure.model.penalty_factor == dgl.model.penalty_factor == 0.5  # pure's default
    assert pure.model.zbl_enabled is False
    assert pure.model.hidden_features == dgl.model.hidden_features == 32  # the small model
    shared = set(type(dgl.model).model_fields) - {"name"}
    assert all(getattr(pure.model, f) == getattr(dgl.model, f) for f in shared)
    assert pure.use_lmdb is False and pure.write_checkpoint is False


def test_paired_configs_refuse_what_the_dgl_model_lacks(tmp_path):
    with pytest.raises(ConfigError, match="use_zbl is true"):
        paired_configs(write_config(tmp_path, name="alignn_atomwise_pure", use_zbl=True),
                       small=True)  # fmt: skip
    with pytest.raises(ConfigError, match="conv_type 'n_alignn' has no DGL model"):
        paired_configs(write_config(tmp_path, name="alignn_atomwise_pure", conv_type="n_alignn"),
                       small=True)  # fmt: skip
    with pytest.raises(ConfigError, match="parity needs node_update 'upstream'"):
        paired_configs(write_config(tmp_path, name="alignn_atomwise_pure",
                                    node_update="gated_sum"), small=True)  # fmt: skip


def test_run_parity_meets_the_targets(tmp_path):
    report = run_parity([write_config(tmp_path)], root_dir=EXAMPLES / "ff", epochs=2,
                        max_structures=4)  # fmt: skip
    assert [row.quantity for row in report.evaluation] == ["energy", "forces", "stress"]
    assert all(row.relative <= 1e-5 for row in report.evaluation)
    assert [row.epoch for row in report.training] == [1, 2]
    assert all(row.max_abs_diff <= 0.04 for row in report.training)
    assert report.ok and report.versions["dgl"]


def test_parity_command_table_json_and_exit_codes(tmp_path, run_cli):
    config = write_config(tmp_path)
    result = tmp_path / "parity.json"
    code, out, err = run_cli("parity", config, "--root-dir", EXAMPLES / "ff", "--no-train",
                             "--structures", 3, "--json", result)  # fmt: skip
    assert code == 0, err
    assert "max |Δ|" in out and "all targets met" in out
    data = json.loads(result.read_text())
    assert data["ok"] is True and len(data["evaluation"]) == 3 and data["training"] == []
    # a target nobody can meet: exit code 1 and the verdict says so
    code, out, _ = run_cli("parity", config, "--root-dir", EXAMPLES / "ff", "--no-train",
                           "--structures", 3, "--eval-tolerance", -1)  # fmt: skip
    assert code == 1 and "TARGET MISSED" in out
