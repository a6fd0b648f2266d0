#!/usr/bin/env python
"""Median and range over several ``run_bench.py`` runs of the same rows and settings.

Why: one run on a shared machine moves by ±30% between runs, even with both sides alternating
call by call, so the table in docs/performance.md gives, per row, the median of a few runs
with their range. This tool computes exactly that from the runs' ``results.json`` files and
refuses runs that do not compare (other threads, mode, allocator policies or device).

    python tools/bench/combine_runs.py run1/results.json run2/results.json run3/results.json \
        -o bench/combined.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

SETTINGS = ("quick", "threads", "malloc", "upstream_version")
"""Report fields that must agree between runs for their ratios to be comparable."""


class IncomparableRuns(ValueError):
    """The runs were made with different settings or rows."""


def combine(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (row, metric) of any run, in first-seen order: medians of ``ours``,
    ``upstream`` and ``speedup`` over the runs that have it (``runs``: how many; a row added
    to the bench later is in fewer), and the smallest and largest speedup."""
    if len(reports) < 2:
        raise IncomparableRuns("give at least two runs to combine")
    first = reports[0]
    for index, report in enumerate(reports[1:], start=2):
        for key in (*SETTINGS, "device"):
            if _setting(report, key) != _setting(first, key):
                raise IncomparableRuns(
                    f"run {index} has {key} {_setting(report, key)!r}, run 1 has "
                    f"{_setting(first, key)!r}; combine runs made with the same settings"
                )
    keyed = [{(line["row"], line["metric"]): line for line in r["summary"]} for r in reports]
    lines = []
    for key in dict.fromkeys(key for runs in keyed for key in runs):  # first-seen order
        values = [runs[key] for runs in keyed if key in runs]
        speedups = [v["speedup"] for v in values if v.get("speedup")]
        lines.append({
            "group": values[0]["group"], "row": key[0], "metric": key[1],
            "ours": _median([v.get("ours") for v in values]),
            "upstream": _median([v.get("upstream") for v in values]),
            "speedup": _median(speedups),
            "speedup_min": min(speedups) if speedups else None,
            "speedup_max": max(speedups) if speedups else None,
            "runs": len(values),
        })  # fmt: skip
    return lines


def _setting(report: dict[str, Any], key: str) -> Any:
    if key == "device":
        return report["machine"].get("gpu")
    return report.get(key)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def markdown(reports: list[dict[str, Any]], lines: list[dict[str, Any]]) -> str:
    """The combined table with the runs' dates and settings."""
    first = reports[0]
    dates = ", ".join(r["date"] for r in reports)
    out = [
        f"# Benchmark: ours vs upstream ALIGNN {first['upstream_version']}, {len(reports)} runs",
        "",
        f"Runs: {dates}; {first['threads']} torch thread(s) per side, "
        f"{'quick' if first['quick'] else 'full'} mode, allocator policy ours "
        f"{first['malloc']['ours']}, upstream {first['malloc']['upstream']}.",
        "",
        "Medians over the runs; `speedup` > 1 means ours is better, [smallest-largest] over the "
        "runs.",
        "",
        "| row | case | metric | ours | upstream | speedup | range | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for line in lines:
        speedup = line["speedup"]
        spread = (f"{line['speedup_min']:.2f}-{line['speedup_max']:.2f}"
                  if speedup is not None else "–")  # fmt: skip
        out.append(
            f"| {line['group']} | {line['row']} | {line['metric']} | {_fmt(line['ours'])} | "
            f"{_fmt(line['upstream'])} | "
            f"{'–' if speedup is None else f'**{speedup:.2f}x**'} | {spread} | {line['runs']} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json of each run")
    parser.add_argument("-o", "--out", type=Path, help="markdown file (default: stdout)")
    args = parser.parse_args(argv)
    try:
        reports = [json.loads(path.read_text()) for path in args.results]
        lines = combine(reports)
    except (OSError, json.JSONDecodeError, KeyError, IncomparableRuns) as error:
        print(f"combine_runs: {error}", file=sys.stderr)
        return 2
    text = markdown(reports, lines)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(lines, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
