"""Fixtures of the DGL plugin's tests: a CLI runner, DGL simulated away (single_thread: the
repository's conftest.py).

Tests that need DGL call ``pytest.importorskip("dgl")``: they run in ``nox -s dgl`` (torch 2.2.1 +
DGL 2.1.0) and are skipped in the default suite, where DGL is not installed. Everything about
life *without* DGL is tested by simulating its absence, so it runs in both environments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def run_cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """Run ``alignn ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from alignn_core.cli.app import main

    def run(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def without_dgl(monkeypatch) -> Iterator[None]:
    """Make ``import dgl`` look failed for the plugin, and rebuild the registry around it."""
    from alignn_dgl import availability

    from alignn_core import plugins
    from alignn_core.config import loader

    monkeypatch.setattr(
        availability, "_import", lambda: (None, "ModuleNotFoundError: No module named 'dgl'")
    )
    plugins.reset()
    loader._training_config_class.cache_clear()
    yield
    plugins.reset()
    loader._training_config_class.cache_clear()
