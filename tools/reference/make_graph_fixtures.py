"""Produce upstream-ALIGNN graph fixtures (tests/fixtures/upstream/graphs.npz + graphs.json).

Runs in the *upstream* venv (alignn==2026.8.11, torch 2.13 CPU, no DGL, no matscipy):

    /work/upstream-venv/bin/python tools/reference/make_graph_fixtures.py

All graphs are built in float64 (torch.set_default_dtype(torch.float64)) so the stored
numbers are exact upstream values. See tests/fixtures/upstream/README.md for the layout.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "upstream"
DATA = Path("/work/shared/data")

torch.set_default_dtype(torch.float64)

from jarvis.core.atoms import Atoms  # noqa: E402
from alignn.graphs import (  # noqa: E402
    Graph,
    build_undirected_edgedata,
    nearest_neighbor_edges,
)
from alignn.torch_graph_builder import torch_neighbor_list  # noqa: E402

POSCARS = {
    # name: (file, why)
    "JVASP-107772": ("POSCAR-JVASP-107772.vasp", "most oblique cell: Bi3Sb, angles 31.4 deg"),
    "JVASP-50332": ("POSCAR-JVASP-50332.vasp", "general triclinic Na2CuO2 (132.7/149.1/57.6 deg)"),
    "JVASP-1372": ("POSCAR-JVASP-1372.vasp", "smallest cell: AlAs fcc primitive, 2 atoms, 46.9 A^3"),
    "JVASP-21210": ("POSCAR-JVASP-21210.vasp", "1-atom Xe cell (self images)"),
    "JVASP-22556": ("POSCAR-JVASP-22556.vasp", "cubic SrFeO3 (many distance ties)"),
    "JVASP-98167": ("POSCAR-JVASP-98167.vasp", "30 atoms FeH8Cl2O4, monoclinic, short O-H bonds"),
}
MLEARN = {
    "mlearn-Cu-0": ("Cu", 0, "107-atom fcc Cu supercell with a vacancy"),
    "mlearn-Cu-36": ("Cu", 36, "8-atom Cu slab with vacuum (c = 20.5 A)"),
    "mlearn-Si-0": ("Si", 0, "63-atom Si, oblique cell (88.3/44.5/73.9 deg)"),
    "mlearn-Si-63": ("Si", 63, "16-atom Si slab with vacuum (c = 30.9 A)"),
}

PURE_SETTINGS = {
    # name: (cutoff, max_neighbors, three_body_cutoff)
    "pure_c8_k12": (8.0, 12, 3.5),
    "pure_c5_k12": (5.0, 12, 3.5),
    "pure_c5_kNone": (5.0, None, 3.5),
}
KNN_SETTINGS = {
    "knn_c8_k12_canon": (8.0, 12, True),
    "knn_c8_k12_nocanon": (8.0, 12, False),
}


def load_structures():
    out = {}
    for name, (fname, why) in POSCARS.items():
        out[name] = (Atoms.from_poscar(str(DATA / "jarvis_sample_props" / fname)), why,
                     f"shared/data/jarvis_sample_props/{fname}")
    for name, (el, idx, why) in MLEARN.items():
        recs = json.load(open(DATA / "mlearn" / el / "id_prop.json"))
        rec = recs[idx]
        out[name] = (Atoms.from_dict(rec["atoms"]), why,
                     f"shared/data/mlearn/{el}/id_prop.json record {idx} (jid {rec['jid']})")
    a = 3.615
    cu1 = Atoms(
        lattice_mat=[[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]],
        coords=[[0, 0, 0]],
        elements=["Cu"],
        cartesian=True,
    )
    out["Si2-compressed"] = (
        Atoms(
            lattice_mat=[[3.0, 0, 0], [0, 3.1, 0], [0, 0, 3.2]],
            coords=[[0.1, 0.2, 0.3], [0.8, 0.5, 0.5]],
            elements=["Si", "Si"],
            cartesian=True,
        ),
        "2-atom Si cell with a 0.787 A bond (exercises ZBL < 0.9 A and penalty < 1.0 A)",
        "constructed: orthorhombic 3.0 x 3.1 x 3.2 A, Si at (0.1,0.2,0.3) and (0.8,0.5,0.5) A cartesian",
    )
    out["Cu-fcc-prim"] = (cu1, "1-atom fcc Cu primitive cell, a = 3.615 A (self images)",
                          "constructed: lattice rows [[0,a/2,a/2],[a/2,0,a/2],[a/2,a/2,0]], a=3.615")
    return out


def boundary_ties(atoms, cutoff, k):
    """Per source atom: True when the K-th and (K+1)-th distances tie (|diff| < 1e-8)."""
    pos = torch.as_tensor(np.asarray(atoms.cart_coords))
    lat = torch.as_tensor(np.asarray(atoms.lattice_mat))
    src, dst, shift, r = torch_neighbor_list(pos, lat, cutoff, None, atoms=atoms)
    d = r.norm(dim=1).numpy()
    s = src.numpy()
    ties = np.zeros(atoms.num_atoms, dtype=bool)
    for i in range(atoms.num_atoms):
        di = np.sort(d[s == i])
        if len(di) > k and abs(di[k] - di[k - 1]) < 1e-8:
            ties[i] = True
    return ties


def dgl_style_line_graph(src, dst):
    """Line graph as DGL line_graph(shared=True, backtracking=True) defines it:
    one edge A->B for every pair of edges A=(u->v), B=(v->w) (w == u included).
    Ordered by A, then B in increasing edge id."""
    src = np.asarray(src)
    dst = np.asarray(dst)
    out_edges = {}
    for e, u in enumerate(src):
        out_edges.setdefault(int(u), []).append(e)
    lsrc, ldst = [], []
    for a, v in enumerate(dst):
        for b in out_edges.get(int(v), []):
            lsrc.append(a)
            ldst.append(b)
    return np.asarray(lsrc, dtype=np.int64), np.asarray(ldst, dtype=np.int64)


def cosines(r, lsrc, ldst):
    ra = -r[lsrc]
    rb = r[ldst]
    c = (ra * rb).sum(1) / (np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1))
    return np.clip(c, -1.0, 1.0)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    arrays = {}
    meta = {
        "upstream": f"alignn {version('alignn')}, jarvis-tools {version('jarvis-tools')}, "
                    f"torch {torch.__version__}, numpy {np.__version__}; no DGL, no matscipy "
                    "(so the pure_torch topology comes from upstream's torch search)",
        "dtype": "float64 (torch.set_default_dtype(torch.float64) before building)",
        "atom_features": "cgcnn",
        "pure_settings": {k: {"cutoff": c, "max_neighbors": m, "three_body_cutoff": t}
                          for k, (c, m, t) in PURE_SETTINGS.items()},
        "knn_settings": {k: {"cutoff": c, "max_neighbors": m, "use_canonize": u}
                         for k, (c, m, u) in KNN_SETTINGS.items()},
        "structures": {},
    }
    structures = load_structures()
    max_conv_err = 0.0
    for name, (atoms, why, origin) in structures.items():
        lat = np.asarray(atoms.lattice_mat, dtype=np.float64)
        pos = np.asarray(atoms.cart_coords, dtype=np.float64)
        frac = np.asarray(atoms.frac_coords, dtype=np.float64)
        arrays[f"{name}/lattice"] = lat
        # jarvis' Lattice object rounds the matrix to 5 decimals; cart<->frac conversions
        # (and so the k-nearest displacements) use this rounded matrix.
        lat_r = np.asarray(atoms.lattice.matrix, dtype=np.float64)
        arrays[f"{name}/lattice_rounded"] = lat_r
        arrays[f"{name}/positions"] = pos
        arrays[f"{name}/frac_coords"] = frac
        arrays[f"{name}/Z"] = np.asarray(atoms.atomic_numbers, dtype=np.int64)
        info = {
            "why": why,
            "origin": origin,
            "elements": list(atoms.elements),
            "num_atoms": atoms.num_atoms,
            "volume": float(abs(np.linalg.det(lat))),
            "lattice_rounding_max_abs": float(np.abs(lat - lat_r).max()),
            "positions_vs_frac_at_lattice_max_abs": float(np.abs(pos - frac @ lat).max()),
            "frac_min": float(frac.min()),
            "frac_max": float(frac.max()),
            "graphs": {},
        }
        for gname, (cut, mn, tbc) in PURE_SETTINGS.items():
            g, lg = Graph.atom_dgl_multigraph(
                atoms,
                neighbor_strategy="pure_torch",
                cutoff=cut,
                max_neighbors=mn,
                atom_features="cgcnn",
                three_body_cutoff=tbc,
                compute_line_graph=True,
            )
            p = f"{name}/{gname}"
            src = g.src.numpy().astype(np.int64)
            dst = g.dst.numpy().astype(np.int64)
            r = g.edata["r"].detach().numpy()
            images = g.edata["images"].numpy()
            arrays[f"{p}/src"] = src
            arrays[f"{p}/dst"] = dst
            arrays[f"{p}/images"] = images
            arrays[f"{p}/r"] = r
            arrays[f"{p}/lg_src"] = lg.src.numpy().astype(np.int64)
            arrays[f"{p}/lg_dst"] = lg.dst.numpy().astype(np.int64)
            arrays[f"{p}/h"] = lg.edata["h"].detach().numpy()
            arrays[f"{p}/V"] = g.ndata["V"].detach().numpy()
            arrays[f"{p}/Z"] = g.ndata["Z"].numpy().astype(np.int64)
            # edge convention check
            rr = pos[dst] - pos[src] + images @ lat
            err = float(np.abs(rr - r).max()) if len(r) else 0.0
            max_conv_err = max(max_conv_err, err)
            assert err < 1e-9, (name, gname, err)
            # line-graph cosine check
            hc = cosines(r, arrays[f"{p}/lg_src"], arrays[f"{p}/lg_dst"])
            assert np.allclose(hc, arrays[f"{p}/h"], atol=1e-12)
            ginfo = {"num_edges": int(len(src)), "num_triplets": int(len(lg.src)),
                     "convention_max_abs_err": err}
            if mn:
                ties = boundary_ties(atoms, cut, mn)
                arrays[f"{p}/boundary_tie"] = ties
                ginfo["sources_with_tie_at_kth_neighbour"] = int(ties.sum())
                # asymmetry: directed edges (i->j, S) with no (j->i, -S)
                keyset = {(int(a), int(b), tuple(np.rint(s).astype(int))) for a, b, s in zip(src, dst, images)}
                ginfo["edges_without_reverse"] = int(sum(
                    (b, a, tuple(-np.array(s))) not in keyset for a, b, s in keyset))
            info["graphs"][gname] = ginfo
        for gname, (cut, mn, canon) in KNN_SETTINGS.items():
            edges, _ = nearest_neighbor_edges(
                atoms=atoms, cutoff=cut, max_neighbors=mn, use_canonize=canon
            )
            u, v, r, images = build_undirected_edgedata(atoms, edges)
            p = f"{name}/{gname}"
            src = u.numpy().astype(np.int64)
            dst = v.numpy().astype(np.int64)
            r = r.numpy()
            images = images.numpy()
            lsrc, ldst = dgl_style_line_graph(src, dst)
            arrays[f"{p}/src"] = src
            arrays[f"{p}/dst"] = dst
            arrays[f"{p}/images"] = images
            arrays[f"{p}/r"] = r
            arrays[f"{p}/lg_src"] = lsrc
            arrays[f"{p}/lg_dst"] = ldst
            arrays[f"{p}/h"] = cosines(r, lsrc, ldst)
            # Convention: forward edges (even index) r = pos[dst]-pos[src]+images@L;
            # reverse edges (odd index) carry the same images, so r = pos[dst]-pos[src]-images@L.
            # (holds modulo wrapping: k-nearest uses frac_coords, which jarvis does not wrap)
            fwd = pos[dst[0::2]] - pos[src[0::2]] + images[0::2] @ lat_r
            rev = pos[dst[1::2]] - pos[src[1::2]] - images[1::2] @ lat_r
            e1 = float(np.abs(fwd - r[0::2]).max())
            e2 = float(np.abs(rev - r[1::2]).max())
            assert e1 < 1e-9 and e2 < 1e-9, (name, gname, e1, e2)
            assert np.array_equal(images[0::2], images[1::2])
            deg = np.bincount(src, minlength=atoms.num_atoms)
            info["graphs"][gname] = {
                "num_edges": int(len(src)),
                "num_triplets": int(len(lsrc)),
                "min_out_degree": int(deg.min()),
                "max_out_degree": int(deg.max()),
                "convention_max_abs_err_forward": e1,
                "convention_max_abs_err_reverse_with_minus_images": e2,
                "line_graph": "emulated DGL line_graph(shared=True) (no DGL installed): all "
                              "A=(u->v), B=(v->w) incl. w==u, no three-body cutoff",
            }
        meta["structures"][name] = info
        print(name, {k: (v["num_edges"], v["num_triplets"]) for k, v in info["graphs"].items()})
    meta["edge_convention_verified_max_abs_err_pure"] = max_conv_err
    np.savez_compressed(OUT / "graphs.npz", **arrays)
    with open(OUT / "graphs.json", "w") as fh:
        json.dump(meta, fh, indent=1)
    # allow_pickle-free load check
    z = np.load(OUT / "graphs.npz", allow_pickle=False)
    assert set(z.files) == set(arrays)
    print("wrote", OUT / "graphs.npz", (OUT / "graphs.npz").stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
