"""Record upstream alignn.data.get_id_train_val_test index lists (tests/fixtures/upstream/splits.json).

    /work/upstream-venv/bin/python tools/reference/make_splits.py

Arguments are passed exactly as listed under "args" (the TrainingConfig defaults are
train_ratio 0.8, val_ratio 0.1, test_ratio 0.1, split_seed = fixed 123 upstream).
"""

import io
import json
import sys
from contextlib import redirect_stdout
from importlib.metadata import version
from pathlib import Path

from alignn.data import get_id_train_val_test

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "upstream" / "splits.json"

CASES = {
    "n50_default_keep": dict(total_size=50, split_seed=123, train_ratio=0.8, val_ratio=0.1,
                             test_ratio=0.1, keep_data_order=True),
    "n50_default_shuffle": dict(total_size=50, split_seed=123, train_ratio=0.8, val_ratio=0.1,
                                test_ratio=0.1, keep_data_order=False),
    "n324_mlearn_cu_keep": dict(total_size=324, split_seed=123, train_ratio=0.8, val_ratio=0.1,
                                test_ratio=0.1, n_train=262, n_val=31, n_test=31,
                                keep_data_order=True),
    "n37_train_none_shuffle": dict(total_size=37, split_seed=123, train_ratio=None, val_ratio=0.1,
                                   test_ratio=0.1, keep_data_order=False),
    "n10_ntest0_keep": dict(total_size=10, split_seed=123, train_ratio=0.8, val_ratio=0.1,
                            test_ratio=0.1, n_test=0, keep_data_order=True),
    "n10_nval0_ntest0_keep": dict(total_size=10, split_seed=123, train_ratio=0.8, val_ratio=0.1,
                                  test_ratio=0.1, n_val=0, n_test=0, keep_data_order=True),
    "n10_nval0_ntest0_shuffle": dict(total_size=10, split_seed=123, train_ratio=0.8, val_ratio=0.1,
                                     test_ratio=0.1, n_val=0, n_test=0, keep_data_order=False),
    "n10_nval0_keep": dict(total_size=10, split_seed=123, train_ratio=0.8, val_ratio=0.1,
                           test_ratio=0.1, n_val=0, keep_data_order=True),
    "n10_too_many": dict(total_size=10, split_seed=123, n_train=9, n_val=1, n_test=1,
                         keep_data_order=True),
    "n50_seed7_shuffle": dict(total_size=50, split_seed=7, train_ratio=0.8, val_ratio=0.1,
                              test_ratio=0.1, keep_data_order=False),
}


def main():
    doc = {"upstream": f"alignn {version('alignn')} alignn.data.get_id_train_val_test",
           "note": "indices are positions in the (filtered) dataset list; upstream returns numpy "
                   "int64 elements, stored here as ints", "cases": {}}
    for name, args in CASES.items():
        entry = {"args": args}
        try:
            with redirect_stdout(io.StringIO()):
                tr, va, te = get_id_train_val_test(**args)
            entry.update(train=[int(i) for i in tr], val=[int(i) for i in va], test=[int(i) for i in te])
        except Exception as exc:  # noqa: BLE001
            entry["raises"] = f"{type(exc).__name__}: {exc}"
        doc["cases"][name] = entry
        print(name, {k: (len(v) if isinstance(v, list) else v) for k, v in entry.items() if k != "args"})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    json.dump(doc, open(OUT, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
