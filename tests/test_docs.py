"""Generated docs stay in sync with the code."""

from __future__ import annotations

import runpy

from tests.conftest import REPO


def test_config_reference_is_up_to_date():
    render = runpy.run_path(str(REPO / "tools" / "gen_config_reference.py"))["render"]
    committed = (REPO / "docs" / "config-reference.md").read_text()
    assert committed == render(), "run `nox -s docs` to regenerate docs/config-reference.md"
