"""The memory-allocator policy (``ALIGNN_MALLOC``, alignn_core.allocator) and the launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignn_core import allocator
from alignn_core.allocator import (
    DEFAULT_POLICY,
    TORCH_THP_VAR,
    AllocatorPolicyError,
    apply_policy,
    policy_from_env,
)

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ALIGNN_MALLOC", TORCH_THP_VAR)}
    return {**env, **extra}


def test_policy_from_env_default_explicit_and_case():
    assert policy_from_env({}) == DEFAULT_POLICY == "retain"
    assert policy_from_env({"ALIGNN_MALLOC": ""}) == "retain"
    assert policy_from_env({"ALIGNN_MALLOC": " THP "}) == "thp"
    assert policy_from_env({"ALIGNN_MALLOC": "system"}) == "system"


def test_policy_from_env_rejects_unknown_with_the_fix():
    with pytest.raises(AllocatorPolicyError) as info:
        policy_from_env({"ALIGNN_MALLOC": "jemalloc"})
    assert str(info.value) == (
        "ALIGNN_MALLOC='jemalloc' is not a memory-allocator policy; use one of system, retain, "
        "thp (or leave it unset for 'retain')"
    )


@pytest.mark.skipif(sys.platform != "linux", reason="policies act on Linux only")
def test_thp_sets_torch_switch_but_keeps_an_explicit_one():
    environ: dict[str, str] = {}
    assert apply_policy("thp", environ) == [f"{TORCH_THP_VAR}=1"]
    assert environ == {TORCH_THP_VAR: "1"}
    mine = {TORCH_THP_VAR: "0"}
    assert apply_policy("thp", mine) == [] and mine == {TORCH_THP_VAR: "0"}
    untouched: dict[str, str] = {}
    assert apply_policy("system", untouched) == [] and untouched == {}
    with pytest.raises(AllocatorPolicyError):
        apply_policy("fast", {})


@pytest.mark.skipif(sys.platform != "linux", reason="policies act on Linux only")
def test_retain_calls_glibc_mallopt_in_its_own_process():
    # process-global: run it in a child so the test process keeps the system allocator
    code = (
        "import platform\n"
        "from alignn_core.allocator import apply_policy\n"
        "environ = {}\n"
        "changed = apply_policy('retain', environ)\n"
        "glibc = platform.libc_ver()[0] == 'glibc'\n"
        "assert any('mallopt' in c for c in changed) == glibc, changed\n"
        "assert environ == {}, environ\n"  # glibc's alone: PyTorch's huge pages stay off
        "import torch\n"
        "x = torch.ones(2**24) * 2\n"  # large blocks still allocate and compute after it
        "del x\n"
        "y = torch.ones(2**24) * 3\n"
        "assert float(y.sum()) == 3 * 2**24\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()


@pytest.mark.skipif(sys.platform != "linux", reason="policies act on Linux only")
@pytest.mark.parametrize(
    ("refused", "report"),
    [
        (set(), ["glibc mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB"]),
        ({allocator._M_MMAP_MAX}, ["glibc mallopt M_TRIM_THRESHOLD=2 GiB"]),
        ({allocator._M_TRIM_THRESHOLD}, ["glibc mallopt M_MMAP_MAX=0"]),
        ({allocator._M_MMAP_MAX, allocator._M_TRIM_THRESHOLD}, []),
    ],
)
def test_retain_reports_each_setting_glibc_accepted(monkeypatch, refused, report):
    # a fake mallopt: the real one is process-global and no known glibc refuses either call
    calls: list[tuple[int, int]] = []

    def fake_mallopt(option: int, value: int) -> int:
        calls.append((option, value))
        return 0 if option in refused else 1

    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: fake_mallopt)
    assert apply_policy("retain", {}) == report
    # both are always tried: a refused first setting does not skip the second
    assert [option for option, _ in calls] == [allocator._M_MMAP_MAX, allocator._M_TRIM_THRESHOLD]


def _huge_page_kib(policy: str) -> int:
    """AnonHugePages (KiB) after a 64 MiB tensor, in a child that applies ``policy`` before
    importing torch, as the launcher does."""
    code = (
        "from alignn_core.allocator import apply_policy\n"
        f"apply_policy({policy!r})\n"
        "import torch\n"
        "x = torch.ones(2**24)\n"
        "print(sum(int(line.split()[1]) for line in open('/proc/self/smaps_rollup')\n"
        "          if line.startswith('AnonHugePages:')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.skipif(
    not THP_SETTING.exists() or "[never]" in THP_SETTING.read_text(),
    reason="the kernel offers no transparent huge pages",
)
def test_thp_policy_backs_large_tensors_with_huge_pages():
    """The policy must reach PyTorch before its first allocation, or it does nothing."""
    assert _huge_page_kib("thp") >= 32 * 1024
    assert _huge_page_kib("system") < 32 * 1024


def test_launcher_rejects_a_bad_policy_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "alignn_core.cli", "--version"],
        env=_clean_env(ALIGNN_MALLOC="fast"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "error: ALIGNN_MALLOC='fast' is not a memory-allocator policy; use one of system, retain, "
        "thp (or leave it unset for 'retain')\n"
    )
    assert "Traceback" not in done.stderr


def test_launcher_applies_the_policy_before_torch():
    """``ALIGNN_MALLOC=thp`` must reach the environment before the CLI (and torch) loads."""
    code = (
        "import sys, os\n"
        "sys.argv = ['alignn', '--version']\n"
        "from alignn_core.cli.launch import entry\n"
        "try:\n"
        "    entry()\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(os.environ.get({TORCH_THP_VAR!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=_clean_env(ALIGNN_MALLOC="thp"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    expected = "1" if sys.platform == "linux" else "None"
    version, thp = done.stdout.splitlines()
    assert version.startswith("alignn ") and thp == expected


@pytest.mark.skipif(sys.platform != "linux", reason="policies act on Linux only")
@pytest.mark.parametrize("setting", [None, "system", "fast"])
def test_ase_calculator_applies_the_policy(tmp_path, setting):
    """Scripts that run MD get the policy from the calculator (the ``alignn`` command's
    launcher never runs there); in a child, as the policy is process-global."""
    from tests.inference_models import make_run

    run = make_run(tmp_path / "run")
    code = (
        "import platform, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from alignn_core.allocator import AllocatorPolicyError\n"
        "from alignn_core.ase import ALIGNNCalculator\n"
        "try:\n"
        f"    calc = ALIGNNCalculator({str(run)!r}, device='cpu')\n"
        "except AllocatorPolicyError as exc:\n"
        "    print('error:', exc)\n"
        "else:\n"
        "    print(platform.libc_ver()[0], calc.summary()['allocator'])\n"
    )
    env = _clean_env() if setting is None else _clean_env(ALIGNN_MALLOC=setting)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if setting == "fast":
        assert done.stdout == (
            "error: ALIGNN_MALLOC='fast' is not a memory-allocator policy; use one of system, "
            "retain, thp (or leave it unset for 'retain')\n"
        )
        return
    libc, changed = done.stdout.split(" ", 1)
    retained = "['glibc mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB']\n"
    assert changed == (retained if setting is None and libc == "glibc" else "[]\n")
