"""Reference run: upstream ALIGNN's own DGL model and graphs against the ``alignn_atomwise`` here.

Not a test (the suite never needs upstream): a measurement quoted in docs/dgl.md. It needs one
venv holding upstream ``alignn==2026.8.11`` with ``torch==2.2.1`` + ``dgl==2.1.0`` and our
packages (``--no-deps``); the recipe is in docs/dgl.md. Run from the repo root:

    python plugins/alignn-dgl/tools/upstream_dgl_reference.py [--json out.json]

Three comparisons, float64, on the bundled examples' structures:

1. **graphs**: upstream's ``Graph.atom_dgl_multigraph`` (the DGL-era builder) against our ``dgl``
   backend, per strategy: edge multisets (keyed by src, dst and rounded r) and triplet counts,
   with the triplets ours has and upstream's lacks counted by kind.
2. **model on identical inputs**: our graphs handed to both models (upstream's input format
   ``[g, lg, lattice]``), weights from upstream's freshly initialised model loaded into ours (so
   a real upstream state dict, without ``_species_table``, goes through our loader). One
   structure per forward: there upstream's batch-coupled penalty and ``force_mult_natoms``
   coincide with our per-graph ones.
3. **end to end**: each model on its own project's graphs, where the graphs differ.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("DGLBACKEND", "pytorch")

REPO = Path(__file__).resolve().parents[3]
MODEL = dict(alignn_layers=2, gcn_layers=1, hidden_features=32, embedding_features=32,
             atom_input_features=92, stresswise_weight=1.0, gradwise_weight=1.0,
             penalty_factor=0.1)  # fmt: skip
"""A small force-field model, the same for both projects."""

CASES = {
    "props (k-nearest, 8 Å, 12)": ("props", {"neighbor_strategy": "k-nearest", "cutoff": 8.0,
                                             "max_neighbors": 12}),
    "ff (radius_graph, 4 Å)": ("ff", {"neighbor_strategy": "radius_graph", "cutoff": 4.0}),
    "ff (pure_torch, 4 Å, 3.5 Å)": ("ff", {"neighbor_strategy": "pure_torch", "cutoff": 4.0,
                                           "max_neighbors": 12, "three_body_cutoff": 3.5}),
}  # fmt: skip


def structures(example: str, limit: int) -> list[Any]:
    from alignn_core.io.id_prop import read_dataset

    return [record.structure for record in read_dataset(REPO / "examples" / example)][:limit]


def jarvis_atoms(structure: Any) -> Any:
    from ase.data import chemical_symbols
    from jarvis.core.atoms import Atoms

    return Atoms(lattice_mat=structure.cell, coords=structure.positions, cartesian=True,
                 elements=[chemical_symbols[z] for z in structure.numbers])  # fmt: skip


def unmatched_edges(a: tuple, b: tuple, tolerance: float = 1e-5) -> tuple[int, int]:
    """Edges ``(src, dst, r)`` of graph a without a partner in b and vice versa; partners have
    the same ends and ``r`` within ``tolerance`` Å (the builders' float paths differ slightly)."""
    groups: dict[tuple[int, int], list[list[np.ndarray]]] = {}
    for side, (src, dst, r) in enumerate((a, b)):
        for s_, d_, v in zip(src.tolist(), dst.tolist(), np.asarray(r, dtype=float), strict=True):
            groups.setdefault((s_, d_), [[], []])[side].append(v)
    only_a = only_b = 0
    for left, right in groups.values():
        free = list(right)
        for vector in left:
            match = next((i for i, w in enumerate(free) if np.abs(vector - w).max() <= tolerance),
                         None)  # fmt: skip
            if match is None:
                only_a += 1
            else:
                free.pop(match)
        only_b += len(free)
    return only_a, only_b


def compare_graphs(ours: Any, g: Any, lg: Any) -> dict[str, int]:
    """Counts for one structure: edges, edges in only one graph, triplets, and ours' extra
    triplets that pair a self-image edge with itself."""
    only_ours, only_upstream = unmatched_edges((*ours.g.edges(), ours.g.edata["r"]),
                                               (*g.edges(), g.edata["r"].detach()))  # fmt: skip
    lg_src, lg_dst = ours.lg.edges()
    self_pairs = int((lg_src == lg_dst).sum())  # only a self-image edge can follow itself
    return {"edges": ours.g.num_edges(), "edges_upstream": g.num_edges(),
            "edges_only_ours": only_ours, "edges_only_upstream": only_upstream,
            "triplets": ours.lg.num_edges(), "triplets_upstream": lg.num_edges(),
            "self_image_pairs": self_pairs}  # fmt: skip


def upstream_inputs(pair: Any) -> list[Any]:
    """Our graph in upstream's DGL input format ``[g, lg, lattice]`` (same edges and triplets)."""
    import dgl

    src, dst = pair.g.edges()
    g = dgl.graph((src, dst), num_nodes=pair.g.num_nodes())
    g.ndata["atom_features"] = pair.g.ndata["atom_features"].double()
    g.ndata["V"] = pair.volume.double().expand(pair.g.num_nodes()).clone()
    g.edata["r"] = pair.g.edata["r"].double()
    lg_src, lg_dst = pair.lg.edges()
    lg = dgl.graph((lg_src, lg_dst), num_nodes=pair.g.num_edges())
    lg.edata["h"] = pair.lg.edata["h"].double()
    return [g, lg, pair.cell[0].double()]


def deviation(reference: torch.Tensor, other: torch.Tensor) -> list[float]:
    """``[max |Δ|, max |reference|]``: relative figures are formed over a whole case, because
    many structures here are symmetric and have forces that are zero up to rounding."""
    reference, other = reference.detach().flatten(), other.detach().flatten()
    return [float((reference - other).abs().max()), float(reference.abs().max())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)

    import alignn
    import dgl
    from alignn.graphs import Graph
    from alignn.models.alignn_atomwise import ALIGNNAtomWise as UpstreamModel
    from alignn.models.alignn_atomwise import ALIGNNAtomWiseConfig as UpstreamConfig
    from alignn_dgl.config import ALIGNNAtomWiseConfig
    from alignn_dgl.graphs import DGLGraphBackend
    from alignn_dgl.model import ALIGNNAtomWise

    from alignn_core.config.graph_settings import GraphSettings

    torch.manual_seed(0)
    upstream = UpstreamModel(UpstreamConfig(name="alignn_atomwise", **MODEL)).eval()
    with torch.no_grad():  # no identity LayerNorms or zero biases
        for param in upstream.parameters():
            if param.dim() <= 1:
                param.add_(0.2 * torch.randn_like(param))
    upstream_state = upstream.state_dict()
    ours = ALIGNNAtomWise(ALIGNNAtomWiseConfig(name="alignn_atomwise", **MODEL)).eval()
    ours.load_state_dict(upstream_state, strict=True)  # upstream's keys: no _species_table
    backend = DGLGraphBackend()
    report: dict[str, Any] = {"versions": {"alignn": alignn.__version__, "dgl": dgl.__version__,
                                           "torch": torch.__version__},
                              "missing_in_upstream_state": sorted(
                                  set(ours.state_dict()) - set(upstream_state)),
                              "cases": {}}  # fmt: skip

    for label, (example, fields) in CASES.items():
        settings = GraphSettings(atom_features="cgcnn", dtype="float64", **fields)
        rows = []
        for structure in structures(example, args.structures):
            pair = backend.build(structure, settings)
            g, lg = Graph.atom_dgl_multigraph(
                jarvis_atoms(structure), neighbor_strategy=fields["neighbor_strategy"],
                cutoff=fields["cutoff"], max_neighbors=fields.get("max_neighbors", 12),
                atom_features="cgcnn", use_canonize=True, compute_line_graph=True,
                three_body_cutoff=fields.get("three_body_cutoff", 3.5), dtype="float64",
            )  # fmt: skip
            row: dict[str, Any] = compare_graphs(pair, g, lg)
            mine = ours(pair, compute_stress=True)
            same_input = upstream(upstream_inputs(pair))
            row["same_input"] = {
                "out": deviation(same_input["out"], mine["out"]),
                "forces": deviation(same_input["grad"], mine["grad"]),
                "stress": deviation(same_input["stresses"], mine["stresses"]),
            }
            volume = pair.volume.double().expand(g.num_nodes()).clone()
            g.ndata["V"] = g.ndata["V"].double() if "V" in g.ndata else volume
            g.ndata["atom_features"] = g.ndata["atom_features"].double()
            g.edata["r"] = g.edata["r"].detach().double()
            own = upstream([g, lg, pair.cell[0].double()])
            row["own_graphs"] = {
                "out": deviation(own["out"], mine["out"]),
                "forces": deviation(own["grad"], mine["grad"]),
            }
            rows.append(row)
        report["cases"][label] = rows
        summarise(label, rows)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def summarise(label: str, rows: list[dict[str, Any]]) -> None:
    """Print one case: graph agreement, then max |Δ| / max |value| over groups of structures."""

    def rel(items: list[dict[str, Any]], group: str, key: str) -> str:
        if not items:
            return "-"
        diff = max(r[group][key][0] for r in items)
        scale = max(r[group][key][1] for r in items)
        return f"{diff / scale:.1e}" if scale > 0 else f"{diff:.1e} (abs)"

    same = [r for r in rows if r["edges_only_ours"] == r["edges_only_upstream"] == 0]
    plain = [r for r in same if not r["self_image_pairs"]]
    paired = [r for r in same if r["self_image_pairs"]]
    differ = [r for r in rows if r not in same]
    explained = sum(r["triplets"] - r["triplets_upstream"] == r["self_image_pairs"] for r in same)
    extra = sum(r["self_image_pairs"] for r in paired)
    print(f"{label}: {len(rows)} structures; edge multisets identical for {len(same)}; "
          f"of those, ours has exactly the self-image pairs (e, e) more triplets in "
          f"{explained} ({len(paired)} structures, {extra} triplets)")  # fmt: skip
    print(
        "  same inputs (max |Δ| / max |value|): "
        + ", ".join(f"{key} {rel(rows, 'same_input', key)}" for key in ("out", "forces", "stress"))
    )
    for name, items in (("identical graphs", plain), ("+ (e, e) triplets", paired),
                        ("different edges", differ)):  # fmt: skip
        print(
            f"  own graphs, {name} ({len(items)}): out {rel(items, 'own_graphs', 'out')}, "
            f"forces {rel(items, 'own_graphs', 'forces')}"
        )


if __name__ == "__main__":
    main()
