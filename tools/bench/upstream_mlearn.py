#!/usr/bin/env python
"""Benchmark upstream ALIGNN's pure-torch model on an mlearn element.

Run with the *upstream* virtual environment, e.g.::

    /work/upstream-venv/bin/python tools/bench/upstream_mlearn.py \
        --element-dir /work/shared/data/mlearn/Cu --epochs 5 \
        --out /work/mlearn-upstream-cu-e5

What it does:

1. Reads ``<element-dir>/config_upstream.json`` and writes a modified copy to
   ``<out>/config.json`` with only three changes:

   * ``model.name`` -> ``"alignn_atomwise_pure"``
   * ``neighbor_strategy`` -> ``"pure_torch"``
   * ``epochs`` -> ``--epochs``

   Upstream's ``k-nearest`` neighbour strategy (and the DGL
   ``alignn_atomwise`` model) require DGL, which cannot be installed
   alongside torch 2.13, so the pure-torch model and graph builder are the
   only upstream path that runs in this environment.

2. Runs upstream's ``train_alignn.py`` console script with the working
   directory set to ``<out>`` (upstream writes its LMDB caches into the CWD),
   timing the whole run by wall clock and timestamping every log line so the
   dataset/graph-building phase and per-epoch times can be read off.

3. Parses ``<out>/Test_results.json`` (written with the LAST epoch's weights)
   and writes ``<out>/summary.json`` with test energy MAE (meV/atom), force
   MAE (eV/A), constant-predictor baselines, timings and machine info.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def build_config(element_dir: Path, epochs: int, out: Path, overrides: dict | None = None) -> Path:
    src = element_dir / "config_upstream.json"
    cfg = json.loads(src.read_text())
    changes = {
        "model.name": (cfg["model"]["name"], "alignn_atomwise_pure"),
        "neighbor_strategy": (cfg["neighbor_strategy"], "pure_torch"),
        "epochs": (cfg["epochs"], int(epochs)),
    }
    cfg["model"]["name"] = "alignn_atomwise_pure"
    cfg["neighbor_strategy"] = "pure_torch"
    cfg["epochs"] = int(epochs)
    for key, value in (overrides or {}).items():
        if key == "model":
            for mkey, mvalue in value.items():
                changes[f"model.{mkey}"] = (cfg["model"].get(mkey), mvalue)
                cfg["model"][mkey] = mvalue
        else:
            changes[key] = (cfg.get(key), value)
            cfg[key] = value
    dst = out / "config.json"
    dst.write_text(json.dumps(cfg, indent=4) + "\n")
    (out / "config_changes.json").write_text(
        json.dumps(
            {k: {"from": a, "to": b} for k, (a, b) in changes.items()},
            indent=2,
        )
        + "\n"
    )
    return dst


def run_training(element_dir: Path, config: Path, out: Path) -> dict:
    exe = Path(sys.executable).parent / "train_alignn.py"
    cmd = [
        str(exe),
        "--root_dir",
        str(element_dir),
        "--config_name",
        str(config),
        "--output_dir",
        str(out),
    ]
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    log_path = out / "train.log"
    events: list[tuple[float, str]] = []
    loads: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def _sample_load():
        # other processes on this small machine inflate timings; record it
        while not stop.is_set():
            loads.append((time.perf_counter() - t0, os.getloadavg()[0]))
            stop.wait(30.0)

    sampler = threading.Thread(target=_sample_load, daemon=True)
    sampler.start()
    # text mode with universal newlines turns tqdm's '\r' updates into lines
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=str(out),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            t = time.perf_counter() - t0
            line = line.rstrip("\n")
            events.append((t, line))
            log.write(f"[{t:9.2f}s] {line}\n")
            log.flush()
        rc = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    la = [v for _, v in loads]
    load = {
        "samples_every_s": 30,
        "n": len(la),
        "mean_1min_loadavg": float(np.mean(la)) if la else None,
        "max_1min_loadavg": float(np.max(la)) if la else None,
    }
    return {"cmd": cmd, "rc": rc, "wall_s": wall, "events": events, "loadavg": load}


def read_log_events(out: Path) -> list[tuple[float, str]]:
    """Re-read the timestamped train.log written by run_training."""
    rx = re.compile(r"^\[\s*([0-9.]+)s\] ?(.*)$")
    events = []
    for line in (out / "train.log").read_text().splitlines():
        m = rx.match(line)
        if m:
            events.append((float(m.group(1)), m.group(2)))
    return events


def _first(events, pattern):
    rx = re.compile(pattern)
    for t, line in events:
        if rx.search(line):
            return t
    return None


def parse_timings(events) -> dict:
    """Read phase times off the timestamped log."""
    res: dict = {}
    t_train_build = _first(events, r"\[MEM\] \S*train_data: entry")
    t_val_build = _first(events, r"\[MEM\] \S*val_data: entry")
    t_test_build = _first(events, r"\[MEM\] \S*test_data: entry")
    t_rank = _first(events, r"^rank\s")  # printed right after loaders exist
    if t_train_build is not None and t_rank is not None:
        res["graph_build_s"] = t_rank - t_train_build
        res["startup_before_graph_build_s"] = t_train_build
    if None not in (t_train_build, t_val_build, t_test_build, t_rank):
        res["graph_build_split_s"] = {
            "train": t_val_build - t_train_build,
            "val": t_test_build - t_val_build,
            "test": t_rank - t_test_build,
        }
    # Per-epoch timings printed by upstream's print_train_val_loss:
    # header "Train Loss: Epoch Total Graph Atom Grad Stress Addn. Time"
    # then a row "<epoch> <total> <graph> <atom> <grad> <stress> <addn> <time>"
    epochs = []
    mode = None
    for t, line in events:
        s = line.strip()
        if s.startswith("Train Loss:"):
            mode = "train"
            continue
        if s.startswith("Val Loss:"):
            mode = "val"
            continue
        if mode is not None:
            # the val row may end with "Saving model"; use the 8 numbers
            parts = s.split()[:8]
            try:
                vals = [float(x) for x in parts]
            except ValueError:
                mode = None
                continue
            if len(vals) >= 8:
                e = int(vals[0])
                row = {
                    "total": vals[1],
                    "graph": vals[2],
                    "atom": vals[3],
                    "grad": vals[4],
                    "stress": vals[5],
                    "addn": vals[6],
                    "time_s": vals[7],
                    "log_t": t,
                }
                while len(epochs) <= e:
                    epochs.append({"epoch": len(epochs)})
                epochs[e][mode] = row
            mode = None
    res["epochs"] = epochs
    t_test = _first(events, r"^TestLoss")
    if t_test is not None:
        res["t_testloss_line_s"] = t_test
    t_done = _first(events, r"^Time taken \(s\)")
    if t_done is not None:
        res["t_time_taken_line_s"] = t_done
    for _t, line in events:
        m = re.match(r"^Time taken \(s\)\s+([0-9.eE+-]+)", line.strip())
        if m:
            res["upstream_train_dgl_time_s"] = float(m.group(1))
    return res


def _flat(x):
    return np.asarray(x, dtype=float).reshape(-1)


def _results_errors(path: Path):
    """Per-structure energy errors, per-component force errors, targets."""
    data = json.loads(path.read_text())
    e_err, f_err, e_tgt, f_tgt = [], [], [], []
    for rec in data:
        to = _flat(rec["target_out"])
        po = _flat(rec["pred_out"])
        e_err.extend(np.abs(po - to).tolist())
        e_tgt.extend(to.tolist())
        tg = _flat(rec["target_grad"])
        pg = _flat(rec["pred_grad"])
        assert tg.shape == pg.shape, (tg.shape, pg.shape)
        f_err.extend(np.abs(pg - tg).tolist())
        f_tgt.extend(tg.tolist())
    return data, np.array(e_err), np.array(f_err), np.array(e_tgt), np.array(f_tgt)


def parse_test_results(out: Path) -> dict:
    """Test_results.json: test loader has batch_size 1, LAST epoch weights."""
    data, e_err, f_err, _, _ = _results_errors(out / "Test_results.json")
    return {
        "n_test_records": len(data),
        "n_energy_values": int(e_err.size),
        "n_force_components": int(f_err.size),
        "test_energy_mae_meV_per_atom": float(e_err.mean() * 1000.0),
        "test_force_mae_eV_per_A": float(f_err.mean()),
        "test_ids": [rec.get("id") for rec in data],
    }


def parse_val_results(out: Path, train_mean_e: float) -> dict:
    """Val_results.json: written at the BEST-val-loss epoch so far.

    Upstream's val loader uses drop_last=True, so with batch 5 only 30 of 31
    val records appear (one entry per batch). In the mlearn layout the val
    records are exact copies of the test records, so these are test-set
    numbers for the best epoch's weights, on 30 of the 31 structures.
    Constant-predictor baselines on the same 30 records are included.
    """
    _data, e_err, f_err, e_tgt, f_tgt = _results_errors(out / "Val_results.json")
    return {
        "n_val_structures": int(e_err.size),
        "n_val_force_components": int(f_err.size),
        "val_energy_mae_meV_per_atom": float(e_err.mean() * 1000.0),
        "val_force_mae_eV_per_A": float(f_err.mean()),
        "val_baseline_energy_mae_meV_per_atom": float(np.abs(e_tgt - train_mean_e).mean() * 1000.0),
        "val_baseline_zero_force_mae_eV_per_A": float(np.abs(f_tgt).mean()),
    }


def baselines(element_dir: Path, cfg: dict) -> dict:
    """Constant predictors on the test split (keep_data_order, as upstream)."""
    recs = json.loads((element_dir / "id_prop.json").read_text())
    n_train, n_val, n_test = cfg["n_train"], cfg["n_val"], cfg["n_test"]
    assert cfg.get("keep_data_order", False)
    train = recs[:n_train]
    test = recs[-n_test:]
    assert n_train + n_val + n_test == len(recs), len(recs)
    mean_e = float(np.mean([r["total_energy"] for r in train]))
    e_err = [abs(r["total_energy"] - mean_e) for r in test]
    f = np.concatenate([_flat(r["forces"]) for r in test])
    return {
        "train_mean_energy_eV_per_atom": mean_e,
        "baseline_energy_mae_meV_per_atom": float(np.mean(e_err) * 1000.0),
        "baseline_zero_force_mae_eV_per_A": float(np.mean(np.abs(f))),
        "baseline_n_structures": len(test),
        "baseline_n_force_components": int(f.size),
        "baseline_test_ids": [r["jid"] for r in test],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--element-dir", required=True, type=Path)
    ap.add_argument("--epochs", required=True, type=int)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument(
        "--overrides",
        type=json.loads,
        default=None,
        help='JSON dict merged into the config (a "model" dict merges into model)',
    )
    ap.add_argument(
        "--summarize-only",
        action="store_true",
        help="do not train; recompute summary.json from an existing --out "
        "(run fields such as wall time are kept from the old summary.json)",
    )
    args = ap.parse_args(argv)

    element_dir = args.element_dir.resolve()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    if args.summarize_only:
        old = json.loads((out / "summary.json").read_text())
        config = out / "config.json"
        cfg = json.loads(config.read_text())
        started = old["started_utc"]
        run = {
            "cmd": old["command"],
            "rc": old["returncode"],
            "wall_s": old["wall_time_s"],
            "loadavg": old.get("loadavg_during_run"),
        }
    else:
        config = build_config(element_dir, args.epochs, out, args.overrides)
        cfg = json.loads(config.read_text())
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        run = run_training(element_dir, config, out)
    timings = parse_timings(read_log_events(out))

    summary: dict = {
        "what": "upstream ALIGNN alignn_atomwise_pure on mlearn",
        "element_dir": str(element_dir),
        "epochs": args.epochs,
        "started_utc": started,
        "command": run["cmd"],
        "cwd": str(out),
        "returncode": run["rc"],
        "wall_time_s": run["wall_s"],
        "loadavg_during_run": run["loadavg"],
        "timings_from_log": timings,
        "machine": {
            "nproc": os.cpu_count(),
            "sched_affinity": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "config_changes": json.loads((out / "config_changes.json").read_text()),
        "notes": [
            "neighbor_strategy pure_torch: upstream k-nearest needs DGL, "
            "which cannot be installed with torch 2.13",
            "Test_results.json uses the LAST epoch's weights",
        ],
    }
    try:
        import alignn
        import torch

        summary["machine"]["torch"] = torch.__version__
        summary["machine"]["torch_num_threads"] = torch.get_num_threads()
        summary["machine"]["alignn"] = getattr(alignn, "__version__", None)
    except Exception as exc:  # pragma: no cover
        summary["machine"]["import_error"] = repr(exc)
    summary.update(baselines(element_dir, cfg))
    if (out / "Val_results.json").exists():
        summary["best_epoch_val_results"] = parse_val_results(
            out, summary["train_mean_energy_eV_per_atom"]
        )
    if run["rc"] != 0:
        summary["completed"] = False
        summary["notes"].append(
            "run did not finish (nonzero return code); no Test_results.json "
            "metrics; see best_epoch_val_results (val == copy of test)"
        )
    if run["rc"] == 0 and (out / "Test_results.json").exists():
        summary.update(parse_test_results(out))
        if summary["test_ids"] != summary["baseline_test_ids"]:
            summary["warning"] = "test ids differ from baseline test ids"
    if args.summarize_only:
        # keep hand-added annotations (e.g. why a run was stopped)
        for k, v in old.items():
            summary.setdefault(k, v)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    brief = {
        k: summary.get(k)
        for k in (
            "returncode",
            "wall_time_s",
            "test_energy_mae_meV_per_atom",
            "test_force_mae_eV_per_A",
            "baseline_energy_mae_meV_per_atom",
            "baseline_zero_force_mae_eV_per_A",
        )
    }
    print(json.dumps(brief, indent=2))
    if args.summarize_only:
        return 0
    return run["rc"] if run["rc"] >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
