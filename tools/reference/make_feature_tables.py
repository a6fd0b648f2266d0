"""Generate atom feature tables (data) from jarvis-tools, as upstream ALIGNN uses them.

Runs in the *upstream* venv (see tools/reference/README.md):

    /work/upstream-venv/bin/python tools/reference/make_feature_tables.py

Writes alignn_core/features/tables/{cgcnn,basic,cfid}.json. Every row is the
exact value that `jarvis.core.specie.get_node_attributes(symbol, atom_features=...)`
returns (the function upstream's graph builders call per node), converted to
Python floats (float64; JSON round-trips them exactly). The script then builds
an upstream `pure_torch` graph and checks that upstream's `ndata["atom_features"]`
equals the table rows.
"""

from __future__ import annotations

import io
import json
import math
import sys
from contextlib import redirect_stdout
from importlib.metadata import version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "alignn_core" / "features" / "tables"

from ase.data import chemical_symbols  # noqa: E402
from jarvis.core.specie import chem_data, get_node_attributes  # noqa: E402

JARVIS_VERSION = version("jarvis-tools")
ALIGNN_VERSION = version("alignn")


def _call(symbol: str, feature_set: str):
    """Return (row or None, exception name or None, printed text)."""
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            row = get_node_attributes(symbol, atom_features=feature_set)
        return [float(v) for v in row], None, buf.getvalue()
    except Exception as exc:  # noqa: BLE001 - recorded, not hidden
        return None, type(exc).__name__, buf.getvalue()


def _has_nan(row):
    return any(math.isnan(v) for v in row)


def build(feature_set: str, width: int, source_detail: str):
    rows = {}
    fallback_hits = []
    # jarvis' element data (Elements.json) covers these symbols:
    jarvis_symbols = sorted(chem_data, key=lambda s: chem_data[s]["Z"])
    for sym in jarvis_symbols:
        z = int(chem_data[sym]["Z"])
        row, err, printed = _call(sym, feature_set)
        if row is None:
            continue
        assert len(row) == width, (feature_set, sym, len(row))
        if printed:  # cgcnn prints a warning when it substitutes the fallback row
            fallback_hits.append(z)
            continue
        assert not _has_nan(row), (feature_set, sym)
        rows[str(z)] = row
    # What happens for symbols jarvis does not know (ASE symbols beyond, and junk).
    unknown = {}
    for sym in [s for s in chemical_symbols[1:] if s not in chem_data] + ["Xx"]:
        row, err, printed = _call(sym, feature_set)
        if err:
            unknown[sym] = f"raises {err}"
        elif printed:
            unknown[sym] = "fallback row (warning printed)"
        elif _has_nan(row):
            unknown[sym] = f"row of {len(row)} NaN" if all(
                math.isnan(v) for v in row
            ) else "row containing NaN"
        else:
            unknown[sym] = "genuine row?"
    return rows, fallback_hits, unknown


def verify_against_graph(tables):
    """Upstream's pure_torch graph ndata['atom_features'] == table rows."""
    import torch
    from jarvis.core.atoms import Atoms
    from alignn.graphs import Graph

    torch.set_default_dtype(torch.float64)
    atoms = Atoms(
        lattice_mat=[[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]],
        coords=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0.25]],
        elements=["Cu", "O", "Bi"],
        cartesian=False,
    )
    checked = {}
    for name, table in tables.items():
        g, _lg = Graph.atom_dgl_multigraph(
            atoms,
            neighbor_strategy="pure_torch",
            cutoff=5.0,
            max_neighbors=12,
            atom_features=name,
        )
        feats = g.ndata["atom_features"].numpy()
        for i, z in enumerate(atoms.atomic_numbers):
            ref = np.asarray(table["rows"][str(z)], dtype=np.float64)
            assert np.array_equal(feats[i], ref), (name, z)
        checked[name] = [int(z) for z in atoms.atomic_numbers]
    torch.set_default_dtype(torch.float32)
    return checked


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    specs = {
        "cgcnn": (92, "jarvis/core/atom_init.json (CGCNN table, keyed by Z)"),
        "basic": (
            11,
            "Elements.json properties [Z, coulmn, row, X, atom_rad, nsvalence, "
            "npvalence, ndvalence, nfvalence, first_ion_en, elec_aff]",
        ),
        "cfid": (438, "Elements.json: all 438 values of Specie.get_descrp_arr, in "
                 "file key order"),
    }
    tables = {}
    for name, (width, detail) in specs.items():
        rows, fallback_hits, unknown = build(name, width, detail)
        zs = sorted(int(z) for z in rows)
        doc = {
            "feature_set": name,
            "width": width,
            "source": (
                f"jarvis-tools {JARVIS_VERSION} get_node_attributes(symbol, "
                f"atom_features={name!r}) as called by alignn {ALIGNN_VERSION}; "
                f"{detail}"
            ),
            "z_range": [zs[0], zs[-1]],
            "rows": {str(z): rows[str(z)] for z in zs},
        }
        if name == "cgcnn":
            doc["fallback_z"] = 100
            doc["fallback_note"] = (
                "get_node_attributes looks the row up by str(Z); on a KeyError it "
                "prints two warning lines and returns the Z=100 row. That happens for "
                f"Z={fallback_hits} (elements jarvis knows but atom_init.json lacks) and "
                "for every symbol jarvis does not know (Z read as NaN). Rows for those "
                "are NOT listed in 'rows'."
            )
        elif name == "basic":
            doc["fallback_z"] = None
            doc["fallback_note"] = (
                "No fallback row: symbols unknown to jarvis (ASE Z>103) get a row of "
                "11 NaN (element_property returns NaN for missing data). Upstream's "
                "register_species_table copies that NaN row into the TorchScript table."
            )
        else:
            doc["fallback_z"] = None
            doc["fallback_note"] = (
                "No fallback row: get_node_attributes raises KeyError for symbols "
                "unknown to jarvis (ASE Z>103); upstream's register_species_table "
                "leaves those rows zero."
            )
        doc["unknown_symbol_behaviour"] = unknown
        sentinel = sorted(int(z) for z, r in rows.items() if any(v == -9999.0 for v in r))
        if sentinel:
            doc["missing_value_note"] = (
                "jarvis Elements.json marks missing properties with -9999.0; upstream uses "
                f"these values as-is. Rows containing -9999.0: Z={sentinel}"
            )
        tables[name] = doc
    checked = verify_against_graph(tables)
    for name, doc in tables.items():
        doc["verified_against_upstream_graph"] = (
            f"alignn {ALIGNN_VERSION} Graph.atom_dgl_multigraph(neighbor_strategy="
            f"'pure_torch', atom_features={name!r}) ndata['atom_features'] equals "
            f"these rows exactly (float64) for Z={checked[name]}"
        )
        path = OUT_DIR / f"{name}.json"
        with open(path, "w") as fh:
            json.dump(doc, fh, allow_nan=False, separators=(",", ":"))
            fh.write("\n")
        # round-trip check
        back = json.load(open(path))
        for z, row in doc["rows"].items():
            assert back["rows"][z] == row
        print(f"{path}: {len(doc['rows'])} rows, Z {doc['z_range']}, width {doc['width']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
