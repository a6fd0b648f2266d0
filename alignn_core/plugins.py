"""Plugin manager and registry.

Entry points in the group :data:`ENTRY_POINT_GROUP` are loaded once, lazily, on first use. Set
``ALIGNN_PLUGINS`` to a comma-separated list of plugin names to load only those (an empty value
loads none); the core's own default plugins always load. Set ``ALIGNN_TRACE_PLUGINS=1`` to print
every hook call.
"""

from __future__ import annotations

import importlib
import importlib.metadata as importlib_metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from alignn_core import hookspecs
from alignn_core.errors import PluginError

ENTRY_POINT_GROUP = "alignn.plugins"
ALLOWLIST_ENV = "ALIGNN_PLUGINS"

DEFAULT_PLUGINS = {"core.memory_dataset": "alignn_core.default_plugins.memory_dataset"}

KIND_HOOKS = {
    "graph_backends": "register_graph_backends",
    "models": "register_models",
    "datasets": "register_datasets",
    "exporters": "register_exporters",
}

FIRST_PARTY_BACKENDS = {
    "dgl": "install DGL in the DGL plugin's environment (nox -s dgl; see docs/dgl.md), or set "
    "model.name to 'alignn_atomwise_pure' (same weights and equations, no DGL)",
    "torch": "pip install plugins/alignn-torch (or pip install alignn-torch)",
}
"""How to get each first-party graph backend when a model needs it and it is missing."""

FIRST_PARTY_MODELS = {
    "alignn_atomwise": ("alignn-dgl", "plugins/alignn-dgl"),
    "alignn_atomwise_pure": ("alignn-torch", "plugins/alignn-torch"),
    "alignn_atomwise_pure_smooth": ("alignn-torch", "plugins/alignn-torch"),
}
"""Model names owned by first-party plugins, so a missing plugin gets an install hint."""

pm = pluggy.PluginManager("alignn")
pm.add_hookspecs(hookspecs)
_loaded = False
_distributions: dict[str, Any] = {}


def _allowed_names() -> set[str] | None:
    value = os.environ.get(ALLOWLIST_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def load_plugins() -> pluggy.PluginManager:
    """Load the default plugins and installed entry points, once."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    for plugin_name, module_name in DEFAULT_PLUGINS.items():
        if pm.get_plugin(plugin_name) is None:
            pm.register(importlib.import_module(module_name), name=plugin_name)
    allowed = _allowed_names()
    for entry_point in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and entry_point.name not in allowed:
            continue
        if pm.get_plugin(entry_point.name) is not None:
            continue
        try:
            module = entry_point.load()
        except Exception as exc:  # a broken third-party plugin must not break the CLI
            print(
                f"warning: plugin {entry_point.name!r} failed to load: {exc}",
                file=sys.stderr,
            )
            continue
        pm.register(module, name=entry_point.name)
        _distributions[entry_point.name] = entry_point.dist
    if os.environ.get("ALIGNN_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda text: print(text, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name, with the owning plugin."""

    graph_backends: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    exporters: dict[str, Any] = field(default_factory=dict)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Any:
        items = getattr(self, kind)
        if name not in items:
            available = ", ".join(sorted(items)) or "none"
            raise PluginError(
                f"no {kind[:-1].replace('_', ' ')} named {name!r} (available: {available})"
            )
        return items[name]


def _collector(registry: Registry, kind: str, plugin_name: str) -> Callable[[Any], None]:
    items = getattr(registry, kind)

    def register(obj: Any) -> None:
        name = obj.name
        if name in items:
            first = registry.owners[(kind, name)]
            raise PluginError(
                f"plugins {first!r} and {plugin_name!r} both register {kind[:-1]} {name!r}; "
                f"uninstall one or restrict plugins with {ALLOWLIST_ENV}"
            )
        items[name] = obj
        registry.owners[(kind, name)] = plugin_name

    return register


_registry: Registry | None = None


def get_registry() -> Registry:
    """Call every registration hook once and cache the result."""
    global _registry
    if _registry is None:
        _registry = build_registry(load_plugins())
    return _registry


def build_registry(manager: pluggy.PluginManager) -> Registry:
    registry = Registry()
    for kind, hook_name in KIND_HOOKS.items():
        hook = getattr(manager.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):
            register = _collector(registry, kind, impl.plugin_name)
            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:  # one broken plugin must not take the others down
                print(
                    f"warning: plugin {impl.plugin_name!r} failed in {hook_name}: "
                    f"{type(exc).__name__}: {exc}",
                    file=sys.stderr,
                )
    return registry


def reset() -> None:
    """Forget the cached registry (tests call this after registering plugin objects)."""
    global _registry
    _registry = None


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    hooks: list[str]
    registers: dict[str, list[str]]


def plugin_infos() -> list[PluginInfo]:
    """Describe each loaded plugin: distribution, version, hooks and what it registers."""
    manager = load_plugins()
    registry = get_registry()
    infos = []
    for plugin in manager.get_plugins():
        name = manager.get_name(plugin)
        dist = _distributions.get(name)
        hooks = sorted(impl.name for impl in manager.get_hookcallers(plugin) or [])
        registers = {
            kind: sorted(
                n for (k, n), owner in registry.owners.items() if k == kind and owner == name
            )
            for kind in KIND_HOOKS
        }
        infos.append(
            PluginInfo(
                name=name,
                distribution=dist.metadata["Name"] if dist is not None else "alignn-core",
                version=dist.version if dist is not None else _core_version(),
                hooks=hooks,
                registers={kind: names for kind, names in registers.items() if names},
            )
        )
    return sorted(infos, key=lambda info: info.name)


def _core_version() -> str:
    from alignn_core import __version__

    return __version__
