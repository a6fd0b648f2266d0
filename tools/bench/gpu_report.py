"""Results files of the GPU benchmark scripts (``cuda_graph_speed.py``, ``md_cuda_graphs.py``):
the machine, then ``<stem>.json`` (every row) and ``<stem>.md`` (a table), both under ``out``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch


def gpu_machine(**settings: Any) -> dict[str, Any]:
    """The GPU, torch build and UTC time of a run, plus the run's own settings."""
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **settings}  # fmt: skip


def write_results(out: Path, stem: str, machine: dict[str, Any], rows: list[dict[str, Any]],
                  caption: str, table: list[str]) -> None:  # fmt: skip
    """Write ``stem.json`` and ``stem.md`` (the machine line, ``caption``, ``table`` rows) and
    print the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({**machine, "rows": rows}, indent=1))
    heading = f"{machine['device']}, torch {machine['torch']}, {machine['date']}; {caption}"
    text = "\n".join([heading, "", *table]) + "\n"
    (out / f"{stem}.md").write_text(text)
    print(text, end="")
