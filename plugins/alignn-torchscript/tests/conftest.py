"""Fixtures of the TorchScript export tests: tiny trained-looking run directories, an exported
file and an in-process CLI runner.

Models are tiny (hidden 16) with randomised biases/norms and a scaled head so that forces are
O(0.1-1) eV/Å rather than float noise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from alignn_core.config import load_config
from alignn_core.plugins import get_registry

TINY_MODEL = {
    "name": "alignn_atomwise_pure",
    "alignn_layers": 1,
    "gcn_layers": 1,
    "hidden_features": 16,
    "embedding_features": 16,
    "atom_input_features": 92,
    "edge_input_features": 16,
    "triplet_input_features": 8,
    "stresswise_weight": 1.0,
}
PURE_TORCH = {
    "neighbor_strategy": "pure_torch",
    "cutoff": 5.0,
    "max_neighbors": 8,
    "three_body_cutoff": 3.0,
    "atom_features": "cgcnn",
}


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> Iterator[None]:
    """Tiny graphs gain nothing from threads; on a shared 2-core machine OpenMP spinning made
    them much slower. Restored afterwards for other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_run(
    directory: Path, top: dict[str, Any] | None = None, model: dict[str, Any] | None = None
) -> Path:
    """Write ``config.json`` (resolved, as training does) and a ``best_model.pt`` of random
    weights into ``directory``; returns it."""
    data = {**PURE_TORCH, **(top or {}), "model": {**TINY_MODEL, **(model or {})}}
    config = load_config(data).config
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2))
    torch.manual_seed(0)
    module = get_registry().models[config.model.name].build(config.model)
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() <= 1:
                param.add_(0.2 * torch.randn_like(param))
        module.fc.weight.mul_(200.0)  # forces of O(0.1-1) eV/Å instead of 1e-3
    torch.save(module.state_dict(), directory / "best_model.pt")
    return directory


@pytest.fixture(scope="session")
def pure_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pure_torch run: cap of 8 neighbours, three-body cutoff 3 Å, ZBL on, and the short-bond
    penalty reaching out to 2.6 Å.

    The long penalty range is for the 1-atom fcc Cu cell: with a single species ALIGNN's node
    features hardly depend on geometry, so without it that cell's forces and stress would be
    float noise; with it, the stress is the virial of exactly the 8 images the cap kept out of
    the tied shell of 12, a sharp test of the tie-break.
    """
    model = {"use_zbl": True, "penalty_threshold": 2.6}
    return make_run(tmp_path_factory.mktemp("pure_run"), model=model)


@pytest.fixture(scope="session")
def pure_export(pure_run: Path) -> Path:
    """``pure_run`` exported through the public CLI."""
    from alignn_core.cli.app import main

    output = pure_run / "model.pt"
    assert main(["export", "torchscript", str(pure_run), "-o", str(output)]) == 0
    return output


@pytest.fixture
def new_run(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``new_run(top={...}, model={...})`` -> a fresh run directory."""
    count = iter(range(1000))

    def new(top: dict[str, Any] | None = None, model: dict[str, Any] | None = None) -> Path:
        return make_run(tmp_path / f"run{next(count)}", top, model)

    return new


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``alignn ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from alignn_core.cli.app import main

    def run(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
