"""``alignn`` CLI entry point: commands, plugin commands, and error-to-exit-code mapping.

Exit codes: 0 success, 2 usage/config/input error (one line, no traceback), 1 runtime failure
(traceback only with ``--debug``).
"""

from __future__ import annotations

import sys
import traceback

import typer
from rich.console import Console
from rich.markup import escape

from alignn_core import __version__
from alignn_core.cli import (
    bench_command,
    config_commands,
    md_command,
    plugin_commands,
    predict_command,
    relax_command,
    run_command,
)
from alignn_core.errors import UserError

app = typer.Typer(
    name="alignn",
    help="Train and run ALIGNN graph neural networks for materials.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"alignn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for every error."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    _state["debug"] = debug


app.command("run")(run_command.run)
app.command("predict")(predict_command.predict)
app.command("relax")(relax_command.relax)
app.command("md")(md_command.md)
app.add_typer(plugin_commands.plugins_app, name="plugins")
app.add_typer(config_commands.config_app, name="config")
app.add_typer(bench_command.bench_app, name="bench")


def _add_plugin_commands() -> None:
    """Let plugins add commands, once per process."""
    from alignn_core.plugins import load_plugins

    if not _state.get("plugin_commands"):
        _state["plugin_commands"] = True
        load_plugins().hook.register_commands(cli=app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map exceptions to exit codes; returns the code (and exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        _add_plugin_commands()
        app(args=argv, prog_name="alignn")  # standalone: usage errors exit 2 by themselves
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        # escaped: a message's "[n_atoms, 3]" is text, not a rich style tag to swallow
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)  # fmt: skip
        code = exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        code = 130
    except Exception as exc:  # a bug or an environment failure: exit 1
        if debug:
            traceback.print_exc()
        err_console.print(
            f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))} (run with --debug for "
            "the traceback)",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
        code = 1
    return code


def entry() -> None:
    sys.exit(main())
