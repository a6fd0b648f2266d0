"""Train/val/test membership, identical to upstream ALIGNN's for the same config.

Upstream shuffles with a fixed ``random.seed(123)`` (not ``random_seed``) when
``keep_data_order`` is false, takes train from the front and val/test from the back. We keep that
so results compare side by side, and fix its edge case: ``n_test = 0`` selects nothing (upstream's
``ids[-0:]`` selects everything).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alignn_core.errors import DataError
from alignn_core.structures import Record

SPLIT_SEED = 123


@dataclass(frozen=True)
class Split:
    train: list[int]
    val: list[int]
    test: list[int]


def split_sizes(n: int, config) -> tuple[int, int, int]:
    """Counts from ``n_*`` or ``int(ratio * n)``; ``train_ratio`` None means the remainder."""
    val_ratio = config.val_ratio or 0.0
    test_ratio = config.test_ratio or 0.0
    train_ratio = (
        config.train_ratio if config.train_ratio is not None else 1 - val_ratio - test_ratio
    )
    n_train = config.n_train if config.n_train is not None else int(train_ratio * n)
    n_val = config.n_val if config.n_val is not None else int(val_ratio * n)
    n_test = config.n_test if config.n_test is not None else int(test_ratio * n)
    if n_train + n_val + n_test > n:
        raise DataError(
            f"split needs n_train + n_val + n_test = {n_train} + {n_val} + {n_test} = "
            f"{n_train + n_val + n_test} structures but the dataset has {n}; lower the counts"
        )
    return n_train, n_val, n_test


def split_indices(n: int, config) -> Split:
    """Upstream-compatible split of ``range(n)``."""
    n_train, n_val, n_test = split_sizes(n, config)
    ids = list(range(n))
    if not config.keep_data_order:
        random.seed(SPLIT_SEED)
        random.shuffle(ids)
    test = ids[n - n_test :] if n_test else []
    val = ids[n - n_test - n_val : n - n_test] if n_val else []
    split = Split(train=ids[:n_train], val=val, test=test)
    if not split.train:
        raise DataError("split leaves the training set empty; raise n_train or train_ratio")
    if not split.val:
        raise DataError(
            "split leaves the validation set empty; set n_val or val_ratio so that at least "
            "one structure is used for validation"
        )
    return split


def structure_key(record: Record) -> str:
    """Content hash of a structure (numbers, positions, cell to 1e-6 Å) for overlap checks."""
    s = record.structure
    digest = hashlib.sha1()
    for array in (s.numbers, np.round(s.positions, 6), np.round(s.cell, 6)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def overlap_count(records: Sequence[Record], a: Sequence[int], b: Sequence[int]) -> int:
    """How many records of ``b`` have an identical structure in ``a``."""
    keys_a = Counter(structure_key(records[i]) for i in a)
    return sum(1 for i in b if structure_key(records[i]) in keys_a)
