"""Split membership equals upstream's (fixtures produced by upstream's own function)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from alignn_core.data.splits import split_indices
from alignn_core.errors import DataError
from tests.conftest import UPSTREAM

CASES = json.loads((UPSTREAM / "splits.json").read_text())["cases"]


def _config(args: dict) -> SimpleNamespace:
    return SimpleNamespace(
        train_ratio=args.get("train_ratio"), val_ratio=args.get("val_ratio"),
        test_ratio=args.get("test_ratio"), n_train=args.get("n_train"), n_val=args.get("n_val"),
        n_test=args.get("n_test"), keep_data_order=args["keep_data_order"],
    )  # fmt: skip


# upstream's training path always passes split_seed=123; cases with an empty/whole val set are
# tested separately below
SANE = [n for n, c in CASES.items() if c["args"].get("split_seed") == 123 and c.get("val")
        and len(c["val"]) < c["args"]["total_size"]]  # fmt: skip


@pytest.mark.parametrize("name", SANE)
def test_split_matches_upstream(name):
    case = CASES[name]
    split = split_indices(case["args"]["total_size"], _config(case["args"]))
    assert split.train == case["train"]
    assert split.val == case["val"]
    assert split.test == case["test"]


def test_zero_val_is_an_error_not_the_whole_dataset():
    # upstream's ids[-(0+0):-0] puts all 10 structures into val; we refuse instead
    case = CASES["n10_nval0_ntest0_keep"]
    with pytest.raises(DataError) as info:
        split_indices(10, _config(case["args"]))
    assert str(info.value) == (
        "split leaves the validation set empty; set n_val or val_ratio so that at least "
        "one structure is used for validation"
    )


def test_counts_larger_than_dataset():
    config = _config({"n_train": 8, "n_val": 2, "n_test": 2, "keep_data_order": True})
    with pytest.raises(DataError) as info:
        split_indices(10, config)
    assert str(info.value) == (
        "split needs n_train + n_val + n_test = 8 + 2 + 2 = 12 structures but the dataset "
        "has 10; lower the counts"
    )
