"""Developer sessions: ``nox -s tests``, ``lint``, ``demo``, ``docs``.

Every session installs the core and the first-party plugins (editable) with the pins in
``constraints/dev.txt`` (torch 2.13.0 CPU); users get the permissive ranges in each pyproject.
"""

from __future__ import annotations

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

PYTHON = "3.11"
CONSTRAINTS = ("-c", "constraints/dev.txt")
PLUGINS = ("plugins/alignn-torch", "plugins/alignn-dgl", "plugins/alignn-lmdb",
           "plugins/alignn-torchscript")  # fmt: skip
EXAMPLE_PLUGIN = "docs/example-plugin"


def install_project(session: nox.Session, *extras: str) -> None:
    session.install(*CONSTRAINTS, "torch==2.13.0")
    editable = [arg for path in (".", *PLUGINS) for arg in ("-e", path)]
    session.install(*CONSTRAINTS, *editable, *extras)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (the example third-party plugin is installed too)."""
    install_project(session, "pytest>=7", "hypothesis>=6", "scipy>=1.10", "-e", EXAMPLE_PLUGIN)
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """The property tests with many more random cases (FUZZ_EXAMPLES, default 5000)."""
    install_project(session, "pytest>=7", "hypothesis>=6")
    session.env.setdefault("FUZZ_EXAMPLES", "5000")
    session.run("pytest", "-q", "tests/test_fuzz.py", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Train the two bundled examples: a property model and a force field."""
    install_project(session)
    session.run("alignn", "plugins", "list")
    session.run("alignn", "run", "examples/props/config.json", "--overwrite")
    session.run("alignn", "run", "examples/ff/config.json", "--overwrite")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Regenerate docs/config-reference.md from the JSON Schema."""
    install_project(session)
    session.run("python", "tools/gen_config_reference.py", "docs/config-reference.md")
