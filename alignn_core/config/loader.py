"""Load and validate a run config, turning pydantic errors into one-line messages.

The ``model`` field is a union, discriminated by ``model.name``, of the config classes that
installed model plugins register, so a third-party model validates exactly like ours.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, ValidationError, create_model

from alignn_core.config.model import ModelConfig
from alignn_core.config.training import TrainingConfigBase
from alignn_core.errors import ConfigError
from alignn_core.plugins import FIRST_PARTY_MODELS, get_registry


@dataclass
class LoadedConfig:
    """A validated config and the warnings raised while checking it."""

    config: Any
    warnings: list[str] = field(default_factory=list)
    source: Path | None = None


def model_config_classes() -> dict[str, type[ModelConfig]]:
    return {name: plugin.config_class for name, plugin in get_registry().models.items()}


@cache
def _training_config_class(classes: tuple[type[ModelConfig], ...]) -> type[TrainingConfigBase]:
    if len(classes) == 1:
        model_type: Any = classes[0]
    else:
        model_type = Annotated[Union[classes], Field(discriminator="name")]  # noqa: UP007
    return create_model("TrainingConfig", __base__=TrainingConfigBase, model=(model_type, ...))


def training_config_class() -> type[TrainingConfigBase]:
    """``TrainingConfig`` with ``model`` typed as the union of registered model configs."""
    classes = tuple(model_config_classes()[name] for name in sorted(model_config_classes()))
    if not classes:
        raise ConfigError(
            "no model plugin is installed; install the pure-torch plugin: "
            "pip install plugins/alignn-torch"
        )
    return _training_config_class(classes)


def read_json(path: Path) -> Any:
    """Read a JSON file, reporting missing files and syntax errors with line and column."""
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a JSON config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ConfigError(f"{path}: file is empty; expected a JSON object")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def load_config(source: Path | str | dict, *, overrides: dict | None = None) -> LoadedConfig:
    """Validate a config file (or dict) against the schema of the installed plugins."""
    path = Path(source) if not isinstance(source, dict) else None
    data = read_json(path) if path is not None else dict(source)
    label = str(path) if path is not None else "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a JSON object at the top level")
    if overrides:
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    _check_model_section(data, label)
    cls = training_config_class()
    try:
        config = cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, label, cls)) from None
    try:
        warnings = config.model.check(config)
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    return LoadedConfig(config=config, warnings=warnings, source=path)


def _check_model_section(data: dict, label: str) -> None:
    available = sorted(model_config_classes())
    model = data.get("model")
    if model is None:
        raise ConfigError(
            f'{label}: missing "model" section; add {{"model": {{"name": ...}}}} '
            f"(available: {', '.join(available)})"
        )
    if not isinstance(model, dict):
        raise ConfigError(f"{label}: model: expected an object with a 'name' field")
    name = model.get("name")
    if name is None:
        raise ConfigError(f"{label}: model.name is missing (available: {', '.join(available)})")
    if not isinstance(name, str):
        raise ConfigError(
            f"{label}: model.name must be a string (available: {', '.join(available)})"
        )
    if name in available:
        return
    message = f"{label}: unknown model.name {name!r} (available: {', '.join(available)})"
    if name in FIRST_PARTY_MODELS:
        distribution, path = FIRST_PARTY_MODELS[name]
        message += (
            f"; {name!r} is provided by the {distribution} plugin, which is not installed: "
            f"pip install {path} (or pip install {distribution})"
        )
    else:
        close = difflib.get_close_matches(str(name), available, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
    raise ConfigError(message)


def _field_names_at(cls: type, loc: tuple, data_model_name: str | None) -> list[str]:
    """Valid field names of the pydantic model addressed by ``loc`` (for suggestions)."""
    if loc and loc[0] == "model":
        classes = model_config_classes()
        model_cls = classes.get(data_model_name or "")
        return list(model_cls.model_fields) if model_cls else []
    return list(cls.model_fields)


def format_validation_error(exc: ValidationError, label: str, cls: type) -> str:
    """One line per problem: ``file: json.path: what is wrong; what to do``."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        # Discriminated unions put the tag in the location: model.alignn_atomwise_pure.x -> model.x
        if len(loc) >= 2 and loc[0] == "model" and loc[1] in model_config_classes():
            model_name, loc = loc[1], ("model", *loc[2:])
        else:
            model_name = None
        path = ".".join(str(part) for part in loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            names = _field_names_at(cls, loc, model_name)
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "; remove it"
            lines.append(f"{label}: unknown field {path!r}{hint}")
        elif error["type"] == "missing":
            lines.append(f"{label}: {path}: required field is missing")
        else:
            message = error["msg"]
            if message.startswith("Value error, "):
                message = message[len("Value error, ") :]
            got = error.get("input")
            shown = (
                "" if isinstance(got, dict) or error["type"] == "value_error" else f" (got {got!r})"
            )
            where = f"{path}: " if loc else ""
            lines.append(f"{label}: {where}{message}{shown}")
    return "\n".join(lines)
