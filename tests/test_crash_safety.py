"""A run killed at any moment costs the epochs since its last checkpoint, never the run (issue 10).

Every output is written to a temp file and renamed (``alignn_core.training.atomic``), and
``current_state.pt`` is written last in each epoch and holds that epoch's weights and history,
so whatever instant a SIGKILL lands on, each file in the output directory is whole, and the run
resumes from one consistent epoch. The loop below kills real ``alignn run`` processes (the LMDB
cache build included) at seeded random moments and checks exactly that; a short variant runs in
the default suite, a longer one with ``-m slow``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignn_core.config import load_config
from alignn_core.training.atomic import (
    load_torch,
    remove_temp_files,
    save_json,
    save_torch,
    temp_files,
)
from tests.conftest import EXAMPLES, REPO

SMALL = {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 8, "embedding_features": 8}
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def _config(path: Path, **changes) -> Path:
    config = json.loads((EXAMPLES / "props" / "config.json").read_text())
    config.update({"batch_size": 8, "progress": False, **changes})
    config["model"].update(SMALL)
    path.write_text(json.dumps(config))
    return path


def check_outputs(out: Path) -> list[Path]:
    """Every file of the run directory loads; returns the temp files of interrupted writes."""
    for path in sorted(out.iterdir()):
        if path.is_dir() or path.name.startswith("."):
            continue
        if path.suffix == ".pt":
            obj = load_torch(path)  # the safe loader: whole, and tensors/containers only
            assert isinstance(obj, dict) and obj, path
        elif path.name == "config.json":
            load_config(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            rows = list(csv.reader(io.StringIO(path.read_text())))
            assert rows and len({len(row) for row in rows}) == 1, path
        elif path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(PNG_START) and data.endswith(PNG_END), path
        else:
            raise AssertionError(f"unexpected file {path}")
    state_path = out / "current_state.pt"
    if state_path.exists():
        state = load_torch(state_path)
        assert state["epoch"] == len(state["history"])
        # history.json is written just before the state: equal, or one epoch ahead
        history = json.loads((out / "history.json").read_text())
        assert len(history) - state["epoch"] in (0, 1)
    for manifest in out.glob("cache/*/manifest.json"):
        json.loads(manifest.read_text())
    return temp_files(out)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _data(root: Path, count: int = 20) -> Path:
    """The first ``count`` structures of examples/props (graphs build in a fraction of a second,
    so most of a run's time is its epochs and their writes)."""
    root.mkdir()
    rows = (EXAMPLES / "props" / "id_prop.csv").read_text().splitlines()[:count]
    for row in rows:
        name = row.split(",")[0]
        (root / name).write_bytes((EXAMPLES / "props" / name).read_bytes())
    (root / "id_prop.csv").write_text("\n".join(rows) + "\n")
    return root


def _command(config: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "alignn_core.cli", "run", str(config), "--root-dir", str(data),
            "--output-dir", str(out)]  # fmt: skip


def _epochs_done(out: Path) -> int:
    try:
        return len(json.loads((out / "history.json").read_text()))
    except FileNotFoundError:
        return 0


def _wait(job: subprocess.Popen, ready) -> bool:
    """Wait until ``ready()``; False if the run ended first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if job.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.01)
    job.kill()
    raise AssertionError("the run made no progress within 120 s")


def _reaches(job: subprocess.Popen, out: Path, config_mtime: int | None, epochs: int) -> bool:
    """Wait until the run has rewritten config.json (it checked its inputs) and written
    ``epochs`` epochs; False if it ended first."""
    written = out / "config.json"
    started = _wait(job, lambda: written.exists() and written.stat().st_mtime_ns != config_mtime)
    return started and _wait(job, lambda: _epochs_done(out) >= epochs)


def kill_loop(tmp_path: Path, kills: int, seed: int, epochs: int) -> dict:
    """Start, SIGKILL at a seeded random moment, check every file, resume (or rerun when no
    checkpoint was written yet); then run to the end. Returns what happened.

    A moment is 0-2 epochs past where the run (re)started, plus 0-0.3 s: the first kills land
    in the graph-cache build and the epochs' writes, the last ones (once every epoch is done) in
    the final evaluation, the predictions and the report. Waiting for progress rather than for
    wall time keeps the kills spread over the run whatever the load of the machine.
    """
    rng = random.Random(seed)
    out, data = tmp_path / "run", _data(tmp_path / "data")
    fresh = _config(tmp_path / "fresh.json", epochs=epochs)
    resume = _config(tmp_path / "resume.json", epochs=epochs, resume_checkpoint=True)
    report = {"kills": 0, "resumed": 0, "torn_writes_seen": 0, "killed_after_epochs": []}
    for _ in range(kills):
        if (out / "run_summary.json").exists():
            break  # finished before a kill landed
        resuming = (out / "current_state.pt").exists()
        written = out / "config.json"
        before = written.stat().st_mtime_ns if written.exists() else None
        job = subprocess.Popen(_command(resume if resuming else fresh, data, out), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
        report["resumed"] += resuming
        target = min(epochs, _epochs_done(out) + rng.randint(0, 2))
        delay = rng.uniform(0.0, 0.3)
        if _reaches(job, out, before, target):
            time.sleep(delay)
            job.send_signal(signal.SIGKILL)
        job.wait(timeout=300)
        error = job.stderr.read()
        job.stderr.close()
        if job.returncode == 0:
            continue  # finished before the signal
        assert job.returncode == -signal.SIGKILL, error[-3000:]
        report["kills"] += 1
        report["torn_writes_seen"] += len(check_outputs(out))
        state = out / "current_state.pt"
        report["killed_after_epochs"].append(load_torch(state)["epoch"] if state.exists() else 0)
    if not (out / "run_summary.json").exists():
        config = resume if (out / "current_state.pt").exists() else fresh
        done = subprocess.run(_command(config, data, out), env=_env(), capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    assert check_outputs(out) == []  # a later run cleared any torn write's temp file
    assert not list((out / "cache").glob(".*")), "a killed cache build was left behind"
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert json.loads((out / "run_summary.json").read_text())["epochs_run"] == epochs
    print(f"kill loop (seed {seed}): {report}")
    return report


def test_sigkill_at_random_moments_short(tmp_path):
    report = kill_loop(tmp_path, kills=3, seed=10, epochs=5)
    assert report["kills"] >= 2


@pytest.mark.slow
def test_sigkill_at_random_moments_long(tmp_path):
    """20 kills, then the final weights equal an uninterrupted run's, bit for bit: a kill
    costs time, never a different result (CPU training is bitwise reproducible)."""
    epochs = 12
    report = kill_loop(tmp_path, kills=20, seed=2026, epochs=epochs)
    assert report["kills"] >= 10 and report["resumed"] >= 5
    whole = tmp_path / "whole"
    command = _command(_config(tmp_path / "whole.json", epochs=epochs), tmp_path / "data", whole)
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("best_model.pt", "last_model.pt"):
        a = torch.load(whole / name, weights_only=True)
        b = torch.load(tmp_path / "run" / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_resume_after_a_kill_between_two_files_of_one_epoch(run_cli, tmp_path, monkeypatch):
    """The run dies after epoch 2's current_model.pt and history.json are written but before
    its current_state.pt (the gap between files of one epoch). Resuming continues from epoch 1's
    consistent state and ends with the uninterrupted run's weights, bit for bit."""
    from alignn_core.training import trainer

    args = ("--root-dir", EXAMPLES / "props")
    config = _config(tmp_path / "c.json", epochs=3, use_lmdb=False)
    assert run_cli("run", config, *args, "--output-dir", tmp_path / "whole")[0] == 0

    class Killed(BaseException):
        """Not an Exception: nothing on the way up handles it, as nothing survives a SIGKILL."""

    real = trainer.save_torch

    def dies_before_epoch_2_state(obj, path):
        if Path(path).name == "current_state.pt" and obj["epoch"] == 2:
            raise Killed
        real(obj, path)

    monkeypatch.setattr(trainer, "save_torch", dies_before_epoch_2_state)
    out = tmp_path / "cut"
    with pytest.raises(Killed):
        run_cli("run", config, *args, "--output-dir", out)
    monkeypatch.setattr(trainer, "save_torch", real)
    assert len(json.loads((out / "history.json").read_text())) == 2  # one ahead of the state
    assert load_torch(out / "current_state.pt")["epoch"] == 1
    check_outputs(out)

    resume = _config(tmp_path / "r.json", epochs=3, use_lmdb=False, resume_checkpoint=True)
    code, stdout, err = run_cli("run", resume, *args, "--output-dir", out)
    assert code == 0, err
    assert "resuming after epoch 1" in stdout
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2, 3]
    for name in ("best_model.pt", "last_model.pt"):
        a = torch.load(tmp_path / "whole" / name, weights_only=True)
        b = torch.load(out / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name


# -- the atomic writer ----------------------------------------------------------------------------
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "history.json"
    save_json([1], path)

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        save_json([Unserialisable()], path)
    assert json.loads(path.read_text()) == [1] and temp_files(tmp_path) == []
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises for a lambda
        save_torch({"f": lambda: 0}, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists() and temp_files(tmp_path) == []


def test_only_the_writers_temp_files_are_cleared(tmp_path):
    (tmp_path / ".best_model.pt.k3_x9q2z.tmp").write_bytes(b"torn")
    (tmp_path / ".history.json.abcdefgh.tmp").write_bytes(b"[1, 2")
    (tmp_path / ".my-notes.tmp").write_text("not ours")
    (tmp_path / "scratch.tmp").write_text("not ours")
    assert [p.name for p in remove_temp_files(tmp_path)] == [
        ".best_model.pt.k3_x9q2z.tmp", ".history.json.abcdefgh.tmp",
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [".my-notes.tmp", "scratch.tmp"]


def test_report_png_is_written_atomically(tmp_path, monkeypatch):
    """report.png is rendered in memory and renamed into place like every other output."""
    from alignn_core.training import atomic
    from alignn_core.training.report import write_report

    path = tmp_path / "report.png"
    path.write_bytes(b"old")
    history = [{"epoch": 1, "train": {"loss": 1.0}, "val": {"loss": 2.0}}]
    renames = []
    real = atomic.os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (renames.append(Path(b)), real(a, b)))
    write_report(path, history, {"val": [{"target": [1.0], "prediction": [1.5]}]})
    assert renames == [path]
    assert path.read_bytes().startswith(PNG_START)
