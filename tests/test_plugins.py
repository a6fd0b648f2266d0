"""Plugin manager: registration through hooks, duplicates, broken plugins, the allow-list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from alignn_core import plugins
from alignn_core.errors import PluginError
from alignn_core.hookspecs import hookimpl


@pytest.fixture
def extra_plugin():
    names = []

    def add(name: str, **hooks):
        module = types.ModuleType(name)
        for hook_name, function in hooks.items():
            setattr(module, hook_name, hookimpl(function))
        plugins.load_plugins()
        plugins.pm.register(module, name=name)
        plugins.reset()
        names.append(name)

    yield add
    for name in names:
        plugins.pm.unregister(name=name)
    plugins.reset()


def test_registered_object_is_found(extra_plugin):
    backend = types.SimpleNamespace(name="fake-backend")
    extra_plugin("fake", register_graph_backends=lambda register: register(backend))
    registry = plugins.get_registry()
    assert registry.graph_backends["fake-backend"] is backend
    assert registry.owners[("graph_backends", "fake-backend")] == "fake"


def test_duplicate_names_are_an_error_naming_both(extra_plugin):
    clash = types.SimpleNamespace(name="torch")
    extra_plugin("clash", register_graph_backends=lambda register: register(clash))
    with pytest.raises(PluginError) as info:
        plugins.get_registry()
    assert "both register graph_backend 'torch'" in str(info.value)
    assert "'torch'" in str(info.value) and "'clash'" in str(info.value)


def test_broken_plugin_is_skipped_with_a_warning(extra_plugin, capsys):
    def broken(register):
        raise RuntimeError("boom")

    extra_plugin("broken", register_models=broken)
    registry = plugins.get_registry()
    assert "alignn_atomwise_pure" in registry.models
    assert (
        "plugin 'broken' failed in register_models: RuntimeError: boom" in capsys.readouterr().err
    )


def test_unknown_registry_entry_lists_available():
    with pytest.raises(PluginError) as info:
        plugins.get_registry().get("graph_backends", "nope")
    assert str(info.value).startswith("no graph backend named 'nope' (available: ")


def test_allowlist_env_restricts_entry_points():
    env = {**os.environ, "ALIGNN_PLUGINS": "torch"}
    result = subprocess.run(
        [sys.executable, "-m", "alignn_core.cli", "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    names = {p["name"] for p in json.loads(result.stdout)}
    assert names == {"torch", "core.memory_dataset"}
