"""Samples (one graph + its targets) and batches as the training loop sees them.

Graph batching belongs to the graph backend; targets are batched here, the same way for every
backend: graph-level targets stack to ``[B, ...]``, per-atom ones concatenate to ``[N, ...]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alignn_core.config.graph_settings import GraphSettings
from alignn_core.errors import DataError
from alignn_core.structures import Record, Structure

#: structures per ``build_many`` call: bounds the memory of a batched build
BUILD_CHUNK = 256

#: targets given per atom (concatenated in a batch); every other target is per structure
ATOM_TARGETS = ("forces", "atomwise")


def built_graphs(
    backend: Any,
    structures: Sequence[Structure],
    settings: GraphSettings,
    chunk: int = BUILD_CHUNK,
    labels: Sequence[str] | None = None,
) -> Iterator[Any]:
    """``backend.build(structure, settings)`` for each structure, in order.

    Through the backend's optional ``build_many`` in chunks of ``chunk`` when it has one. A
    chunk that raises is built again one structure at a time, so a bad structure fails exactly
    as :meth:`build` fails on it (the same error, for the first bad entry). ``labels`` (record
    ids, one per structure) name that entry in a :class:`DataError`: the backend sees a
    structure, not where it came from.
    """
    build_many = getattr(backend, "build_many", None)
    for start in range(0, len(structures), chunk):
        part = structures[start : start + chunk]
        graphs = _built_together(build_many, part, settings)
        if graphs is not None:
            yield from graphs
            continue
        for offset, structure in enumerate(part):
            label = None if labels is None else labels[start + offset]
            yield _built_alone(backend, structure, settings, label)


def _built_together(build_many: Any, part: Sequence[Structure], settings: GraphSettings):
    """``build_many(part, settings)`` as a list, or None when there is none or it raises (the
    part is then built one structure at a time, which raises build's own error)."""
    if build_many is None:
        return None
    try:
        return list(build_many(part, settings))
    except Exception:
        return None


def _built_alone(backend: Any, structure: Structure, settings: GraphSettings, label: str | None):
    """``backend.build(structure, settings)``; its :class:`DataError` names ``label``."""
    try:
        return backend.build(structure, settings)
    except DataError as exc:
        if label is None:
            raise
        raise DataError(f"structure {label!r}: {exc}") from None


@dataclass
class Sample:
    id: str
    index: int
    graph: Any
    targets: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Batch:
    ids: list[str]
    indices: list[int]
    graph: Any
    targets: dict[str, torch.Tensor]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            ids=self.ids,
            indices=self.indices,
            graph=self.graph.to(device),
            targets={k: v.to(device) for k, v in self.targets.items()},
        )


def record_targets(record: Record, target_scale: float | None = None) -> dict[str, np.ndarray]:
    """The arrays a sample carries for its loss terms."""
    target = record.target * target_scale if target_scale is not None else record.target
    targets = {"target": target}
    for name in ("forces", "stress", "atomwise", "additional"):
        value = getattr(record, name)
        if value is not None:
            targets[name] = value
    return targets


def make_collate(collate_graphs: Callable[[Sequence[Any]], Any], dtype: torch.dtype):
    """A DataLoader ``collate_fn`` that batches graphs with the backend and targets here."""

    def collate(samples: Sequence[Sample]) -> Batch:
        targets = {}
        for name in samples[0].targets:
            arrays = [np.asarray(s.targets[name]) for s in samples]
            stacked = np.concatenate(arrays) if name in ATOM_TARGETS else np.stack(arrays)
            targets[name] = torch.as_tensor(stacked, dtype=dtype)
        return Batch(
            ids=[s.id for s in samples],
            indices=[s.index for s in samples],
            graph=collate_graphs([s.graph for s in samples]),
            targets=targets,
        )

    return collate
