"""Shared fixtures: paths to bundled examples and upstream reference data, a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
FIXTURES = REPO / "tests" / "fixtures"
UPSTREAM = FIXTURES / "upstream"


@pytest.fixture
def run_cli(capsys):
    """Run ``alignn ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from alignn_core.cli.app import main

    def run(*args: str):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def write_config(tmp_path):
    """Write a config dict (based on the bundled property example) and return its path."""

    def write(changes: dict | None = None, model: dict | None = None, raw: str | None = None):
        path = tmp_path / "config.json"
        if raw is not None:
            path.write_text(raw)
            return path
        config = json.loads((EXAMPLES / "props" / "config.json").read_text())
        config.update(changes or {})
        config["model"].update(model or {})
        path.write_text(json.dumps(config))
        return path

    return write
