#!/usr/bin/env python
"""Measure the LMDB graph cache (alignn-lmdb): warm start vs cold build, and streaming.

Two measurements, each written as JSON (figures are quoted in docs/lmdb.md)::

    python tools/bench/lmdb_cache.py warm-cold examples/ff examples/mlearn-cu -o warm_cold.json
    python tools/bench/lmdb_cache.py stream --records 100000 --distinct 1000 \\
        --cache-dir /tmp/lmdb-bench -o stream.json

``warm-cold``: for each example, the graph caches of all three splits are built through the
``lmdb`` provider (cold), then reopened with ``read_existing: true`` (warm: manifest check with
the hash of every input record); both are followed by one epoch of reads (every sample of every
split decoded into a graph). Reading the data files is timed separately: both paths need it.

``stream``: writes a cache of ``--records`` generated periodic structures and iterates it in a
fresh process through a DataLoader (batch 64, the trainer's collate), sampling RSS as it goes.
Graph building costs ~50-170 ms per structure on a shared 2-core machine, so building 100,000
graphs would take hours: the records are generated from ``--distinct`` structures whose graphs
are really built, each record getting its own id, target and LMDB entry (the read path, record
sizes and file size are those of a real cache; only the build is shortened). With
``--distinct`` equal to ``--records`` every graph is built.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ELEMENTS = (3, 8, 11, 12, 13, 14, 15, 16, 19, 20, 22, 26, 29, 30, 31, 32, 34, 38, 42, 50)


def _rss() -> dict[str, int]:
    """Current/peak resident memory of this process, in bytes (Linux /proc)."""
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def _machine() -> dict[str, object]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average": os.getloadavg()}  # fmt: skip


# -- warm vs cold ---------------------------------------------------------------------------------
def _epoch(datasets) -> int:
    count = 0
    for dataset in datasets.values():
        for position in range(len(dataset)):
            dataset[position]
            count += 1
    return count


def warm_cold(example: Path, cache_dir: Path, workers: int) -> dict[str, object]:
    from alignn_lmdb.provider import LmdbDatasetProvider

    from alignn_core.config.loader import load_config
    from alignn_core.data.splits import split_indices
    from alignn_core.training.trainer import Trainer

    config = load_config(example / "config.json").config
    trainer = Trainer(config, root_dir=example, output_dir=cache_dir / "unused")
    start = time.perf_counter()
    records = trainer._read_records()
    read_seconds = time.perf_counter() - start
    split = split_indices(len(records), config)
    provider = LmdbDatasetProvider(workers=workers)

    def open_all(read_existing: bool):
        return {
            name: provider.open(records, indices=getattr(split, name), backend=trainer.backend,
                                settings=config.graph_settings, split=name, cache_dir=cache_dir,
                                read_existing=read_existing,
                                target_scale=config.target_multiplication_factor)
            for name in ("train", "val", "test")
        }  # fmt: skip

    timings = {}
    for label, read_existing in (("cold", False), ("warm", True)):
        start = time.perf_counter()
        datasets = open_all(read_existing)
        opened = time.perf_counter() - start
        samples = _epoch(datasets)
        timings[label] = {"open_or_build_s": opened, "epoch_reads_s": time.perf_counter()
                          - start - opened, "total_s": time.perf_counter() - start}  # fmt: skip
    size = sum(f.stat().st_size for f in cache_dir.rglob("data.mdb"))
    return {
        "example": str(example), "records": len(records), "samples_per_epoch": samples,
        "neighbor_strategy": config.neighbor_strategy, "build_workers": workers,
        "read_records_s": read_seconds, **timings,
        "warm_over_cold_speedup": timings["cold"]["total_s"] / timings["warm"]["total_s"],
        "speedup_including_record_read": (read_seconds + timings["cold"]["total_s"])
        / (read_seconds + timings["warm"]["total_s"]),
        "cache_bytes": size,
    }  # fmt: skip


# -- streaming a large cache ----------------------------------------------------------------------
def random_structure(rng: np.random.Generator):
    """A periodic cell of 4-16 atoms at ~12 Å^3/atom, slightly sheared, random species."""
    from alignn_core.structures import Structure

    n_atoms = int(rng.integers(4, 17))
    edge = (12.0 * n_atoms) ** (1 / 3)
    cell = np.diag(rng.uniform(0.85, 1.15, 3) * edge) + rng.uniform(-0.1, 0.1, (3, 3)) * edge
    frac = rng.random((n_atoms, 3))
    return Structure(numbers=rng.choice(ELEMENTS, n_atoms), positions=frac @ cell, cell=cell)


class _SharedGraphs:
    """Graph backend proxy: structures that are the same object share one real build."""

    def __init__(self, backend):
        self._backend, self._graphs = backend, {}
        self.name, self.version = backend.name, backend.version

    def build(self, structure, settings):
        key = id(structure)
        if key not in self._graphs:
            self._graphs[key] = self._backend.build(structure, settings)
        return self._graphs[key]

    def __getattr__(self, name):
        return getattr(self._backend, name)


def write_stream_cache(records_n: int, distinct: int, cache_dir: Path, workers: int) -> dict:
    from alignn_lmdb.cache import build_cache
    from alignn_lmdb.manifest import make_manifest

    from alignn_core.config.graph_settings import GraphSettings
    from alignn_core.plugins import get_registry
    from alignn_core.structures import Record

    rng = np.random.default_rng(0)
    structures = [random_structure(rng) for _ in range(distinct)]
    records = [Record(id=f"gen-{i}", structure=structures[i % distinct],
                      target=np.asarray(rng.normal()))
               for i in range(records_n)]  # fmt: skip
    settings = GraphSettings()  # defaults: k-nearest, cutoff 5 Å, 12 neighbours, cgcnn
    backend = get_registry().graph_backends["torch"]
    shared = _SharedGraphs(backend)
    start = time.perf_counter()
    for structure in structures:  # the real graph builds (forked build workers inherit them)
        shared.build(structure, settings)
    graphs_s = time.perf_counter() - start
    indices = list(range(records_n))
    manifest = make_manifest(backend=shared, settings=settings, split="train", records=records,
                             indices=indices, target_scale=None)  # fmt: skip
    start = time.perf_counter()
    build_cache(cache_dir / "train", manifest, records, indices, backend=shared,
                settings=settings, workers=workers)  # fmt: skip
    write_s = time.perf_counter() - start
    data = cache_dir / "train" / "data.mdb"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"records": records_n, "distinct_structures": distinct,
            "settings": settings.model_dump(), "build_distinct_graphs_s": graphs_s,
            "encode_and_write_s": write_s, "cache_bytes": data.stat().st_size,
            "bytes_per_record": data.stat().st_size / records_n,
            "writer_peak_rss_bytes": peak}  # fmt: skip


def read_stream(cache: Path, limit: int | None, num_workers: int, batch_size: int,
                recycle: bool = True) -> dict:  # fmt: skip
    """Iterate the cache once through a DataLoader, sampling RSS ~20 times (a fresh process)."""
    import torch
    from alignn_lmdb.cache import LmdbDataset
    from alignn_lmdb.manifest import read_manifest
    from torch.utils.data import DataLoader

    from alignn_core.data.samples import make_collate
    from alignn_core.plugins import get_registry

    if not recycle:  # to show what reopening the environment saves
        from alignn_lmdb import cache as cache_module

        cache_module.RECYCLE_BYTES = 1 << 62
    manifest = read_manifest(cache)
    backend = get_registry().graph_backends[manifest["backend"]]
    count = int(manifest["count"]) if limit is None else min(limit, int(manifest["count"]))
    dataset = LmdbDataset(cache, backend, int(manifest["count"]))
    sampler = range(count)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=make_collate(backend.collate, torch.float32))  # fmt: skip
    baseline = _rss()
    samples, seen, every = [], 0, max(1, count // batch_size // 20)
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        seen += batch.graph.num_graphs
        if step % every == 0:
            samples.append({"graphs": seen, "seconds": time.perf_counter() - start, **_rss()})
    seconds = time.perf_counter() - start
    end = _rss()
    return {"graphs": seen, "seconds": seconds, "graphs_per_s": seen / seconds,
            "num_workers": num_workers, "batch_size": batch_size, "recycle": recycle,
            "rss_before_bytes": baseline["VmRSS"], "rss_end_bytes": end["VmRSS"],
            "peak_rss_bytes": end["VmHWM"],
            "worker_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
            if num_workers else None,
            "samples": samples}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    wc = sub.add_parser("warm-cold", help="cold build vs warm reuse on example folders")
    wc.add_argument("examples", nargs="+", type=Path)
    wc.add_argument("--cache-dir", type=Path, default=Path("/tmp/alignn-lmdb-bench/warm-cold"))
    wc.add_argument("--workers", type=int, default=1)
    st = sub.add_parser("stream", help="write a large generated cache and stream it")
    st.add_argument("--records", type=int, default=100_000)
    st.add_argument("--distinct", type=int, default=1000)
    st.add_argument("--cache-dir", type=Path, default=Path("/tmp/alignn-lmdb-bench/stream"))
    st.add_argument("--workers", type=int, default=1)
    st.add_argument("--reuse-cache", action="store_true", help="stream an existing cache")
    st.add_argument("--read-limits", type=int, nargs="*", default=[10_000, 0],
                    help="records per streaming pass (0: all)")  # fmt: skip
    st.add_argument("--num-workers", type=int, nargs="*", default=[0])
    rd = sub.add_parser("read", help="(internal) one streaming pass, JSON on stdout")
    rd.add_argument("cache", type=Path)
    rd.add_argument("--limit", type=int)
    rd.add_argument("--num-workers", type=int, default=0)
    rd.add_argument("--batch-size", type=int, default=64)
    rd.add_argument("--no-recycle", action="store_true")
    st.add_argument("--no-recycle-pass", action="store_true",
                    help="one more full pass that never reopens the environment")  # fmt: skip
    for command in (wc, st):
        command.add_argument("-o", "--output", type=Path, help="JSON file [default: stdout]")
    args = parser.parse_args()

    if args.command == "read":
        print(json.dumps(read_stream(args.cache, args.limit, args.num_workers, args.batch_size,
                                     recycle=not args.no_recycle)))  # fmt: skip
        return
    result: dict[str, object] = {"machine": _machine()}
    if args.command == "warm-cold":
        import shutil

        result["examples"] = []
        for example in args.examples:
            target = args.cache_dir / example.name
            shutil.rmtree(target, ignore_errors=True)
            item = warm_cold(example, target, args.workers)
            print(json.dumps(item), file=sys.stderr)
            result["examples"].append(item)
    else:
        import shutil

        if args.reuse_cache:
            manifest = json.loads((args.cache_dir / "train" / "manifest.json").read_text())
            result["write"] = {"reused": True, "records": manifest["count"]}
        else:
            shutil.rmtree(args.cache_dir, ignore_errors=True)
            result["write"] = write_stream_cache(args.records, args.distinct, args.cache_dir,
                                                 args.workers)  # fmt: skip
        print(json.dumps(result["write"]), file=sys.stderr)
        result["reads"] = []
        passes = [(w, limit, []) for w in args.num_workers for limit in args.read_limits]
        if args.no_recycle_pass:
            passes.append((0, 0, ["--no-recycle"]))
        for workers, limit, extra in passes:
            command = [sys.executable, __file__, "read", str(args.cache_dir / "train"),
                       "--num-workers", str(workers), *extra]  # fmt: skip
            if limit:
                command += ["--limit", str(limit)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            item = json.loads(out)
            item["limit"] = limit
            print(json.dumps({k: v for k, v in item.items() if k != "samples"}),
                  file=sys.stderr)  # fmt: skip
            result["reads"].append(item)
        result["machine_after"] = _machine()
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
