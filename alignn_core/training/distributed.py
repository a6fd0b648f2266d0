"""Data-parallel training on torch.distributed (DDP), launched by ``torchrun``.

The trainer sees one :class:`DistContext`: rank, world size and the few collectives it needs.
A single process gets a context with ``world_size == 1`` whose methods are no-ops, so the
training loop has one code path. Why each piece exists:

- **Launch.** ``torchrun`` (or ``alignn run --nproc N``, which runs ``torchrun --standalone``)
  sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; we initialise
  the default process group from them (NCCL on CUDA, gloo on CPU) with a finite timeout, so a
  rank whose peer died raises instead of waiting forever (torchrun's agent normally tears the
  group down first).
- **Batches.** ``batch_size`` is the *global* batch: each rank takes ``batch_size / world``.
  Training uses :class:`~torch.utils.data.DistributedSampler` in every run (one process is
  ``num_replicas=1``): its epoch permutation depends only on ``seed + epoch``, and rank ``r``
  takes positions ``r, r+W, ...``, so global batch ``k`` holds the same structures whatever
  the number of processes, and a resumed run sees the epochs an uninterrupted one would.
- **Evaluation** is sharded the same way without padding; losses and MAEs are combined weighted
  by structure counts, and prediction rows are gathered on rank 0 in the 1-process order.
- **Files.** Only rank 0 writes (checkpoints hold the unwrapped module's state dict); other
  ranks get a quiet console, so they print nothing but errors.
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from alignn_core.errors import ConfigError, UserError
from alignn_core.training.evaluation import EpochStats

TIMEOUT_ENV = "ALIGNN_DDP_TIMEOUT"
DEFAULT_TIMEOUT_S = 600
"""Seconds a collective may wait for a peer (between two collectives lies one training step,
or rank 0 writing an epoch's checkpoint) before the waiting rank fails."""

SETUP_TIMEOUT = timedelta(hours=24)
"""Wait allowed while rank 0 builds the graph cache: a large cache can take hours to build."""


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def is_main_process() -> bool:
    """Whether this process may print (rank 0, or not launched by torchrun at all)."""
    env = torchrun_env()
    return env is None or env[0] == 0


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command ``alignn run --nproc N`` runs: single-node torchrun around ``alignn ARGS``.

    ``python -m torch.distributed.run`` is the ``torchrun`` script, taken from this interpreter
    so the ranks import the same installation.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "alignn_core.cli", *args]  # fmt: skip


@dataclass
class DistContext:
    """This process's place in the job, and the collectives the trainer uses."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    setup_group: Any = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def per_rank_batch(self, batch_size: int) -> int:
        """Each rank's share of the global batch; the global batch must split evenly, or the
        update would differ from the same run on another number of processes."""
        if batch_size % self.world_size:
            raise ConfigError(
                f"batch_size {batch_size} is the global batch and must be divisible by the "
                f"{self.world_size} processes; choose a multiple of {self.world_size}"
            )
        return batch_size // self.world_size

    def shared_seed(self, seed: int | None) -> int:
        """The shuffling seed every rank must agree on (rank 0's pick when none is set)."""
        if seed is not None:
            return seed
        picked = [random.randrange(2**31)]
        if self.enabled:
            dist.broadcast_object_list(picked, src=0)
        return int(picked[0])

    def train_sampler(self, dataset: Dataset, seed: int) -> DistributedSampler:
        """Shuffled shard of the training set; call ``set_epoch`` every epoch."""
        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank,
                                  shuffle=True, seed=seed, drop_last=False)  # fmt: skip

    def shard(self, size: int) -> list[int]:
        """This rank's positions of an evaluation set: ``rank, rank+W, ...``, no padding (a
        padded duplicate would be counted twice in the metrics)."""
        return list(range(self.rank, size, self.world_size))

    def wrap(self, model: torch.nn.Module, device: torch.device, config) -> torch.nn.Module:
        """The module the training step calls: DDP (gradients averaged across ranks) or the
        model itself. Evaluation and checkpoints use the unwrapped model, whose parameters are
        the same tensors, so state dicts never carry DDP's ``module.`` prefix."""
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=find_unused_parameters(config)
        )

    def merge_stats(self, stats: EpochStats) -> EpochStats:
        """Every rank's epoch statistics combined, weighted by structure counts (identical on
        all ranks, so best-model and early-stopping decisions agree)."""
        if not self.enabled:
            return stats
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, stats)
        merged = EpochStats()
        merged.structures = sum(p.structures for p in parts)
        if merged.structures == 0:
            return merged

        def mean(values: list[tuple[float, int]]) -> float:
            return sum(v * n for v, n in values) / max(sum(n for _, n in values), 1)

        merged.loss = mean([(p.loss, p.structures) for p in parts])
        for attr in ("terms", "maes"):
            keys = dict.fromkeys(k for p in parts for k in getattr(p, attr))  # first-seen order
            setattr(merged, attr, {
                k: mean([(getattr(p, attr)[k], p.structures) for p in parts
                         if k in getattr(p, attr)]) for k in keys
            })  # fmt: skip
        return merged

    def gather_rows(self, rows: list[dict]) -> list[dict]:
        """Prediction rows of every rank on rank 0, in the order one process would produce
        (shard ``r`` holds positions ``r, r+W, ...``); other ranks get an empty list."""
        if not self.enabled:
            return rows
        parts: list[Any] = [None] * self.world_size if self.is_main else None
        dist.gather_object(rows, parts, dst=0)
        if not self.is_main:
            return []
        assert parts is not None
        ordered = []
        for j in range(max(len(p) for p in parts)):
            ordered.extend(p[j] for p in parts if j < len(p))
        return ordered

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (resume state: only rank 0 reads the files, so the
        output folder need not be shared between nodes)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextmanager
    def main_first(self, enabled: bool = True) -> Iterator[None]:
        """Run the block on rank 0, then on the others: rank 0 builds a graph cache while the
        rest wait (up to :data:`SETUP_TIMEOUT`), then they read it. If rank 0 fails inside
        the block it never reaches the barrier; torchrun then stops the waiting ranks."""
        if not (self.enabled and enabled):
            yield
            return
        if not self.is_main:
            dist.barrier(group=self.setup_group)
        yield
        if self.is_main:
            dist.barrier(group=self.setup_group)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def find_unused_parameters(config) -> bool:
    """``ddp_find_unused_parameters`` when the config sets it, else True.

    ALIGNN always has parameters that never reach the loss: the edge LayerNorm of the last
    ALIGNN layer (its triplet features are not read again) and of the last GCN layer. DDP with
    ``find_unused_parameters=False`` stops at the second step on them, so an unset field means
    True; an explicit ``false`` is honoured (for models where every parameter is used).
    """
    if "ddp_find_unused_parameters" in config.model_fields_set:
        return bool(config.ddp_find_unused_parameters)
    return True


def setup(config, device_name: str | None) -> tuple[DistContext, torch.device | None]:
    """Join the torchrun job when ``distributed`` is set; returns the context and, for CUDA
    ranks, the rank's device (``cuda:LOCAL_RANK``), else None (the caller's choice stands)."""
    env = torchrun_env()
    if env is None or env[1] == 1:
        return DistContext(), None
    rank, world, local_rank = env
    if not config.distributed:
        raise ConfigError(
            f"launched by torchrun with WORLD_SIZE={world} but distributed is false: every "
            "process would train alone and write the same files; set distributed to true "
            "or use alignn run --nproc N"
        )
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed support")
    cuda = torch.cuda.is_available() and (device_name is None or device_name == "cuda")
    device = None
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device_name is not None and device_name.startswith("cuda"):
        raise ConfigError(f"--device {device_name}: with torchrun each rank takes "
                          "cuda:LOCAL_RANK; pass --device cuda or leave it out")  # fmt: skip
    if rank != 0:  # one console per job: the other ranks print errors only
        warnings.simplefilter("ignore")
    # DDP's hint that a gradient's strides differ from its bucket's is about speed only, and
    # fires for ALIGNN's output head on every run: not actionable, so not shown.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    try:
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, not "
                          f"{os.environ[TIMEOUT_ENV]!r}") from None  # fmt: skip
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    setup_group = dist.new_group(backend="gloo", timeout=SETUP_TIMEOUT)
    return DistContext(rank, world, local_rank, setup_group), device
