"""A host that has torch and ASE but none of our packages (run as a child process).

It proves the exported file is self-contained: the metadata is read straight from the zip, the
neighbour list comes from ASE, and the ``max_neighbors`` cap is implemented here independently
of ``alignn_torch``. Our packages are made unimportable before anything else happens.

stdin: {"model": path, "structures": [{"numbers", "positions", "cell"}]}
stdout: {"metadata": {...}, "attributes": {...}, "results": [{"capped": ..., "superset": ...,
"float32": ...}]} where each entry holds energy, forces and stress.
"""

from __future__ import annotations

import sys

for _name in ("alignn_core", "alignn_torch", "alignn_torchscript"):
    sys.modules[_name] = None  # type: ignore[assignment]  # any import of ours now fails

import json  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.neighborlist import neighbor_list  # noqa: E402

SKIN = 1.0  # Å beyond the cutoff, like a LAMMPS list with a neighbour skin


def read_metadata(path: str) -> dict:
    """``metadata.json`` is the zip member ``<archive>/extra/metadata.json``: no torch needed."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/extra/metadata.json"))
        return json.loads(archive.read(name))


def cap_nearest(i, j, shifts, distance, k: int, tie: float):
    """Keep the ``k`` nearest per source; ties by (distance to ``tie`` Å, dst, shift)."""
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, np.floor(distance / tie), i))
    i, j, shifts = i[order], j[order], shifts[order]
    first = np.searchsorted(i, i, side="left")  # i is sorted now
    keep = np.arange(len(i)) - first < k
    return i[keep], j[keep], shifts[keep]


def neighbours(atoms: Atoms, cutoff: float, min_distance: float, cap: int | None):
    """Full directed list from ASE (r = x[j] - x[i] + S @ cell), host-side filtering."""
    i, j, shifts = neighbor_list("ijS", atoms, cutoff, self_interaction=False)
    r = atoms.positions[j] - atoms.positions[i] + shifts @ atoms.cell[:]
    distance = np.linalg.norm(r, axis=1)
    keep = distance > min_distance
    i, j, shifts, distance = i[keep], j[keep], shifts[keep], distance[keep]
    if cap:
        i, j, shifts = cap_nearest(i, j, shifts, distance, cap, 1e-8)
    return i, j, shifts


def evaluate(model, atoms: Atoms, edges, dtype: torch.dtype) -> dict:
    i, j, shifts = edges
    out = model.forward_tensors_z(
        torch.tensor(atoms.positions, dtype=dtype),
        torch.tensor(atoms.cell[:], dtype=dtype),
        torch.tensor(atoms.numbers, dtype=torch.long),
        torch.tensor(i, dtype=torch.long),
        torch.tensor(j, dtype=torch.long),
        torch.tensor(shifts, dtype=torch.long),
        True,
    )
    return {key: value.double().tolist() for key, value in out.items()} | {"edges": len(i)}


def main() -> None:
    request = json.load(sys.stdin)
    metadata = read_metadata(request["model"])
    model = torch.jit.load(request["model"], map_location="cpu")
    cutoff = float(metadata["neighbor_list"]["cutoff"])
    min_distance = float(metadata["neighbor_list"]["min_distance"])
    cap = metadata["neighbor_list"]["max_neighbors"]
    results = []
    for item in request["structures"]:
        atoms = Atoms(
            numbers=item["numbers"], positions=item["positions"], cell=item["cell"], pbc=True
        )
        capped = neighbours(atoms, cutoff, min_distance, cap)
        superset = neighbours(atoms, cutoff + SKIN, 0.0, None)  # the model must filter and cap
        results.append(
            {
                "capped": evaluate(model, atoms, capped, torch.float64),
                "superset": evaluate(model, atoms, superset, torch.float64),
                "float32": evaluate(model, atoms, capped, torch.float32),
            }
        )
    attributes = {
        name: getattr(model, name)
        for name in ("cutoff", "max_neighbors", "three_body_cutoff", "neighbor_strategy")
    }
    loaded = sorted(
        name
        for name, module in sys.modules.items()
        if module is not None and name.split(".")[0].startswith("alignn")
    )
    json.dump(
        {"metadata": metadata, "attributes": attributes, "results": results, "loaded": loaded},
        sys.stdout,
    )


if __name__ == "__main__":
    main()
