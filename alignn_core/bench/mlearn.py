"""The mlearn layout, the carved validation split, variants and the configs they train with.

An mlearn folder holds ``id_prop.json`` (per-atom energies, forces) and ``config_upstream.json``
(upstream ALIGNN's config): the first ``n_train`` records are training data, the last ``n_test``
the test set, and the ``n_val`` records between are an exact copy of the test records, so a model
picked on upstream's validation set is picked on the test set. The benchmark never uses that
copy: it carves a seeded validation subset out of the training records, writes a derived
``id_prop.json`` ordered train, val, test with matching ``n_train/n_val/n_test`` and
``keep_data_order``, and lets the normal trainer's split read it unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignn_core.config.loader import load_config, model_config_classes, read_json
from alignn_core.errors import ConfigError, DataError, PluginError, UserError
from alignn_core.training.atomic import save_json, save_text

PURE = "alignn_atomwise_pure"
SMOOTH = "alignn_atomwise_pure_smooth"

BUILTIN_VARIANTS: dict[str, dict[str, Any]] = {
    "upstream": {"model.name": PURE, "model.node_update": "upstream"},
    "gated_sum": {"model.name": PURE, "model.node_update": "gated_sum"},
    "smooth": {"model.name": SMOOTH},
}
"""Built-in variant name -> dotted config overrides."""

PRESETS: dict[str, dict[str, Any]] = {
    # issue 15's reduced config (examples/mlearn-cu/config_reduced.json, without its epochs)
    "reduced": {
        "neighbor_strategy": "pure_torch",
        "cutoff": 5.0,
        "max_neighbors": 12,
        "batch_size": 5,
        "scheduler": "onecycle",
        "learning_rate": 1e-3,
        "model.alignn_layers": 2,
        "model.gcn_layers": 2,
        "model.hidden_features": 64,
        "model.embedding_features": 64,
        "model.gradwise_weight": 10.0,
    },
}

MANAGED = (
    "n_train",
    "n_val",
    "n_test",
    "train_ratio",
    "val_ratio",
    "test_ratio",
    "keep_data_order",
    "random_seed",
    "use_amp",
    "output_dir",
    "resume_checkpoint",
)
"""Top-level fields the benchmark sets itself (split, seeds, precision, run folders)."""

PRECISIONS = {"float32": "float32", "fp32": "float32", "bf16": "bf16", "bfloat16": "bf16"}
LAYOUT_HINT = "the mlearn layout needs id_prop.json and config_upstream.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# -- folders -------------------------------------------------------------------------------
@dataclass
class MlearnFolder:
    """One mlearn-layout folder, read and checked."""

    path: Path
    records: list[dict]
    upstream: dict
    n_train: int
    n_val: int
    n_test: int
    elements: list[str]
    sha256: str
    val_copy_of_test: bool
    label: str = ""


def read_folder(path: Path) -> MlearnFolder:
    """Read ``path`` and check it has the mlearn shape; one-line :class:`UserError` otherwise."""
    if not path.is_dir():
        raise DataError(f"{path}: folder not found")
    data_file, config_file = path / "id_prop.json", path / "config_upstream.json"
    for required in (data_file, config_file):
        if not required.is_file():
            raise DataError(f"{path}: no {required.name} ({LAYOUT_HINT})")
    upstream = read_json(config_file)
    if not isinstance(upstream, dict):
        raise ConfigError(f"{config_file}: expected a JSON object at the top level")
    counts = []
    for key in ("n_train", "n_val", "n_test"):
        value = upstream.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(
                f"{config_file}: {key} must be a whole number >= 0 in the mlearn "
                f"layout (got {value!r})"
            )
        counts.append(value)
    n_train, n_val, n_test = counts
    raw = data_file.read_bytes()
    try:
        records = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{data_file}: invalid JSON ({exc})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{data_file}: expected a JSON list of records")
    if n_train + n_val + n_test != len(records):
        raise DataError(
            f"{path}: config_upstream.json has n_train + n_val + n_test = {n_train} + {n_val} + "
            f"{n_test} = {n_train + n_val + n_test} but id_prop.json holds {len(records)} records"
        )
    if n_train < 2 or n_test < 1:
        raise DataError(
            f"{path}: the benchmark needs n_train >= 2 and n_test >= 1 "
            f"(config_upstream.json has {n_train} and {n_test})"
        )
    elements: set[str] = set()
    for index, record in enumerate(records):
        atoms = record.get("atoms")
        if not isinstance(atoms, dict) or not isinstance(atoms.get("elements"), list):
            raise DataError(
                f"{data_file}: entry {index}: 'atoms' must be a JARVIS atoms dict with 'elements'"
            )
        elements.update(str(e) for e in atoms["elements"])
    val = records[n_train : n_train + n_val]
    test = records[len(records) - n_test :]
    copy_of_test = n_val == n_test and all(
        _content(a) == _content(b) for a, b in zip(val, test, strict=True)
    )
    return MlearnFolder(
        path=path,
        records=records,
        upstream=upstream,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        elements=sorted(elements),
        sha256=hashlib.sha256(raw).hexdigest(),
        val_copy_of_test=copy_of_test,
    )


def _content(record: dict) -> str:
    """A record without its id, for "is a copy of" checks."""
    return json.dumps({k: v for k, v in record.items() if k not in ("jid", "id")}, sort_keys=True)


def _structure_key(record: dict) -> str:
    return json.dumps(record.get("atoms"), sort_keys=True)


def assign_labels(folders: list[MlearnFolder]) -> None:
    """Row label of each folder: its element(s) from the structures (``Cu``; ``Ge-Si``), or the
    folder name where two folders would share a label."""
    by_elements: dict[str, list[MlearnFolder]] = {}
    for folder in folders:
        by_elements.setdefault("-".join(folder.elements), []).append(folder)
    for label, group in by_elements.items():
        for folder in group:
            folder.label = label if len(group) == 1 else folder.path.name
    seen: dict[str, Path] = {}
    for folder in folders:
        if not _NAME.match(folder.label):
            folder.label = re.sub(r"[^A-Za-z0-9_.-]", "_", folder.label).lstrip("._-") or "data"
        if folder.label in seen:
            raise UserError(
                f"{seen[folder.label]} and {folder.path} would both be reported as "
                f"{folder.label!r}; benchmark them in separate --output folders"
            )
        seen[folder.label] = folder.path


# -- the carved split -------------------------------------------------------------------------
@dataclass
class CarvedSplit:
    """Positions (0-based, in the folder's ``id_prop.json``) of each part of the benchmark split."""

    seed: int
    val_fraction: float
    max_train: int | None
    max_test: int | None
    train: list[int]
    val: list[int]
    test: list[int]

    def describe(self, folder: MlearnFolder) -> dict:
        ids = [str(r.get("jid", r.get("id", i))) for i, r in enumerate(folder.records)]
        records = folder.records
        val_keys = {_structure_key(records[i]) for i in self.val}
        train_keys = {_structure_key(records[i]) for i in self.train}
        test_keys = [_structure_key(records[i]) for i in self.test]
        return {
            "source_sha256": folder.sha256,
            "n_records": len(records),
            "layout": {
                "n_train": folder.n_train,
                "n_val": folder.n_val,
                "n_test": folder.n_test,
                "val_is_copy_of_test": folder.val_copy_of_test,
            },
            "split_seed": self.seed,
            "val_fraction": self.val_fraction,
            "max_train": self.max_train,
            "max_test": self.max_test,
            "counts": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "train_indices": self.train,
            "val_indices": self.val,
            "test_indices": self.test,
            "val_ids": [ids[i] for i in self.val],
            "test_ids": [ids[i] for i in self.test],
            "unused_indices": sorted(
                set(range(len(records))) - set(self.train) - set(self.val) - set(self.test)
            ),
            "test_structures_also_in_val": sum(k in val_keys for k in test_keys),
            "test_structures_also_in_train": sum(k in train_keys for k in test_keys),
        }


def carve_split(
    folder: MlearnFolder,
    val_fraction: float,
    seed: int,
    max_train: int | None = None,
    max_test: int | None = None,
) -> CarvedSplit:
    """Validation = a seeded random ``val_fraction`` of the (first ``max_train``) training
    records; train = the rest; test = the (first ``max_test`` of the) last ``n_test`` records."""
    pool = folder.n_train if max_train is None else min(max_train, folder.n_train)
    n_val = max(1, round(val_fraction * pool))
    if n_val >= pool:
        raise UserError(
            f"{folder.path}: --val-fraction {val_fraction:g} of {pool} training "
            "records leaves none to train on; lower it or raise --max-train"
        )
    chosen = np.random.default_rng(seed).choice(pool, size=n_val, replace=False)
    val = sorted(int(i) for i in chosen)
    members = set(val)
    train = [i for i in range(pool) if i not in members]
    first = len(folder.records) - folder.n_test
    n_test = folder.n_test if max_test is None else min(max_test, folder.n_test)
    return CarvedSplit(
        seed=seed,
        val_fraction=val_fraction,
        max_train=max_train,
        max_test=max_test,
        train=train,
        val=val,
        test=list(range(first, first + n_test)),
    )


def write_derived(folder: MlearnFolder, split: CarvedSplit, directory: Path) -> dict:
    """Write ``directory/id_prop.json`` (train, val, test in that order) and ``split.json``;
    refuse to replace a derived dataset written for another split or other data."""
    description = split.describe(folder)
    info_path, data_path = directory / "split.json", directory / "id_prop.json"
    if info_path.exists():
        try:
            old = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict):
            old = {k: v for k, v in old.items() if k != "source"}
        if old != description:
            raise UserError(
                f"{directory}: holds the data of a benchmark with another split or other data "
                "(--val-fraction, --split-seed, --max-train, --max-test or the folder changed); "
                "use another --output"
            )
        if data_path.exists():
            return description
    records = [folder.records[i] for i in split.train + split.val + split.test]
    save_text(json.dumps(records), data_path)
    save_json({"source": str(folder.path.resolve()), **description}, info_path)
    return description


# -- variants and settings ----------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    builtin: bool = True

    @property
    def model_name(self) -> str:
        return str(self.overrides.get("model.name", PURE))

    def describe(self) -> str:
        return "; ".join(f"{k}={json.dumps(v)}" for k, v in self.overrides.items())


def split_top_level(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets, braces and quotes (values may be JSON lists)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_value(text: str) -> Any:
    """JSON if it parses (numbers, true/false/null, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignment(item: str, where: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if (
        not sep
        or not key
        or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", key)
    ):
        raise UserError(
            f"{where}: {item!r} is not key=value with a dotted config path "
            "(e.g. model.node_update_eps=1e-4)"
        )
    return key, parse_value(value.strip())


def parse_variants(specs: list[str]) -> list[Variant]:
    """``upstream,gated_sum,NAME:key=value;key=value`` (repeatable) -> variants, in order."""
    variants: list[Variant] = []
    builtins = ", ".join(BUILTIN_VARIANTS)
    for spec in specs:
        for item in split_top_level(spec, ","):
            name, colon, body = item.partition(":")
            name = name.strip()
            if not colon:
                if name not in BUILTIN_VARIANTS:
                    raise UserError(
                        f"unknown variant {name!r}; built-in variants: {builtins} "
                        "(or define one as NAME:key=value;key=value)"
                    )
                variants.append(Variant(name, dict(BUILTIN_VARIANTS[name])))
                continue
            if not _NAME.match(name):
                raise UserError(f"variant name {name!r}: use letters, digits, '_', '-', '.'")
            if name in BUILTIN_VARIANTS:
                raise UserError(
                    f"variant name {name!r} is built in ({builtins}); "
                    "give your variant another name"
                )
            pairs = split_top_level(body, ";")
            if not pairs:
                raise UserError(f"variant {name!r}: no key=value after ':'")
            overrides = dict(parse_assignment(p, f"variant {name!r}") for p in pairs)
            managed = sorted(k for k in overrides if k.split(".")[0] in MANAGED)
            if managed:
                raise UserError(
                    f"variant {name!r}: {managed[0]} is set by the benchmark itself "
                    "(split, seeds, precision, run folders)"
                )
            variants.append(Variant(name, overrides, builtin=False))
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"variant {duplicates[0]!r} is listed twice")
    if not variants:
        raise UserError(f"no variants given; built-in variants: {builtins}")
    return variants


def parse_list(text: str, kind, option: str) -> list:
    values = []
    for item in split_top_level(text, ","):
        try:
            values.append(kind(item))
        except ValueError:
            raise UserError(f"{option}: {item!r} is not a valid {kind.__name__}") from None
    if not values:
        raise UserError(f"{option}: give at least one value")
    return values


def parse_precisions(text: str) -> list[str]:
    values = []
    for item in split_top_level(text, ","):
        if item.lower() not in PRECISIONS:
            raise UserError(f"--precision: unknown precision {item!r} (use float32 or bf16)")
        values.append(PRECISIONS[item.lower()])
    if not values:
        raise UserError("--precision: give at least one of float32, bf16")
    return list(dict.fromkeys(values))


def parse_sets(items: list[str]) -> dict[str, Any]:
    sets = dict(parse_assignment(item, "--set") for item in items)
    for key in sets:
        top = key.split(".")[0]
        if top in MANAGED:
            raise UserError(
                f"--set {key}: set by the benchmark itself (split, seeds, precision, "
                "run folders); use --val-fraction, --split-seed, --max-train, "
                "--max-test, --seeds or --precision"
            )
        if key == "model.name":
            raise UserError(
                "--set model.name: the model is chosen per variant "
                "(e.g. --variants NAME:model.name=...)"
            )
    return sets


def set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def base_config(upstream: dict, preset: str | None, options: dict[str, Any]) -> dict:
    """``config_upstream.json`` converted to the pure model, then the preset, then the named
    command-line options (None: not given)."""
    data = copy.deepcopy(upstream)
    if not isinstance(data.get("model"), dict):
        data["model"] = {}
    data["model"]["name"] = PURE
    data["neighbor_strategy"] = "pure_torch"
    # mlearn id_prop.json energies are per atom: the model's total energy is out * N
    data["model"]["energy_mult_natoms"] = True
    data["use_lmdb"] = False  # graphs in memory: no cache folders in every run directory
    data["write_predictions"] = True
    given = {key: value for key, value in options.items() if value is not None}
    for key, value in {**PRESETS.get(preset or "", {}), **given}.items():
        set_path(data, key, value)
    return data


def check_model_sets(sets: dict[str, Any], variants: list[Variant]) -> None:
    """A ``--set model.X`` must name a field of at least one variant's model."""
    classes = model_config_classes()
    names = sorted({v.model_name for v in variants if v.model_name in classes})
    fields = {f for n in names for f in classes[n].model_fields}
    for key in sets:
        parts = key.split(".")
        if parts[0] == "model" and len(parts) > 1 and names and parts[1] not in fields:
            raise UserError(
                f"--set {key}: {parts[1]!r} is not a field of any variant's model "
                f"({', '.join(names)})"
            )


@dataclass
class VariantConfig:
    """A variant's validated config for one folder (before seed, precision and run folder)."""

    variant: Variant
    data: dict
    config: Any
    warnings: list[str]
    dropped: list[str]
    ignored_sets: list[str]


def variant_config(
    base: dict, variant: Variant, sets: dict[str, Any], split: CarvedSplit, label: str
) -> VariantConfig:
    """base -> variant's model -> ``--set`` -> variant's other overrides -> split; validated.

    Switching to another model keeps only the base model fields that model has (the others are
    listed in ``dropped``); a model with ``radial_cutoff`` gets the graph cutoff unless set.
    ``--set model.X`` is skipped for a variant whose model has no field X (``ignored_sets``).
    """
    classes = model_config_classes()
    data = copy.deepcopy(base)
    overrides = dict(variant.overrides)
    name = overrides.pop("model.name", data["model"].get("name", PURE))
    if name not in classes:
        raise PluginError(
            f"variant {variant.name!r} needs model {name!r}, which no installed "
            f"plugin registers (registered: {', '.join(sorted(classes))})"
        )
    fields = classes[name].model_fields
    dropped = []
    if name != data["model"].get("name"):
        dropped = sorted(k for k in data["model"] if k not in fields and k != "name")
        data["model"] = {k: v for k, v in data["model"].items() if k in fields}
        data["model"]["name"] = name
    ignored = []
    explicit = set(overrides)
    for key, value in sets.items():
        parts = key.split(".")
        if parts[0] == "model" and len(parts) > 1 and parts[1] not in fields:
            ignored.append(key)
            continue
        set_path(data, key, value)
        explicit.add(key)
    for key, value in overrides.items():
        set_path(data, key, value)
    if "radial_cutoff" in fields and "model.radial_cutoff" not in explicit:
        data["model"]["radial_cutoff"] = data.get("cutoff", 5.0)
    data.update(
        n_train=len(split.train), n_val=len(split.val), n_test=len(split.test), keep_data_order=True
    )
    try:
        loaded = load_config(data)
    except ConfigError as exc:
        message = "\n".join(
            line.replace("config: ", f"{label} variant {variant.name}: ", 1)
            for line in str(exc).splitlines()
        )
        raise ConfigError(message) from None
    return VariantConfig(variant, data, loaded.config, loaded.warnings, dropped, ignored)


def run_config(variant_cfg: VariantConfig, seed: int, precision: str, run_dir: Path):
    """The validated config of one run."""
    data = copy.deepcopy(variant_cfg.data)
    data.update(random_seed=seed, use_amp=precision == "bf16", output_dir=str(run_dir))
    return load_config(data).config
