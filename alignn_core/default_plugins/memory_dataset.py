"""The ``memory`` dataset provider: builds every graph once and keeps them in RAM.

Right for datasets that fit in memory; the LMDB plugin streams from disk instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from alignn_core.data.samples import Sample, built_graphs, record_targets
from alignn_core.hookspecs import hookimpl
from alignn_core.structures import Record


class InMemoryDataset(Dataset):
    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


class MemoryDatasetProvider:
    name = "memory"

    def open(
        self,
        records: Sequence[Record],
        *,
        backend,
        settings,
        split: str,
        cache_dir: Path | None = None,
        read_existing: bool = False,
        indices: Sequence[int] | None = None,
        target_scale: float | None = None,
        progress=None,
    ) -> InMemoryDataset:
        indices = list(indices) if indices is not None else list(range(len(records)))
        samples = []
        structures = [records[index].structure for index in indices]
        labels = [records[index].id for index in indices]
        graphs = built_graphs(backend, structures, settings, labels=labels)
        for index, graph in zip(indices, graphs, strict=True):
            record = records[index]
            samples.append(
                Sample(
                    id=record.id,
                    index=index,
                    graph=graph,
                    targets=record_targets(record, target_scale),
                )
            )
            if progress is not None:
                progress()
        return InMemoryDataset(samples)


@hookimpl
def register_datasets(register):
    register(MemoryDatasetProvider())
