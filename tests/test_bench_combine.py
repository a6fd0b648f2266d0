"""``tools/bench/combine_runs.py``: medians and ranges over bench runs, refusal of mixed runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import REPO

_SPEC = importlib.util.spec_from_file_location(
    "combine_runs", REPO / "tools" / "bench" / "combine_runs.py"
)
assert _SPEC is not None and _SPEC.loader is not None
combine_runs = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(combine_runs)


def _report(ours: float, upstream: float, malloc: str = "system") -> dict:
    return {
        "date": "2026-11-26T00:00:00+00:00", "quick": False, "threads": 1,
        "upstream_version": "2026.8.11", "malloc": {"ours": "retain", "upstream": malloc},
        "machine": {"gpu": None},
        "summary": [
            {"group": "infer", "row": "Si 64, eager", "metric": "evals/s", "ours": ours,
             "upstream": upstream, "speedup": ours / upstream},
            {"group": "infer", "row": "Si 64, exported_eager", "metric": "evals/s",
             "ours": ours, "upstream": None, "speedup": None},
        ],
    }  # fmt: skip


def test_medians_and_range_over_runs() -> None:
    later = _report(80, 40)
    later["summary"].insert(1, {"group": "infer", "row": "new row", "metric": "evals/s",
                                "ours": 3.0, "upstream": 1.0, "speedup": 3.0})  # fmt: skip
    lines = combine_runs.combine([_report(90, 60), _report(60, 50), later])
    eager, exported, new = lines
    assert (new["row"], new["runs"], new["speedup"]) == ("new row", 1, 3.0)
    assert eager["ours"] == 80 and eager["upstream"] == 50 and eager["runs"] == 3
    # the median of the three speedups (1.5, 1.2, 2.0), not the ratio of the medians (1.6)
    assert eager["speedup"] == 1.5
    assert (eager["speedup_min"], eager["speedup_max"]) == (1.2, 2.0)
    assert exported["ours"] == 80 and exported["upstream"] is None
    assert exported["speedup"] is None
    table = combine_runs.markdown([_report(90, 60)] * 3, lines)
    assert "| infer | Si 64, eager | evals/s | 80 | 50 | **1.50x** | 1.20-2.00 | 3 |" in table


def test_runs_with_other_settings_are_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(combine_runs.IncomparableRuns) as error:
        combine_runs.combine([_report(90, 60), _report(90, 60, malloc="retain")])
    assert str(error.value) == (
        "run 2 has malloc {'ours': 'retain', 'upstream': 'retain'}, run 1 has "
        "{'ours': 'retain', 'upstream': 'system'}; combine runs made with the same settings"
    )
    with pytest.raises(combine_runs.IncomparableRuns, match="at least two runs"):
        combine_runs.combine([_report(90, 60)])
    paths = []
    for index, malloc in enumerate(("system", "retain")):
        paths.append(tmp_path / f"run{index}.json")
        paths[-1].write_text(json.dumps(_report(90, 60, malloc)))
    assert combine_runs.main([str(p) for p in paths]) == 2
    assert capsys.readouterr().err.startswith("combine_runs: run 2 has malloc")


def test_writes_markdown_and_json(tmp_path: Path) -> None:
    paths = []
    for index, (ours, upstream) in enumerate(((90, 60), (60, 50))):
        paths.append(tmp_path / f"run{index}.json")
        paths[-1].write_text(json.dumps(_report(ours, upstream)))
    out = tmp_path / "combined.md"
    assert combine_runs.main([str(p) for p in paths] + ["-o", str(out)]) == 0
    assert "2 runs" in out.read_text().splitlines()[0]
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved[0]["speedup"] == pytest.approx(1.35)
