"""The request/reply loop shared by the two benchmark workers (stdlib only).

``run_bench.py`` drives two worker processes, ours (dev venv) and upstream's (its own venv, whose
``alignn`` package name would clash with nothing of ours but whose torch/numpy pins differ). Each
worker reads one JSON request per line on stdin and answers one JSON line on stdout. Keeping the
workers alive between requests lets the driver alternate ours/upstream call by call (so load
drift on the shared machine hits both alike) without paying interpreter and import start-up per
timing. This module imports nothing outside the standard library at import time: both venvs
load it (torch, which both have, only inside :func:`synchronize`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

Task = Callable[[dict[str, Any]], dict[str, Any]]


def apply_allocator_policy() -> list[str]:
    """Apply ``ALIGNN_MALLOC`` (set per worker by ``run_bench.py``) to this worker process.

    Both workers call this before importing torch (PyTorch reads its huge-page switch at its
    first allocation). The policy code is ``alignn_core/allocator.py`` (stdlib only), loaded by
    path so upstream's venv, which has none of our packages, runs the very same code.
    """
    path = Path(__file__).resolve().parents[2] / "alignn_core" / "allocator.py"
    spec = importlib.util.spec_from_file_location("_bench_allocator", path)
    assert spec is not None and spec.loader is not None
    allocator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(allocator)
    return allocator.apply_policy(allocator.policy_from_env())


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def synchronize(device: Any) -> None:
    """Wait for queued device work, so a host clock read after it times the work itself (CUDA
    launches return before the kernels finish); nothing to wait for on the CPU."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize(device)


def serve(tasks: dict[str, Task]) -> None:
    """Answer requests until stdin closes.

    Upstream prints progress and memory lines to stdout; the reply channel is a private copy of
    the original stdout and fd 1 is pointed at stderr, so nothing a library prints can corrupt a
    reply.
    """
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            reply = tasks[request["task"]](request)
        except Exception as exc:  # report, keep serving: one broken row must not end the run
            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply["peak_rss_bytes"] = peak_rss_bytes()
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
