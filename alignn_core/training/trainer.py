"""``alignn run``: from a validated config and a data directory to a trained model on disk.

Data flow: read records -> upstream-compatible split -> graphs (dataset provider + graph backend
of the model's plugin) -> training epochs (best model chosen on the validation set) -> the best
weights evaluated on every split -> predictions, history, report.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from torch.utils.data import DataLoader

from alignn_core.data.samples import Batch, make_collate
from alignn_core.data.splits import overlap_count, split_indices
from alignn_core.errors import ConfigError, DataError, ModelError, PluginError, UserError
from alignn_core.inference.loading import as_state_dict, load_weights, read_state_dict
from alignn_core.io.id_prop import DataKeys, read_dataset
from alignn_core.plugins import FIRST_PARTY_BACKENDS, get_registry
from alignn_core.training import distributed, outputs
from alignn_core.training.atomic import load_torch, remove_temp_files, save_json, save_torch
from alignn_core.training.captured_step import CapturedTrainingStep
from alignn_core.training.evaluation import EpochStats, autocast_context, evaluate
from alignn_core.training.losses import LossResult, RowMasks, compute_losses
from alignn_core.training.optim import make_optimizer, make_scheduler
from alignn_core.training.report import write_report

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat": torch.bfloat16, "bfloat16": torch.bfloat16}  # fmt: skip
FINISHED_MARKER = "run_summary.json"
RESUME_STATE = "current_state.pt"
RUN_OUTPUTS = (
    FINISHED_MARKER,  # first: a run whose outputs are half removed never looks finished
    "best_model.pt", "last_model.pt", "current_model.pt", RESUME_STATE, "history.json",
    "history_train.json", "history_val.json", "ids_train_val_test.json",
    *(f"predictions_{split}.{ext}" for split in ("train", "val", "test")
      for ext in ("csv", "json")),
    "Train_results.json", "Val_results.json", "Test_results.json",
    "prediction_results_test_set.csv", "report.png",
)  # fmt: skip
"""Files a run writes into its output directory (``--overwrite`` removes them; not the cache)."""
RESUME_KEYS = ("epoch", "optimizer", "scheduler", "best_loss", "torch_rng")
UPSTREAM_TERMS = ("graph", "atomwise", "forces", "stress", "additional")
"""Loss terms in the column order of upstream's history files (after the total)."""


@dataclass
class RunSummary:
    output_dir: Path
    epochs_run: int
    best_epoch: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


def unsupported_settings(config) -> list[str]:
    """Fields we reject rather than silently ignore (upstream accepts and ignores or breaks)."""
    problems = []
    if config.dataset != "user_data":
        problems.append(
            f"dataset {config.dataset!r} would need a download; set dataset to 'user_data' "
            "and pass the data folder with --root-dir"
        )
    if config.criterion in ("poisson", "zig"):
        problems.append(f"criterion {config.criterion!r} is not supported; use 'mse' or 'l1'")
    if config.data_parallel:
        problems.append(
            "data_parallel (single-process multi-GPU) is not supported; set it false and use "
            "distributed: true (torchrun, or alignn run --nproc N)"
        )
    if config.save_dataloader:
        problems.append("save_dataloader pickles DataLoaders (unsafe to reload); set it false")
    if config.log_tensorboard:
        problems.append("log_tensorboard is not supported; per-epoch metrics are in history.json")
    if config.standard_scalar_and_pca:
        problems.append("standard_scalar_and_pca is not supported (upstream never applies it "
                        "to training targets); set it false")  # fmt: skip
    return problems


def resolve_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int | None, deterministic: bool, device: torch.device) -> None:
    """Seed every generator. On CPU a seeded run is also bitwise reproducible: deterministic
    algorithms make threaded ``index_add_`` accumulate in a fixed order. On CUDA that costs
    speed, so it needs ``deterministic: true``."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic or device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


def scheduler_state(scheduler) -> dict:
    """The scheduler's state without callables: torch 2.2's OneCycleLR stores its annealing
    function (a bound method) in ``state_dict()``, which ``torch.load(weights_only=True)`` refuses
    to unpickle. The scheduler rebuilt from the config has its own, so nothing is lost."""
    return {k: v for k, v in scheduler.state_dict().items() if not callable(v)}


class Trainer:
    """One training run. Construct, then :meth:`run`."""

    def __init__(self, config, *, root_dir: Path, output_dir: Path, console: Console | None = None,
                 device: str | None = None, overwrite: bool = False):  # fmt: skip
        self.config = config
        self.root_dir = Path(root_dir)
        self.output_dir = Path(output_dir)
        self.console = console or Console()
        self.device = resolve_device(device)
        self.overwrite = overwrite
        self.dtype = DTYPES[config.dtype]
        self.registry = get_registry()
        self.model_plugin = self.registry.get("models", config.model.name)
        backend_name = self.model_plugin.backend
        if backend_name not in self.registry.graph_backends:
            hint = FIRST_PARTY_BACKENDS.get(backend_name, "install the plugin that provides it")
            raise PluginError(
                f"model {config.model.name!r} needs graph backend {backend_name!r}, "
                f"which no installed plugin provides; {hint}"
            )
        self.backend = self.registry.graph_backends[backend_name]
        if config.neighbor_strategy not in self.backend.neighbor_strategies:
            raise ConfigError(
                f"neighbor_strategy {config.neighbor_strategy!r} is not supported by graph "
                f"backend {backend_name!r} (supported: "
                f"{', '.join(sorted(self.backend.neighbor_strategies))})"
            )
        problems = unsupported_settings(config)
        if problems:
            raise ConfigError(problems[0])
        self.weights = config.model.loss_weights()
        self.classification = bool(getattr(config.model, "classification", False))
        self.dist, rank_device = distributed.setup(config, device)
        if rank_device is not None:
            self.device = rank_device
        if not self.dist.is_main:  # one console for the job: other ranks print only errors
            self.console = Console(quiet=True)
        if config.cuda_graphs:
            self._check_cuda_graphs(backend_name)

    def _check_cuda_graphs(self, backend_name: str) -> None:
        """``cuda_graphs`` needs a GPU and a graph backend that pads (the config's own
        cross-checks already refused distributed and use_amp)."""
        if self.device.type != "cuda":
            raise ConfigError(f"cuda_graphs: true needs a CUDA device, but this run is on "
                              f"{self.device}; set cuda_graphs to false or train on a GPU "
                              "(--device cuda)")  # fmt: skip
        if not callable(getattr(self.backend, "pad", None)):
            raise ConfigError(f"cuda_graphs: true needs a graph backend that pads graphs to "
                              f"fixed sizes; backend {backend_name!r} does not, set "
                              "cuda_graphs to false")  # fmt: skip

    # -- set-up -------------------------------------------------------------------------
    def _check_output_dir(self) -> None:
        """Refuse, before anything is read or written, to replace a run that ``--overwrite`` or
        ``resume_checkpoint`` was not asked for: a finished one, or one that could be resumed."""
        out = self.output_dir
        if not self.dist.is_main:
            return
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: exists and is not a directory; choose another --output-dir")
        if self.overwrite or self.config.resume_checkpoint:
            return
        if (out / FINISHED_MARKER).exists():
            raise UserError(
                f"{out}: holds a finished run; choose another --output-dir, pass --overwrite, "
                "or set resume_checkpoint to continue it"
            )
        if (out / RESUME_STATE).exists():
            raise UserError(
                f"{out}: holds an unfinished run ({RESUME_STATE} but no {FINISHED_MARKER}); set "
                "resume_checkpoint to continue it, pass --overwrite to start again, or choose "
                "another --output-dir"
            )

    def _prepare_output_dir(self) -> None:
        """Called once the config, the data and any checkpoint to resume have been checked and
        the graphs built (which can still reject a structure), so a mistake leaves the output
        directory as it was (a graph cache under it aside, which is atomic)."""
        out = self.output_dir
        if not self.dist.is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        remove_temp_files(out)  # of writes a killed run left unfinished
        if self.overwrite and not self.config.resume_checkpoint:
            for name in RUN_OUTPUTS:  # no stale file of the old run may pass for a new one
                (out / name).unlink(missing_ok=True)
        save_json(self.config.model_dump(mode="json"), out / "config.json")

    def _read_records(self):
        records = read_dataset(self.root_dir, DataKeys.from_config(self.config), self.weights,
                               self.config.file_format)  # fmt: skip
        threshold = self.config.classification_threshold
        if threshold is not None:
            for record in records:
                record.target = (record.target > threshold).astype(np.float64)
        return records

    def _datasets(self, records, split):
        provider_name = (
            "lmdb" if self.config.use_lmdb and "lmdb" in self.registry.datasets else "memory"
        )
        provider = self.registry.datasets[provider_name]
        settings = self.config.graph_settings
        cache_dir = (Path(self.config.cache_dir) if self.config.cache_dir
                     else self.output_dir / "cache")  # fmt: skip
        datasets = {}
        total = len(split.train) + len(split.val) + len(split.test)
        # Rank 0 builds an LMDB cache while the other ranks wait, then they read it.
        shared = provider_name == "lmdb" and self.dist.enabled
        read_existing = self.config.read_existing or (shared and not self.dist.is_main)
        with self.dist.main_first(shared), self._progress() as progress:
            task = progress.add_task("building graphs", total=total, info="")
            for name in ("train", "val", "test"):
                if shared and not self.dist.is_main and not (cache_dir / name).exists():
                    raise UserError(f"{cache_dir / name}: rank {self.dist.rank} cannot see the "
                                    "cache rank 0 built; put cache_dir on a filesystem every "
                                    "node shares, or build it on each node with alignn cache "
                                    "build (docs/distributed.md)")  # fmt: skip
                datasets[name] = provider.open(
                    records, indices=getattr(split, name), backend=self.backend,
                    settings=settings, split=name, cache_dir=cache_dir,
                    read_existing=read_existing,
                    target_scale=self.config.target_multiplication_factor,
                    progress=lambda: progress.advance(task),
                )  # fmt: skip
        return datasets

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console,
            transient=True,
            disable=not (self.config.progress and self.dist.is_main),
        )  # fmt: skip

    def _loader(self, dataset, sampler=None) -> DataLoader:
        """Batches of this rank's share of the global batch; evaluation reads this rank's shard
        (positions ``rank, rank+W, ...``) unless a sampler is given."""
        if sampler is None:
            sampler = self.dist.shard(len(dataset))
        return DataLoader(
            dataset, batch_size=self.dist.per_rank_batch(self.config.batch_size), sampler=sampler,
            collate_fn=make_collate(self.backend.collate, self.dtype),
            num_workers=self.config.num_workers, pin_memory=self.config.pin_memory,
            persistent_workers=self.config.num_workers > 0,
        )  # fmt: skip

    # -- the run --------------------------------------------------------------------------
    def run(self) -> RunSummary:
        try:
            return self._run()
        finally:
            self.dist.close()

    def _run(self) -> RunSummary:
        config = self.config
        start = time.perf_counter()
        self._check_output_dir()
        self._notices()
        records = self._read_records()
        split = split_indices(len(records), config)
        overlap = overlap_count(records, split.val, split.test)
        if overlap:
            self.console.print(
                f"[yellow]warning:[/] {overlap} of {len(split.test)} test structures also appear "
                "in the validation set: the best model is then selected on test data"
            )
        elements = {int(z) for i in split.train for z in records[i].structure.numbers}
        for warning in config.model.dataset_warnings(elements):
            self.console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
        resume = self._read_resume() if config.resume_checkpoint else None
        self.console.print(
            f"{len(records)} structures: {len(split.train)} train, {len(split.val)} val, "
            f"{len(split.test)} test; device {self.device}"
        )
        datasets = self._datasets(records, split)  # may still find a bad structure
        self._prepare_output_dir()
        if self.dist.is_main:
            save_json(
                {f"id_{name}": [records[i].id for i in getattr(split, name)]
                 for name in ("train", "val", "test")},
                self.output_dir / "ids_train_val_test.json",
            )  # fmt: skip
        seed_everything(config.random_seed, config.deterministic, self.device)
        model = self._build_model().to(self.device, self.dtype)
        train_model = self.dist.wrap(model, self.device, config)
        sampler = self.dist.train_sampler(datasets["train"],
                                          self.dist.shared_seed(config.random_seed))  # fmt: skip
        train_loader = self._loader(datasets["train"], sampler)
        val_loader = self._loader(datasets["val"])
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, len(train_loader))
        step = self._step_function(train_model, optimizer)
        history, best_loss, best_epoch, first_epoch = [], float("inf"), 0, 0
        if config.resume_checkpoint:
            first_epoch, best_loss, best_epoch, history = self._resume(model, optimizer, scheduler,
                                                                       resume)  # fmt: skip

        stale = 0
        best_state = None
        for epoch in range(first_epoch, config.epochs):
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            train_stats = self._train_epoch(train_model, train_loader, step, optimizer, scheduler,
                                            epoch)  # fmt: skip
            val_stats, _ = evaluate(model, val_loader, self.device, self.weights,
                                    config.criterion, self.classification,
                                    config.normalize_graph_level_loss)  # fmt: skip
            val_stats = self.dist.merge_stats(val_stats)
            improved = val_stats.loss < best_loss
            if improved:
                best_loss, best_epoch, stale = val_stats.loss, epoch + 1, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if config.write_checkpoint and self.dist.is_main:
                    save_torch(model.state_dict(), self.output_dir / "best_model.pt")
            else:
                stale += 1
            history.append({"epoch": epoch + 1, "train": train_stats.as_dict(),
                            "val": val_stats.as_dict(), "lr": scheduler.get_last_lr()[0],
                            "seconds": time.perf_counter() - t0})  # fmt: skip
            self._save_epoch(model, optimizer, scheduler, epoch, best_loss, best_epoch, history)
            self._print_epoch(history[-1], improved)
            if config.n_early_stopping is not None and stale >= config.n_early_stopping:
                self.console.print(f"early stopping: no val improvement for {stale} epochs")
                break
        epochs_run = len(history)
        if isinstance(step, CapturedTrainingStep):
            self.console.print(f"cuda_graphs: {step.replays} replayed steps, {step.captures_made} "
                               "captures (one per batch size bucket met)")  # fmt: skip
        if config.write_checkpoint and self.dist.is_main:
            save_torch(model.state_dict(), self.output_dir / "last_model.pt")
        if best_state is None:  # resumed run: rank 0 reads the best weights for every rank
            best_path = self.output_dir / "best_model.pt"
            best_state = self.dist.broadcast(
                load_torch(best_path) if self.dist.is_main and best_path.exists() else None
            )
        if best_state is not None:
            model.load_state_dict(best_state)
        summary = RunSummary(self.output_dir, epochs_run, best_epoch)
        summary.metrics = self._final_evaluation(model, datasets, history)
        summary.seconds = time.perf_counter() - start
        if not self.dist.is_main:
            return summary
        save_json({"epochs_run": epochs_run, "best_epoch": best_epoch,
                   "metrics": summary.metrics, "seconds": summary.seconds},
                  self.output_dir / FINISHED_MARKER)  # fmt: skip
        self._print_summary(summary)
        return summary

    def _notices(self) -> None:
        config = self.config
        notes = []
        if config.criterion != "l1":
            notes.append(
                f"criterion {config.criterion!r} is honoured; upstream ALIGNN trains with L1 "
                "whatever criterion says, so its numbers on this config will differ"
            )
        if "warmup_steps" in config.model_fields_set and config.warmup_steps != 2000:
            notes.append("warmup_steps is ignored, as upstream: OneCycle warms up over the "
                         "first 30% of steps")  # fmt: skip
        if config.cuda_graphs:
            notes.append("cuda_graphs is experimental: compare a run with an eager one before "
                         "relying on it (docs/training.md)")  # fmt: skip
        if config.distributed and not self.dist.enabled:
            notes.append("distributed is true but this is one process: launch with "
                         "alignn run --nproc N or torchrun to train data-parallel")  # fmt: skip
        if config.use_lmdb and "lmdb" not in self.registry.datasets:
            notes.append("use_lmdb is true but no LMDB cache plugin is installed: graphs are "
                         "built in memory")  # fmt: skip
        for note in notes:
            self.console.print(f"note: {escape(note)}", soft_wrap=True, highlight=False)

    def _step_function(self, model, optimizer) -> Callable[[Batch], LossResult]:
        """What one training step runs before the optimiser steps: loss and gradients of a batch,
        eagerly or (``cuda_graphs``) by CUDA graph replay."""

        def eager(batch: Batch) -> LossResult:
            batch = batch.to(self.device)
            with autocast_context(self.device, self.config.use_amp):
                output = model(batch.graph)
            output = {k: v.float() if v.dtype == torch.bfloat16 else v for k, v in output.items()}
            result = self._losses(output, batch.targets, batch.graph.atoms_per_graph(), None)
            optimizer.zero_grad(set_to_none=True)
            result.total.backward()
            return result

        if not self.config.cuda_graphs:
            return eager
        return CapturedTrainingStep(model, optimizer, self.backend.pad, self._losses, eager,
                                    self.device)  # fmt: skip

    def _losses(self, output, targets, atoms_per_graph, masks: RowMasks | None) -> LossResult:
        config = self.config
        return compute_losses(output, targets, self.weights, config.criterion,
                              self.classification, atoms_per_graph,
                              config.normalize_graph_level_loss, masks)  # fmt: skip

    def _train_epoch(self, model, loader, step, optimizer, scheduler, epoch: int) -> EpochStats:
        config = self.config
        model.train()
        stats = EpochStats()
        with self._progress() as progress:
            task = progress.add_task(f"epoch {epoch + 1}/{config.epochs}", total=len(loader),
                                     info="")  # fmt: skip
            for batch in loader:
                result = step(batch)
                optimizer.step()
                if config.scheduler == "onecycle":
                    scheduler.step()
                stats.add(result, len(batch.ids))
                maes = " ".join(f"{k} MAE {v:.3g}" for k, v in stats.maes.items())
                progress.update(task, advance=1, info=f"loss {stats.loss:.4g} {maes}")
        if config.scheduler != "onecycle":
            scheduler.step()
        return self.dist.merge_stats(stats)

    def _build_model(self) -> torch.nn.Module:
        """The model, constructed under the run's dtype, as upstream does: RBF gamma is derived
        from the centres at construction and is not in the checkpoint (load_model relies on
        this)."""
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype if self.dtype.is_floating_point and
                                self.dtype.itemsize >= 4 else torch.float32)  # fmt: skip
        try:
            return self.model_plugin.build(self.config.model)
        finally:
            torch.set_default_dtype(previous)

    def _save_epoch(self, model, optimizer, scheduler, epoch, best_loss, best_epoch, history):
        out = self.output_dir
        if not self.dist.is_main:
            return
        if self.config.write_checkpoint:
            save_torch(model.state_dict(), out / "current_model.pt")
        save_json(history, out / "history.json")
        for split in ("train", "val"):
            rows = [
                [h[split]["loss"]] + [h[split].get(f"{term}_loss", 0.0) for term in UPSTREAM_TERMS]
                for h in history
            ]
            save_json(rows, out / f"history_{split}.json")
        if self.config.write_checkpoint:
            # Written last, and self-contained (weights and history too): a run killed at any
            # moment resumes from one consistent epoch, whichever other files were replaced.
            save_torch(
                {"epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler_state(scheduler), "best_loss": best_loss,
                 "best_epoch": best_epoch, "torch_rng": torch.get_rng_state(),
                 "model": model.state_dict(), "history": history},
                out / RESUME_STATE,
            )  # fmt: skip

    def _read_resume(self):
        """Rank 0 reads and checks what to resume from before anything is written, so a missing,
        corrupt or mismatching checkpoint costs seconds and leaves the run directory as it was.
        Returns ``(weights, state, history)`` (None on the other ranks)."""
        if not self.dist.is_main:
            return None
        out = self.output_dir
        state_path, model_path = out / RESUME_STATE, out / "current_model.pt"
        if not state_path.exists():
            raise UserError(f"{out}: resume_checkpoint is set but there is no current_state.pt "
                            "and current_model.pt to resume from")  # fmt: skip
        state = load_torch(state_path)
        absent = [key for key in RESUME_KEYS if not isinstance(state, dict) or key not in state]
        if absent:
            raise ModelError(
                f"{state_path}: not a training state written by alignn run (no {absent[0]!r}); "
                "start a new run in another --output-dir"
            )
        if "model" in state:  # the weights of the same epoch
            source, weights = state_path, as_state_dict(state["model"], state_path)
        else:  # written before current_state.pt held the weights
            if not model_path.exists():
                raise UserError(f"{out}: resume_checkpoint is set but there is no "
                                "current_state.pt and current_model.pt to resume from")  # fmt: skip
            source, weights = model_path, read_state_dict(model_path)
        load_weights(self._build_model(), weights, source=source, model="of this config",
                     fix=f"resume with the config the run was started with "
                         f"({out / 'config.json'}), or train in another --output-dir")  # fmt: skip
        history = state.get("history")
        if not isinstance(history, list):
            history = _read_history(out / "history.json")
        rest = {key: value for key, value in state.items() if key not in ("model", "history")}
        return weights, rest, history  # broadcast to the other ranks: each part once

    def _resume(self, model, optimizer, scheduler, loaded):
        weights, state, history = self.dist.broadcast(loaded)  # every rank loads what 0 read
        model.load_state_dict(weights)  # checked against this config by _read_resume
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(
                f"{self.output_dir / RESUME_STATE}: the optimizer state does not fit this config "
                f"({reason}); resume with the config the run was started with, or train in "
                "another --output-dir"
            ) from None
        torch.set_rng_state(state["torch_rng"])
        history = history[: state["epoch"]]
        self.console.print(f"resuming after epoch {state['epoch']}")
        return state["epoch"], state["best_loss"], state.get("best_epoch", 0), history

    def _final_evaluation(self, model, datasets, history) -> dict[str, dict[str, float]]:
        config = self.config
        predictions, metrics = {}, {}
        for name in ("train", "val", "test"):
            if len(datasets[name]) == 0:
                continue
            loader = self._loader(datasets[name])
            _, rows = evaluate(model, loader, self.device, self.weights, config.criterion,
                               self.classification, config.normalize_graph_level_loss,
                               collect=True)  # fmt: skip
            rows = self.dist.gather_rows(rows)
            if not self.dist.is_main:
                continue
            predictions[name] = rows
            metrics[name] = outputs.split_metrics(rows)
            if config.write_predictions:
                outputs.write_predictions(self.output_dir, name, rows, self.classification)
            if config.store_outputs:
                outputs.write_results_json(self.output_dir, name.capitalize(), rows)
        if config.write_predictions and "test" in predictions and not self.classification and \
                len(predictions["test"][0]["target"]) == 1:  # fmt: skip
            outputs.write_upstream_test_csv(self.output_dir, predictions["test"])
        if history and self.dist.is_main:
            write_report(self.output_dir / "report.png", history, predictions)
        return metrics

    # -- console --------------------------------------------------------------------------
    def _print_epoch(self, entry: dict, improved: bool) -> None:
        def fmt(stats: dict) -> str:
            maes = "  ".join(
                f"{k[:-4]} MAE {v:.4g}" for k, v in stats.items() if k.endswith("_mae")
            )
            return f"loss {stats['loss']:.4g}  {maes}"

        mark = "  [green]* best[/]" if improved else ""
        self.console.print(
            f"epoch {entry['epoch']:>3}  train {fmt(entry['train'])} | val {fmt(entry['val'])}"
            f"  ({entry['seconds']:.1f}s){mark}",
            soft_wrap=True,
        )

    def _print_summary(self, summary: RunSummary) -> None:
        table = Table(title=f"Best model (epoch {summary.best_epoch}) on each split")
        table.add_column("split")
        keys = sorted({k for m in summary.metrics.values() for k in m})
        for key in keys:
            table.add_column(key.replace("_", " "), justify="right")
        for split, metrics in summary.metrics.items():
            table.add_row(split, *[f"{metrics[k]:.4g}" if k in metrics else "" for k in keys])
        self.console.print(table)
        self.console.print(f"outputs in {summary.output_dir} ({summary.seconds:.1f}s)")


def _read_history(path: Path) -> list:
    """``history.json`` of a run being resumed (only for state files that do not hold it)."""
    if not path.exists():
        return []
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); resume_checkpoint cannot continue "
                        "its history") from None  # fmt: skip
    if not isinstance(history, list):
        raise DataError(f"{path}: expected a JSON list of epochs")
    return history
