"""No code runs from data: planted pickle payloads in checkpoint files are refused unexecuted,
and truncated checkpoints are one-line errors (exit 2)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from alignn_core.errors import ModelError
from alignn_core.training.atomic import load_torch
from tests.conftest import EXAMPLES, REPO


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


def _state_dict_run(tmp_path):
    """A finished 1-epoch property run (tiny model): current_model.pt, current_state.pt ..."""
    from alignn_core.cli.app import main

    config = json.loads((EXAMPLES / "props" / "config.json").read_text())
    config.update({"epochs": 1, "batch_size": 8, "progress": False, "use_lmdb": False})
    config["model"].update(
        {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 8, "embedding_features": 8}
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    assert main(["run", str(path), "--root-dir", str(EXAMPLES / "props"), "--output-dir",
                 str(out)]) == 0  # fmt: skip
    return path, out


def test_planted_current_model_of_an_older_state_file_is_refused(run_cli, tmp_path):
    """State files written before they held the weights make resume read current_model.pt."""
    import torch

    config, out = _state_dict_run(tmp_path)
    state = load_torch(out / "current_state.pt")
    del state["model"], state["history"]
    torch.save(state, out / "current_state.pt")
    (out / "run_summary.json").unlink()
    marker = tmp_path / "ran"
    _plant(out / "current_model.pt", marker)
    resume = json.loads(config.read_text())
    resume.update({"epochs": 2, "resume_checkpoint": True})
    config.write_text(json.dumps(resume))
    code, _, err = run_cli("run", config, "--root-dir", EXAMPLES / "props", "--output-dir", out)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.strip().startswith(
        f"error: {out / 'current_model.pt'}: cannot load the checkpoint with "
        "torch.load(weights_only=True) (it holds pickled objects, not only tensors"
    )
    assert err.strip().endswith("unpickling them could run code, so it is refused)")
    assert not marker.exists()


def test_torchscript_export_refuses_a_planted_checkpoint(run_cli, tmp_path):
    pytest.importorskip("alignn_torchscript")
    from tests.inference_models import make_run

    run = make_run(tmp_path / "run")
    marker = tmp_path / "ran"
    _plant(run / "best_model.pt", marker)
    code, _, err = run_cli("export", "torchscript", run, "-o", tmp_path / "x.pt")
    assert code == 2 and "Traceback" not in err
    line = err.strip()
    assert line.startswith(
        f"error: {run / 'best_model.pt'}: cannot load the checkpoint with "
        "torch.load(weights_only=True) (it holds pickled objects, not only tensors"
    )
    assert line.endswith("unpickling them could run code, so it is refused)")
    assert "\n" not in line
    assert not marker.exists() and not (tmp_path / "x.pt").exists()


def test_torchscript_metadata_reader_refuses_a_planted_pickle(tmp_path):
    """A host reads an exported file's metadata.json; a pickle in its place is not a TorchScript
    archive and is refused before anything is unpickled."""
    pytest.importorskip("alignn_torchscript")
    from alignn_torchscript.export import read_metadata

    marker = tmp_path / "ran"
    _plant(tmp_path / "model.pt", marker)
    with pytest.raises(RuntimeError):
        read_metadata(tmp_path / "model.pt")
    assert not marker.exists()


def test_nothing_is_imported_from_the_data_directory(tmp_path):
    """Modules dropped next to the data (named like our dependencies and plugins) are never
    imported, also when alignn runs from inside that folder."""
    import subprocess
    import sys

    data = tmp_path / "data"
    shutil.copytree(EXAMPLES / "props", data)
    marker = tmp_path / "ran"
    for name in ("ase", "numpy", "alignn_torch", "alignn_plugin", "sitecustomize", "pluggy"):
        (data / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((EXAMPLES / "props" / "config.json").read_text())
    config["val_ratio"] = 0.0  # fails right after reading every structure: no training needed
    (data / "config.json").write_text(json.dumps(config))
    script = Path(sys.executable).parent / "alignn"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "alignn_core.cli"]
    done = subprocess.run([*command, "run", "config.json", "--output-dir", str(tmp_path / "o")],
                          cwd=data, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "split leaves the validation set empty" in done.stderr
    assert not marker.exists()


SOURCES = [REPO / "alignn_core", *sorted((REPO / "plugins").glob("*/src"))]


def test_sources_never_unpickle_or_eval():
    """Every torch.load passes weights_only=True; no pickle, eval, exec or allow_pickle."""
    import re

    def arguments(text: str, start: int) -> str:  # up to the matching parenthesis
        depth = 0
        for end in range(start, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                return text[start : end + 1]
        return text[start:]

    calls = 0
    for root in SOURCES:
        for path in root.rglob("*.py"):
            text = path.read_text()
            for match in re.finditer(r"torch\.load\(", text):
                calls += 1
                call = arguments(text, match.end() - 1)
                assert "weights_only=True" in call, f"{path}: torch.load{call}"
            for pattern in (r"^\s*import pickle", r"^\s*from pickle", r"(?<![.\w])eval\(",
                            r"(?<![.\w])exec\(", r"allow_pickle\s*=\s*True",
                            r"pickle\.loads?\("):  # fmt: skip
                assert not re.search(pattern, text, re.M), f"{path}: {pattern}"
    assert calls >= 1
