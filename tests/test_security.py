"""No code runs from data: planted pickle payloads in checkpoint files are refused unexecuted,
and truncated checkpoints are one-line errors (exit 2)."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest

from alignn_core.errors import ModelError
from alignn_core.training.atomic import load_torch
from tests.conftest import EXAMPLES


class _Payload:
    """Unpickling this runs ``os.system`` (creates a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path, marker):
    path.write_bytes(pickle.dumps({"fc.weight": _Payload(marker)}))


def test_payload_would_run_if_unpickled(tmp_path):
    # guard: prove the payload is real, so the refusals below mean something
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_load_torch_refuses_pickled_code(tmp_path):
    marker = tmp_path / "ran"
    _plant(tmp_path / "best_model.pt", marker)
    with pytest.raises(ModelError) as info:
        load_torch(tmp_path / "best_model.pt")
    assert str(info.value).startswith(
        f"{tmp_path / 'best_model.pt'}: cannot load the checkpoint with "
        "torch.load(weights_only=True) ("
    )
    assert not marker.exists()


def _trained_run(run_cli, tmp_path):
    config = json.loads((EXAMPLES / "ff" / "config.json").read_text())
    config.update({"epochs": 1, "batch_size": 8})
    config["model"].update(
        {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 8, "embedding_features": 8}
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    assert run_cli("run", path, "--root-dir", EXAMPLES / "ff", "--output-dir", out)[0] == 0
    return path, out


def test_planted_checkpoints_are_refused_by_every_reader(run_cli, tmp_path):
    config, out = _trained_run(run_cli, tmp_path)
    marker = tmp_path / "ran"
    # inference: best_model.pt
    _plant(out / "best_model.pt", marker)
    code, _, err = run_cli("predict", out, EXAMPLES / "props" / "POSCAR-JVASP-10.vasp")
    assert code == 2 and "cannot load the checkpoint" in err and "Traceback" not in err
    # resume: current_state.pt
    _plant(out / "current_state.pt", marker)
    resume = json.loads(config.read_text())
    resume.update({"epochs": 2, "resume_checkpoint": True})
    config.write_text(json.dumps(resume))
    code, _, err = run_cli("run", config, "--root-dir", EXAMPLES / "ff", "--output-dir", out)
    assert code == 2 and "current_state.pt: cannot load the checkpoint" in err
    assert not marker.exists()


def test_truncated_checkpoint_is_a_one_line_error(run_cli, tmp_path):
    _, out = _trained_run(run_cli, tmp_path)
    shutil.copy(out / "best_model.pt", tmp_path / "whole.pt")
    data = (out / "best_model.pt").read_bytes()
    (out / "best_model.pt").write_bytes(data[: len(data) // 2])
    code, _, err = run_cli("predict", out, EXAMPLES / "props" / "POSCAR-JVASP-10.vasp")
    assert code == 2
    assert err.strip().startswith(f"error: {out / 'best_model.pt'}: cannot load the checkpoint")
    assert len(err.strip().splitlines()) == 1
