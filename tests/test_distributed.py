"""Data-parallel training (DDP) on CPU with gloo, 2 processes launched by torchrun.

Equal weights: a 2-process run and a 1-process run with the same global batch size and seed
see the same global batches in the same order (the trainer's DistributedSampler depends only
on seed + epoch; rank r takes positions r, r+2, ...), and every example structure has 10 atoms,
so the mean of the two half-batch losses is the full-batch loss. The runs differ only in
floating-point summation order (two half-batch gradient sums averaged by all-reduce vs one
sum). In float64 that is ~1e-16 relative per step; 10 AdamW steps keep it far below 1e-9
(measured: float32 differs by 6e-8, float64 by 2e-16 absolute), hence ``atol=1e-9``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from alignn_core.training.distributed import find_unused_parameters, setup
from alignn_core.training.trainer import unsupported_settings
from tests.conftest import EXAMPLES, REPO
from tests.test_training import _config

# Records, per rank, every file the trainer writes (all writes go through atomic._atomic, plus
# the report and LMDB cache builds), then runs the CLI: proof that only rank 0 writes.
PROBE = """
import json, os, sys
from pathlib import Path
log = Path(sys.argv.pop(1)) / f"rank{os.environ['RANK']}.log"
log.write_text("")
def record(what):
    with log.open("a") as handle:
        handle.write(str(what) + "\\n")
from alignn_core.training import atomic, trainer
import alignn_lmdb.provider as provider
original, build, report = atomic._atomic, provider.build_cache, trainer.write_report
atomic._atomic = lambda path, write: (record(path), original(path, write))[1]
provider.build_cache = lambda path, *a, **k: (record(path), build(path, *a, **k))[1]
trainer.write_report = lambda path, *a, **k: (record(path), report(path, *a, **k))[1]
from alignn_core.cli.app import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_two_processes_match_one_and_only_rank0_writes(run_cli, tmp_path):
    config = _config(tmp_path, "ff", {"dtype": "float64", "progress": False})
    one, two, logs = tmp_path / "one", tmp_path / "two", tmp_path / "logs"
    logs.mkdir()
    assert run_cli("run", config, "--root-dir", EXAMPLES / "ff", "--output-dir", one)[0] == 0
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(probe), str(logs), "run", str(config), "--distributed", "--root-dir",
         str(EXAMPLES / "ff"), "--output-dir", str(two)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _weights(one / "last_model.pt"), _weights(two / "last_model.pt")
    assert a.keys() == b.keys()  # the unwrapped module's names, no DDP "module." prefix
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-9, msg=key)
    assert (logs / "rank1.log").read_text() == ""  # rank 1 wrote nothing at all
    written = (logs / "rank0.log").read_text()
    for name in ("best_model.pt", "current_state.pt", "history.json", "predictions_test.json",
                 "report.png", "run_summary.json", "cache/train"):  # fmt: skip
        assert str(two / name) in written, name
    # merged metrics and gathered predictions equal the 1-process ones
    h1, h2 = (json.loads((d / "history.json").read_text()) for d in (one, two))
    for e1, e2 in zip(h1, h2, strict=True):
        for split in ("train", "val"):
            assert e2[split] == pytest.approx(e1[split], rel=1e-9)
    p1, p2 = (json.loads((d / "predictions_test.json").read_text()) for d in (one, two))
    assert [r["id"] for r in p2] == [r["id"] for r in p1]
    assert done.stdout.count("epoch   1") == 1  # one console for the job


def _rank_pid(tag: str, rank: int) -> int | None:
    """The pid of the training process with this RANK started by this test (found by a tag
    in its environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"ALIGNN_TEST_TAG={tag}".encode() in environ and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_killed_rank_fails_the_job_and_resume_completes(tmp_path):
    epochs = 6
    out = tmp_path / "run"
    args = ["--root-dir", str(EXAMPLES / "ff"), "--output-dir", str(out), "--nproc", "2"]
    first = _config(tmp_path, "ff", {"epochs": epochs, "batch_size": 2, "progress": False})
    tag = uuid.uuid4().hex
    job = subprocess.Popen([sys.executable, "-m", "alignn_core.cli", "run", str(first), *args],
                           env=_env(ALIGNN_TEST_TAG=tag), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    history, state = out / "history.json", out / "current_state.pt"
    deadline = time.monotonic() + 120
    # The resume state is written last in an epoch (atomically): once it exists, epoch 1 is
    # resumable. Waiting for history.json instead races torchrun, which stops rank 0 as soon as
    # rank 1 dies, possibly between the two writes.
    while not state.exists():
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "epoch 1 did not finish"
        time.sleep(0.05)
    victim = _rank_pid(tag, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)  # mid-way through epoch 2
    killed = time.monotonic()
    try:
        _, stderr = job.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail("the job did not stop within 60 s of losing a rank")
    assert job.returncode != 0
    print(f"job stopped {time.monotonic() - killed:.1f} s after rank 1 was killed")
    assert "the 2-process run failed" in stderr
    done = [h["epoch"] for h in json.loads(history.read_text())]
    assert done == list(range(1, len(done) + 1)) and len(done) < epochs
    resumable = torch.load(state, weights_only=True)["epoch"]  # len(done) or one less
    assert resumable in (len(done), len(done) - 1)

    second = _config(tmp_path, "ff", {"epochs": epochs, "batch_size": 2, "progress": False,
                                      "resume_checkpoint": True})  # fmt: skip
    resumed = subprocess.run([sys.executable, "-m", "alignn_core.cli", "run", str(second), *args],
                             env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {resumable}" in resumed.stdout
    assert [h["epoch"] for h in json.loads(history.read_text())] == list(range(1, epochs + 1))
    assert (out / "run_summary.json").exists()


def test_data_parallel_points_to_distributed(write_config):
    from alignn_core.config.loader import load_config

    config = load_config(write_config({"data_parallel": True})).config
    assert unsupported_settings(config) == [
        "data_parallel (single-process multi-GPU) is not supported; set it false and use "
        "distributed: true (torchrun, or alignn run --nproc N)"
    ]


def test_torchrun_without_distributed_is_refused(write_config, monkeypatch):
    from alignn_core.config.loader import load_config
    from alignn_core.errors import ConfigError

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = load_config(write_config()).config
    with pytest.raises(ConfigError, match="distributed is false"):
        setup(config, None)


def test_find_unused_parameters_defaults_true_and_is_honoured(write_config):
    from alignn_core.config.loader import load_config

    assert find_unused_parameters(load_config(write_config()).config) is True
    explicit = load_config(write_config({"ddp_find_unused_parameters": False})).config
    assert find_unused_parameters(explicit) is False


def test_nproc_checks_the_global_batch_before_launching(run_cli, tmp_path):
    config = _config(tmp_path, "ff", {"batch_size": 8})
    code, _, err = run_cli("run", config, "--root-dir", EXAMPLES / "ff", "--output-dir",
                           tmp_path / "o", "--nproc", "3")  # fmt: skip
    assert code == 2
    assert err.strip() == (
        "error: batch_size 8 is the global batch and must be divisible by the 3 processes; "
        "choose a multiple of 3"
    )
    assert not (tmp_path / "o").exists()
