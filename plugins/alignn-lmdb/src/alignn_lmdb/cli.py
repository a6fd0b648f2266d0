"""``alignn cache build|info|verify``: build a run's graph caches ahead of time and inspect them.

``build`` writes exactly what ``alignn run`` with ``use_lmdb: true`` would (same records, split
and graph settings, through the same provider), so a run with ``read_existing: true`` and the
same ``cache_dir`` reuses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from alignn_core.errors import DataError, UserError

cache_app = typer.Typer(help="Build and inspect LMDB graph caches (use_lmdb).",
                        no_args_is_help=True)  # fmt: skip
console = Console()
SPLITS = ("train", "val", "test")


def _progress() -> Progress:
    return Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=True,
                    disable=not console.is_terminal)  # fmt: skip


def default_cache_dir(config: Any) -> Path:
    """Where ``alignn run CONFIG`` (without ``--output-dir``) puts its caches."""
    return Path(config.cache_dir) if config.cache_dir else Path(config.output_dir) / "cache"


@cache_app.command("build")
def build(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="Run config (JSON)."),
    root_dir: Path | None = typer.Option(
        None, "--root-dir", help="Data folder with id_prop.csv/json (default: the config's folder)."
    ),
    cache_dir: Path | None = typer.Option(
        None,
        "--cache-dir",
        help="Where the caches go (default: the config's cache_dir, else OUTPUT_DIR/cache).",
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Processes building graphs (results identical to 1)."
    ),
) -> None:
    """Build the train/val/test graph caches of CONFIG (always rebuilds)."""
    from alignn_core.cli.run_command import print_warnings
    from alignn_core.config.loader import load_config
    from alignn_core.data.splits import split_indices
    from alignn_core.training.trainer import Trainer
    from alignn_lmdb.provider import LmdbDatasetProvider

    loaded = load_config(config_path)
    print_warnings(loaded.warnings)
    config = loaded.config
    root = root_dir if root_dir is not None else config_path.parent
    target = cache_dir if cache_dir is not None else default_cache_dir(config)
    # the trainer's own record reading, so the cache holds exactly what a run would build
    trainer = Trainer(config, root_dir=root, output_dir=Path(config.output_dir), console=console)
    records = trainer._read_records()
    split = split_indices(len(records), config)
    provider = LmdbDatasetProvider(workers=workers)
    with _progress() as progress:
        for name in SPLITS:
            indices = getattr(split, name)
            task = progress.add_task(f"building {name}", total=len(indices))
            provider.open(records, indices=indices, backend=trainer.backend,
                          settings=config.graph_settings, split=name, cache_dir=target,
                          read_existing=False, target_scale=config.target_multiplication_factor,
                          progress=lambda task=task: progress.advance(task))  # fmt: skip
    for name in SPLITS:
        _print_summary(target / name)


def _find_caches(path: Path) -> list[Path]:
    """``path`` itself if it is one split's cache, else the split caches inside it."""
    from alignn_lmdb.cache import leftovers
    from alignn_lmdb.manifest import MANIFEST

    if (path / MANIFEST).exists():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: no such cache folder")
    found = [child for child in sorted(path.iterdir(), key=_split_order)
             if child.is_dir() and (child / MANIFEST).exists()]  # fmt: skip
    if not found:
        interrupted = [p.path.name for name in SPLITS for p in leftovers(path / name)]
        extra = f" (interrupted builds: {', '.join(interrupted)})" if interrupted else ""
        raise UserError(f"{path}: no alignn-lmdb cache here (no manifest.json){extra}")
    return found


def _split_order(path: Path) -> tuple[int, str]:
    return (SPLITS.index(path.name) if path.name in SPLITS else len(SPLITS), path.name)


def _describe(path: Path) -> dict[str, Any]:
    from alignn_lmdb.cache import disk_usage, reading
    from alignn_lmdb.manifest import read_manifest

    manifest = read_manifest(path)
    allocated, apparent = disk_usage(path)
    entries = None
    if (path / "data.mdb").exists():
        with reading(path) as env:
            entries = env.stat()["entries"]
    return {"path": str(path), "entries": entries, "disk_bytes": allocated,
            "apparent_bytes": apparent, "manifest": manifest}  # fmt: skip


def _print_summary(path: Path) -> None:
    info = _describe(path)
    manifest = info["manifest"]
    state = "complete" if manifest.get("complete") is True else "[red]incomplete[/]"
    console.print(f"{path}: {manifest.get('count')} records, {info['disk_bytes'] / 1e6:.1f} MB, "
                  f"{state}", highlight=False, soft_wrap=True)  # fmt: skip


@cache_app.command("info")
def info(
    path: Path = typer.Argument(..., help="A cache folder (CACHE_DIR or CACHE_DIR/<split>)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show each cache's manifest, record count and size on disk."""
    described = [_describe(p) for p in _find_caches(path)]
    if as_json:
        typer.echo(json.dumps(described, indent=2))
        return
    for item in described:
        manifest = item["manifest"]
        table = Table(title=item["path"], show_header=False, title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value")
        complete = manifest.get("complete") is True
        table.add_row("complete", "yes" if complete else "[red]no (interrupted build)[/]")
        table.add_row("records", f"{manifest.get('count')} (LMDB entries: {item['entries']})")
        table.add_row("size on disk", f"{item['disk_bytes'] / 1e6:.2f} MB")
        for name in ("split", "backend", "backend_version", "format_version", "target_scale",
                     "settings_fingerprint", "indices_sha256", "records_sha256", "built_at",
                     "build_seconds", "written_by"):  # fmt: skip
            table.add_row(name, str(manifest.get(name)))
        for name, value in (manifest.get("settings") or {}).items():
            table.add_row(f"settings.{name}", json.dumps(value))
        Console(width=max(console.width, 100)).print(table)


@cache_app.command("verify")
def verify(
    path: Path = typer.Argument(..., help="A cache folder (CACHE_DIR or CACHE_DIR/<split>)."),
) -> None:
    """Decode every record (checksums included) and check the counts against the manifest."""
    problems = []
    for cache in _find_caches(path):
        try:
            count = _verify_one(cache)
            console.print(f"ok: {cache}: {count} records decode", highlight=False, soft_wrap=True)
        except UserError as exc:
            problems.append(str(exc))
            console.print(f"[red]FAILED[/]: {exc}", highlight=False, soft_wrap=True)
    if problems:
        raise DataError(f"{len(problems)} cache(s) failed verification: {problems[0]}")


def _verify_one(path: Path) -> int:
    from alignn_core.plugins import get_registry
    from alignn_lmdb.cache import LmdbDataset, reading, record_key
    from alignn_lmdb.manifest import read_manifest

    manifest = read_manifest(path)
    if manifest.get("complete") is not True:
        raise DataError(f"{path}: incomplete cache (its build did not finish)")
    count = int(manifest["count"])
    with reading(path) as env, env.begin() as txn:
        entries = env.stat()["entries"]
        keys = [bytes(key) for key in txn.cursor().iternext(keys=True, values=False)]
    if entries != count or keys != [record_key(i) for i in range(count)]:
        raise DataError(f"{path}: the manifest lists {count} records but the LMDB holds "
                        f"{entries} entries (or unexpected keys)")  # fmt: skip
    backend = get_registry().graph_backends.get(manifest.get("backend"))
    if backend is not None and str(backend.version) != manifest.get("backend_version"):
        backend = None
    dataset = LmdbDataset(path, backend, count)
    with _progress() as progress:
        task = progress.add_task(f"verifying {path.name}", total=count)
        for position in range(count):
            record = dataset.read(position, check_crc=True)
            if backend is not None:
                backend.from_arrays(record.graph)
            progress.advance(task)
    dataset.close()
    if backend is None:
        console.print(f"note: graph backend {manifest.get('backend')!r} version "
                      f"{manifest.get('backend_version')} is not installed: records were checked "
                      "as arrays only", highlight=False, soft_wrap=True)  # fmt: skip
    return count


def register(cli: typer.Typer) -> None:
    """Add ``alignn cache`` to the root CLI."""
    cli.add_typer(cache_app, name="cache")
