#!/usr/bin/env python
"""Side-by-side benchmark, ours vs upstream ALIGNN 2026.8.11, in one invocation (``nox -s bench``).

Writes ``bench/results.json`` (every timing) and ``bench/results.md`` (medians and ratios).

Two long-lived workers answer timing requests: ``ours_worker.py`` in this interpreter's venv and
``upstream_worker.py`` in upstream's (``--upstream-python``). Every repetition of a row asks
both, alternating which goes first, so the load drift of a shared machine lands on both sides;
the tables report medians and ratios of medians. An infer or graph repetition of a small input
is a few back-to-back calls (``INFER_CALLS``, ``GRAPH_CALLS``), timed as one. Set-up (reading
files, building the graphs a row does not time, building models) happens once per worker and is
never timed. The training and cache rows run in a fresh worker process per repetition so that
the peak RSS each reports is that row's alone.

Rows (float32, ``--threads`` torch threads per worker, default 1; ``--device cuda`` runs the
model rows, 2 and 3, on the GPU):

1. ``graph``: graph construction (neighbour list, line graph, features) with the
   ``examples/mlearn-cu/config.json`` settings (pure_torch, cutoff 8 Å, 13 neighbours, three-body
   3.5 Å): the 50 ``examples/props`` POSCARs, mlearn Cu cells, rattled Si supercells of 64, 512,
   4,096 (and 32,768, ours only: upstream's search is quadratic in atoms) atoms.
2. ``train``: optimiser steps on prebuilt mlearn Cu graphs (batch 5, forces through the double
   backward, AdamW) with upstream's ``config.json`` as given (2+4 layers, 256 features, cutoff
   8 Å; not in ``--quick`` CPU runs) and ``config_reduced.json`` (2+2 layers, 64 features,
   cutoff 5 Å): see :func:`train_configs`.
3. ``infer``: energy+forces+stress of a prebuilt graph of a 64/512/4,096-atom Si cell and of a
   batch of 32 8-atom Si cells (reduced model), eager; and each side's TorchScript export
   called from a neighbour list (``forward_tensors_z``, one structure per call, so the 32
   cells one by one; ours also without TorchScript, the same module left eager:
   ``exported_eager``). On CUDA also ours by CUDA graph replay
   (``cuda_graph``, ``alignn_torch.model.cuda_graphs``), from the graph on the host, and our
   export under TorchScript's default executor (``torchscript_default``, optimisation on).
4. ``cache``: cold LMDB build vs warm reopen (``read_existing``) of mlearn Cu records, each
   followed by one pass of reads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from alignn_core.allocator import DEFAULT_POLICY, POLICIES

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
UPSTREAM_PYTHON = Path("/work/upstream-venv/bin/python")
IMPLS = ("ours", "upstream")
INFER_CALLS = {8: 6, 64: 10, 512: 3, 4096: 1}
"""Back-to-back calls per timed repetition of an infer row, by atoms per cell (8: the batch of
32): about 0.1-0.3 s of calls on this CPU, so one hiccup of the machine moves a median less."""
GRAPH_CALLS = {"props": 3, 64: 20, 512: 3, 4096: 1}
"""Back-to-back builds per timed repetition of a graph row whose single build takes ours under
~10 ms here (the 50 POSCARs, Si 64 and 512), for the same reason; the mlearn cells (~0.3 s) and
larger cells are timed one build per repetition."""


class Worker:
    """One worker process and its JSON-lines channel (see ``worker_protocol.py``)."""

    def __init__(self, python: str, script: Path, malloc: str, threads: int,
                 device: str = "cpu") -> None:  # fmt: skip
        # numpy's BLAS (our neighbour search) gets the same thread budget as torch; the worker
        # applies the allocator policy ``malloc`` before it imports torch (worker_protocol)
        limits = {name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                  "MKL_NUM_THREADS")}  # fmt: skip
        limits["ALIGNN_MALLOC"] = malloc
        self.process = subprocess.Popen(
            [python, str(script), str(threads), device], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if not os.environ.get("BENCH_VERBOSE") else None,
            text=True, cwd=REPO, env={**os.environ, **limits},
        )  # fmt: skip

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            return {"error": f"worker exited with code {self.process.wait()}"}
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def silicon_json(path: Path, n_atoms: int, copies: int = 1) -> str:
    """Rattled Si diamond supercells (``torchscript_speed.silicon``) as JARVIS atoms dicts, the
    input both workers read, so both start from identical coordinates."""
    sys.path.insert(0, str(HERE))
    from torchscript_speed import silicon

    cells = []
    for seed in range(copies):
        atoms = silicon(n_atoms, seed=seed)
        cells.append({"lattice_mat": atoms.cell.array.tolist(),
                      "coords": atoms.positions.tolist(),
                      "elements": atoms.get_chemical_symbols(), "cartesian": True,
                      "props": [""] * len(atoms)})  # fmt: skip
    path.write_text(json.dumps(cells))
    return str(path)


def train_configs(quick: bool, device: str) -> list[tuple[str, str]]:
    """The training rows' configs: upstream's mlearn Cu config as given (hidden 256, 2+4
    layers, cutoff 8 Å: one CPU epoch takes upstream ~26 minutes here, so the CPU rows time 8
    steps of it) except in quick CPU runs, and the reduced one (hidden 64, 2+2, cutoff 5 Å)."""
    upstream = ("config.json", "(upstream config)")
    reduced = ("config_reduced.json", "(reduced config)")
    if device != "cpu":
        return [upstream, reduced]
    return [reduced] if quick else [upstream, reduced]


def plan(quick: bool, inputs: Path, device: str = "cpu") -> list[dict[str, Any]]:
    """The rows: ``request`` goes to the workers, ``impls`` who runs it, ``repeats`` timed
    repetitions after ``warmup`` untimed ones, ``fresh`` a new process per repetition,
    ``calls`` back-to-back calls summed into one repetition (:data:`INFER_CALLS`).

    On CUDA only the model rows run (train, infer): our graph construction and cache are CPU
    (numpy) work whatever the model's device, so their CPU rows are the ones to read.
    """
    si = {n: silicon_json(inputs / f"si{n}.json", n) for n in (64, 512, 4096, 32768)}
    si8x32 = silicon_json(inputs / "si8x32.json", 8, copies=32)
    reps = 3 if quick else 5
    rows: list[dict[str, Any]] = []

    def row(group: str, name: str, request: dict[str, Any], **options: Any) -> None:
        rows.append({"group": group, "name": name, "request": request, "impls": IMPLS,
                     "repeats": reps, "warmup": 1, "fresh": False, "calls": 1,
                     **options})  # fmt: skip

    row("graph", "50 props POSCARs", {"task": "graph", "structures": "props"},
        calls=GRAPH_CALLS["props"])  # fmt: skip
    row("graph", "mlearn Cu cells" + (" (first 60)" if quick else " (324)"),
        {"task": "graph", "structures": "mlearn", "limit": 60 if quick else None})  # fmt: skip
    for n in (64, 512, 4096):
        row("graph", f"Si {n} atoms", {"task": "graph", "structures": si[n]},
            repeats=2 if n == 4096 and quick else reps, calls=GRAPH_CALLS[n])  # fmt: skip
    row("graph", "Si 32768 atoms", {"task": "graph", "structures": si[32768]},
        impls=("ours",), repeats=2 if quick else reps)  # fmt: skip
    for config, label in train_configs(quick, device):
        # 52 x 5 = 260 of the 262 training structures; 8 steps where that would take hours
        steps = 52 if device != "cpu" or (config == "config_reduced.json" and not quick) else 8
        row("train", f"mlearn Cu {label}, {steps} steps x batch 5",
            {"task": "train", "steps": steps, "batch_size": 5, "config": config}, fresh=True,
            warmup=0, repeats=3)  # fmt: skip
    graphed = ("cuda_graph",) if device != "cpu" else ()  # ours only: upstream has none
    # ours only, on CUDA: our export under the executor upstream's runs with (optimisation on),
    # which on a GPU may fuse what docs/export.md measured slower on the CPU
    default_executor = ("torchscript_default",) if device != "cpu" else ()
    for n in (64, 512, 4096):
        big = n == 4096
        for mode in ("eager", "exported_eager", "torchscript", *default_executor, *graphed):
            # upstream's export runs with the graph executor's optimisation on (its default),
            # which needs a few profiling calls before it settles
            row("infer", f"Si {n}, {mode}",
                {"task": "infer", "structures": si[n], "batch": 1, "mode": mode},
                impls=IMPLS if mode in ("eager", "torchscript") else ("ours",),
                repeats=2 if big and quick else reps, calls=INFER_CALLS[n],
                warmup=4 if mode.startswith("torchscript") else 1 if big else 2)  # fmt: skip
    row(
        "infer",
        "32 x Si 8, batched eager",
        {"task": "infer", "structures": si8x32, "batch": 32, "mode": "eager"},
        warmup=2,
        calls=INFER_CALLS[8],
    )
    # the exports take one structure (an MD host's call), so a batch goes through them cell by
    # cell: what a user with 32 structures and only the exported file does
    for mode in ("exported_eager", "torchscript"):
        row("infer", f"32 x Si 8, {mode} one by one",
            {"task": "infer", "structures": si8x32, "batch": 32, "mode": mode},
            impls=IMPLS if mode == "torchscript" else ("ours",), calls=2,
            warmup=4 if mode == "torchscript" else 2)  # fmt: skip
    for mode in graphed:
        row("infer", f"32 x Si 8, batched {mode}",
            {"task": "infer", "structures": si8x32, "batch": 32, "mode": mode},
            impls=("ours",), warmup=2, calls=INFER_CALLS[8])  # fmt: skip
    # three repetitions even when quick: the median of two is their mean, and one slow fresh
    # process (a 90 ms read pass against 20 ms) once turned a 3-5x row into 0.96x
    row("cache", f"mlearn Cu, {40 if quick else 324} records",
        {"task": "cache", "records": 40 if quick else 324}, fresh=True, warmup=0,
        repeats=3)  # fmt: skip
    if device != "cpu":
        rows = [r for r in rows if r["group"] in ("train", "infer")]
    return rows


def one_shot(script: tuple[str, Path, str], threads: int, request: dict[str, Any],
             device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    """One request in a fresh worker process (its peak RSS is then this request's)."""
    worker = Worker(*script, threads, device)
    try:
        return worker.call(request)
    finally:
        worker.close()


def cold_then_warm(script: tuple[str, Path, str], threads: int,
                   request: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The cache row: build a new cache in one process, reopen it in another (a warm start is
    a new run); the reply holds both phases' times and peak RSS."""
    directory = tempfile.mkdtemp(prefix="bench_cache_")
    reply: dict[str, Any] = {}
    for phase in ("cold", "warm"):
        answer = one_shot(script, threads, {**request, "phase": phase, "directory": directory})
        if "error" in answer:
            return answer
        reply.update({f"{phase}_open_s": answer["seconds"], f"{phase}_reads_s": answer["reads_s"],
                      f"{phase}_peak_rss_bytes": answer["peak_rss_bytes"]})  # fmt: skip
    shutil.rmtree(directory, ignore_errors=True)
    reply.update(
        seconds=reply["cold_open_s"],
        items=answer["items"],
        peak_rss_bytes=max(reply["cold_peak_rss_bytes"], reply["warm_peak_rss_bytes"]),
    )
    return reply


def _calls(worker: Worker, request: dict[str, Any], calls: int) -> dict[str, Any]:
    """``calls`` back-to-back calls of ``request`` as one repetition: seconds and items summed.

    A single 10-30 ms call is at the mercy of whatever else this shared machine does in those
    milliseconds (one quick run put a Si 64 ratio at 1.00x against 1.34x in the full run);
    the sum over a few calls is not, and repeated calls are what MD does anyway."""
    replies = [worker.call(request) for _ in range(calls)]
    failed = [r for r in replies if "error" in r]
    if failed:
        return failed[0]
    return {**replies[0], "seconds": sum(r["seconds"] for r in replies),
            "items": sum(r["items"] for r in replies), "calls": calls}  # fmt: skip


def run_rows(rows: list[dict[str, Any]], scripts: dict[str, tuple[str, Path, str]],
             threads: int, device: str = "cpu") -> None:  # fmt: skip
    """Fill ``row["results"][impl]`` with the replies of every timed repetition."""
    persistent = {impl: Worker(*scripts[impl], threads, device) for impl in IMPLS}
    try:
        for row in rows:
            request = {k: v for k, v in row["request"].items() if v is not None}
            row["results"] = {impl: [] for impl in row["impls"]}
            for repetition in range(row["warmup"] + row["repeats"]):
                order = row["impls"] if repetition % 2 == 0 else row["impls"][::-1]
                for impl in order:
                    if row["group"] == "cache":
                        reply = cold_then_warm(scripts[impl], threads, request)
                    elif row["fresh"]:
                        reply = one_shot(scripts[impl], threads, request, device)
                    else:
                        reply = _calls(persistent[impl], request, row["calls"])
                    if repetition >= row["warmup"] or "error" in reply:
                        row["results"][impl].append(reply)
            summary = {impl: _median(row["results"][impl]) for impl in row["impls"]}
            print(f"{row['group']:6} {row['name']:36} {summary}", file=sys.stderr, flush=True)
    finally:
        for worker in persistent.values():
            worker.close()


def _median(replies: list[dict[str, Any]], key: str = "seconds") -> float | None:
    values = [r[key] for r in replies if key in r and "error" not in r]
    return statistics.median(values) if values else None


def _rate(replies: list[dict[str, Any]], key: str = "seconds") -> float | None:
    seconds = _median(replies, key)
    return replies[0]["items"] / seconds if seconds else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per row and metric: value for each side, ratio ours/upstream (higher is better
    for rates; for seconds and bytes the ratio is upstream/ours, so >1 always means ours wins)."""
    lines = []
    for row in rows:
        results = row["results"]
        metrics: list[tuple[str, str, bool]] = []
        if row["group"] == "cache":
            metrics = [("cold_open_s", "cold build, s", False),
                       ("warm_open_s", "warm open, s", False),
                       ("warm_reads_s", "read pass (warm), s", False),
                       ("cold_peak_rss_bytes", "peak RSS cold, MiB", False),
                       ("warm_peak_rss_bytes", "peak RSS warm, MiB", False)]  # fmt: skip
        elif row["group"] == "train":
            metrics = [("seconds", "structures/s", True)]
        else:
            metrics = [("seconds", "structures/s" if row["group"] == "graph" else "evals/s", True)]
        for key, label, is_rate in metrics:
            values = {impl: (_rate(r, key) if is_rate else _median(r, key))
                      for impl, r in results.items()}  # fmt: skip
            if key.endswith("_bytes"):
                values = {impl: v / 2**20 if v else v for impl, v in values.items()}
            ours, upstream = values.get("ours"), values.get("upstream")
            speedup = None
            if ours and upstream:
                speedup = ours / upstream if is_rate else upstream / ours
            lines.append({"group": row["group"], "row": row["name"], "metric": label,
                          "ours": ours, "upstream": upstream, "speedup": speedup})  # fmt: skip
        if row["group"] == "train":
            per_epoch = {impl: 262 / v for impl, v in
                         ((i, _rate(r)) for i, r in results.items()) if v}  # fmt: skip
            ours, upstream = per_epoch.get("ours"), per_epoch.get("upstream")
            lines.append({"group": "train", "row": row["name"],
                          "metric": "s/epoch (262 structures)", "ours": ours,
                          "upstream": upstream,
                          "speedup": upstream / ours if ours and upstream else None})  # fmt: skip
        if row["group"] == "train":
            peaks = {impl: max((x.get("peak_rss_bytes", 0) for x in r), default=0) / 2**20
                     for impl, r in results.items()}  # fmt: skip
            ours, upstream = peaks.get("ours"), peaks.get("upstream")
            lines.append({"group": row["group"], "row": row["name"], "metric": "peak RSS, MiB",
                          "ours": ours, "upstream": upstream,
                          "speedup": upstream / ours if ours and upstream else None})  # fmt: skip
    return lines


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    out = [
        "# Benchmark: ours vs upstream ALIGNN " + report["upstream_version"],
        "",
        f"{report['date']}; {machine['cpus']} CPUs "
        f"({machine['processor'] or machine['platform']}), "
        f"torch {machine['torch']}, {report['threads']} torch thread(s) per side, float32 on "
        f"{machine.get('gpu') or 'the CPU'}, "
        f"{'quick' if report['quick'] else 'full'} mode; allocator policy (ALIGNN_MALLOC) ours "
        f"{report['malloc']['ours']}, upstream {report['malloc']['upstream']}; 1-min load average "
        f"{machine['load_before'][0]:.1f} before, {report['load_after'][0]:.1f} after "
        "(shared machine: ours and upstream alternate call by call, compare ratios).",
        "",
        "`speedup` > 1 means ours is better (rates: ours/upstream; seconds and memory: "
        "upstream/ours). Medians of the timed repetitions.",
        "",
        "| row | case | metric | ours | upstream | speedup |",
        "|---|---|---|---|---|---|",
    ]
    for line in report["summary"]:
        speedup = "–" if line["speedup"] is None else f"**{line['speedup']:.2f}x**"
        out.append(f"| {line['group']} | {line['row']} | {line['metric']} | "
                   f"{_fmt(line['ours'])} | {_fmt(line['upstream'])} | {speedup} |")  # fmt: skip
    return "\n".join(out) + "\n"


def _gpu_name(device: str) -> str | None:
    import torch

    return torch.cuda.get_device_name(torch.device(device)) if device != "cpu" else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller rows (about 10 minutes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--upstream-python", default=str(UPSTREAM_PYTHON))
    parser.add_argument("--only", nargs="*", help="row groups to run (graph train infer cache)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (model rows only)")
    parser.add_argument("-o", "--out-dir", type=Path, default=REPO / "bench")
    parser.add_argument(
        "--ours-malloc",
        choices=POLICIES,
        default=DEFAULT_POLICY,
        help="our allocator policy (default: what the alignn command applies)",
    )
    parser.add_argument("--upstream-malloc", choices=POLICIES, default="system",
                        help="upstream's (default: system, what its scripts get; "
                             "--upstream-malloc retain gives it ours)")  # fmt: skip
    args = parser.parse_args()

    import torch

    inputs = Path(tempfile.mkdtemp(prefix="bench_inputs_"))
    rows = [r for r in plan(args.quick, inputs, args.device)
            if not args.only or r["group"] in args.only]  # fmt: skip
    version = subprocess.run(
        [args.upstream_python, "-c", "import importlib.metadata as m; print(m.version('alignn'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    machine = {"platform": platform.platform(), "processor": platform.processor(),
               "cpus": os.cpu_count(), "python": platform.python_version(),
               "torch": torch.__version__, "load_before": os.getloadavg(),
               "device": args.device, "gpu": _gpu_name(args.device)}  # fmt: skip
    scripts = {"ours": (sys.executable, HERE / "ours_worker.py", args.ours_malloc),
               "upstream": (args.upstream_python, HERE / "upstream_worker.py",
                            args.upstream_malloc)}  # fmt: skip
    run_rows(rows, scripts, args.threads, args.device)
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "threads": args.threads, "upstream_version": version,
        "malloc": {"ours": args.ours_malloc, "upstream": args.upstream_malloc},
        "machine": machine, "load_after": os.getloadavg(),
        "summary": summarise(rows), "rows": rows,
    }  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "results.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
