"""Create upstream ALIGNN run directories and upstream's own predictions for the parity test.

Runs in a venv with upstream ``alignn==2026.8.11`` (``nox -s upstream`` makes one), never in ours:

    python tools/upstream_parity/make_upstream_runs.py OUT_DIR

For each case it builds a randomly initialised upstream ``ALIGNNAtomWisePure`` under upstream's
``TrainingConfig`` (float32, as upstream's trainer: default dtype set to the config's), saves it
the way upstream's ``train_for_folder`` does (``config.json`` = ``TrainingConfig.dict()``,
``best_model.pt`` = ``state_dict``) and predicts the sample structures with upstream's ASE
calculator (``alignn.ff.calculators.AlignnAtomwiseCalculator``): energy (``out * N``), forces,
stress (eV/Å³, Voigt). Structures are bundled examples, rattled by 0.02 Å and strained by ~1%
(seeded), so that no neighbour distances tie at the ``max_neighbors`` cut: upstream's tie order is
arbitrary, and in a symmetric cell an atom's own images tie whatever the rattle (their distances
are lattice-vector lengths). A tie there makes the stress depend on which images are kept.

Output: ``OUT_DIR/structures.json`` (numbers, positions, cell, pbc at full precision),
``OUT_DIR/<case>/{config.json,best_model.pt}`` and ``OUT_DIR/upstream_results.json``.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from contextlib import redirect_stdout
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from ase.io import read

REPO = Path(__file__).resolve().parents[2]
STRUCTURES = [
    "POSCAR-JVASP-1372.vasp",  # AlAs, 2 atoms
    "POSCAR-JVASP-107772.vasp",  # most oblique cell
    "POSCAR-JVASP-50332.vasp",  # triclinic
    "POSCAR-JVASP-98167.vasp",  # 30 atoms with H
    "POSCAR-JVASP-22556.vasp",  # cubic perovskite-like
    "POSCAR-JVASP-21210.vasp",  # one atom: sees only its own images
]
BASE = {
    "name": "alignn_atomwise_pure",
    "atom_input_features": 92,
    "hidden_features": 32,
    "embedding_features": 32,
    "calculate_gradient": True,
}
CASES = {
    "pure_default": ({}, {"cutoff": 8.0, "max_neighbors": 12}),
    "pure_stress_zbl_envelope": (
        {
            "stresswise_weight": 1.0,
            "use_zbl": True,
            "use_cutoff_function": True,
            "multiply_cutoff": True,
        },
        {"cutoff": 6.0, "max_neighbors": 16},
    ),
    "pure_uncapped_t_alignn": (
        {"stresswise_weight": 1.0, "conv_type": "t_alignn", "num_heads": 2},
        {"cutoff": 5.0, "max_neighbors": None},
    ),
}
SEED = 123


def main(out: Path) -> int:
    from alignn.config import TrainingConfig
    from alignn.ff.calculators import AlignnAtomwiseCalculator
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    structures = {}
    for name in STRUCTURES:
        atoms = read(REPO / "examples" / "props" / name, format="vasp")
        strain = rng.normal(scale=0.01, size=(3, 3))
        atoms.set_cell(atoms.cell @ (np.eye(3) + (strain + strain.T) / 2), scale_atoms=True)
        atoms.positions = atoms.positions + rng.normal(scale=0.02, size=atoms.positions.shape)
        structures[name] = atoms
    (out / "structures.json").write_text(
        json.dumps(
            {
                name: {
                    "numbers": a.numbers.tolist(),
                    "positions": a.positions.tolist(),
                    "cell": np.asarray(a.cell).tolist(),
                    "pbc": a.pbc.tolist(),
                }
                for name, a in structures.items()
            },
            indent=1,
        )
    )
    results = {"upstream": f"alignn {version('alignn')}, torch {torch.__version__}", "cases": {}}
    for case, (model_changes, graph) in CASES.items():
        config = TrainingConfig(
            dataset="user_data",
            neighbor_strategy="pure_torch",
            atom_features="cgcnn",
            dtype="float32",
            three_body_cutoff=3.5,
            **graph,
            model={**BASE, **model_changes},
        )
        torch.set_default_dtype(torch.float32)  # upstream's trainer: the config's dtype
        torch.manual_seed(SEED)
        model = ALIGNNAtomWisePure(config.model)
        run = out / case
        run.mkdir(exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydantic's .dict() deprecation: upstream uses it
            (run / "config.json").write_text(json.dumps(config.dict(), indent=4))
        torch.save(model.state_dict(), run / "best_model.pt")
        with redirect_stdout(io.StringIO()):
            calc = AlignnAtomwiseCalculator(path=str(run), device="cpu")
        per_structure = {}
        for name, atoms in structures.items():
            atoms = atoms.copy()
            atoms.calc = calc
            with redirect_stdout(io.StringIO()):
                per_structure[name] = {
                    "energy": float(atoms.get_potential_energy()),
                    "forces": atoms.get_forces().tolist(),
                    "stress": atoms.get_stress().tolist(),
                }
        results["cases"][case] = per_structure
        print(case, {n: round(r["energy"], 6) for n, r in per_structure.items()})
    (out / "upstream_results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    sys.exit(main(Path(sys.argv[1])))
