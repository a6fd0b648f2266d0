"""Produce upstream ALIGNNAtomWisePure model fixtures (tests/fixtures/upstream/models/).

Runs in the *upstream* venv, after make_graph_fixtures.py:

    /work/upstream-venv/bin/python tools/reference/make_model_fixtures.py

For every case: models/<case>.pt (upstream state_dict, plain tensors, loadable with
torch.load(weights_only=True)) and models/<case>.json (constructor kwargs, dumped config,
dtype, seed, structures and outputs). Inputs are the structures in graphs.npz, graphs
rebuilt with upstream's pure_torch builder (cutoff 8, max_neighbors 12, three-body 3.5)
and checked equal to graphs.npz "<structure>/pure_c8_k12/*".
"""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stdout
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures" / "upstream"
OUT = FIX / "models"

import alignn.models.alignn_atomwise_pure as amod  # noqa: E402
from alignn.models.alignn_atomwise_pure import (  # noqa: E402
    ALIGNNAtomWisePure,
    ALIGNNAtomWisePureConfig,
)
from alignn.torch_graph_builder import (  # noqa: E402
    batch_torch_graph_pairs,
    build_pure_torch_graph,
)
from jarvis.core.atoms import Atoms  # noqa: E402

SEED = 123
GRAPH_SETTING = "pure_c8_k12"
CUTOFF, MAX_NB, THREE_BODY = 8.0, 12, 3.5
BASE = dict(
    name="alignn_atomwise_pure",
    hidden_features=16,
    embedding_features=16,
    alignn_layers=2,
    gcn_layers=2,
    atom_input_features=92,
)
STD3 = ["JVASP-1372", "JVASP-50332", "mlearn-Cu-36"]
CASES = {
    # case: (extra kwargs, structures, dtype)
    "a_default_ff": (dict(calculate_gradient=True, stresswise_weight=1.0, use_penalty=True), STD3, "float64"),
    "b_cutoff_fn": (dict(stresswise_weight=1.0, use_cutoff_function=True, inner_cutoff=3.0), STD3, "float64"),
    "c_cutoff_multiply": (dict(stresswise_weight=1.0, use_cutoff_function=True, multiply_cutoff=True), STD3, "float64"),
    "d_zbl": (dict(stresswise_weight=1.0, use_zbl=True), ["Si2-compressed", "JVASP-1372", "JVASP-50332"], "float64"),
    "e_n_alignn": (dict(stresswise_weight=1.0, conv_type="n_alignn", num_heads=2), STD3, "float64"),
    "f_t_alignn": (dict(stresswise_weight=1.0, conv_type="t_alignn", num_heads=2), STD3, "float64"),
    "g_property": (dict(calculate_gradient=False, output_features=1, energy_mult_natoms=False), STD3, "float64"),
    "h_lg_not_on_fly": (dict(stresswise_weight=1.0, lg_on_fly=False), STD3, "float64"),
    # link "log" sets fc.bias to a 0-dim *float32* tensor, which breaks a float64 model
    # ("self and mat2 must have the same dtype"), so this case runs in float32.
    "i_link_log": (dict(stresswise_weight=1.0, link="log"), STD3, "float32"),
}

_captured: dict = {}
_orig_grad = amod.grad


def _grad_spy(outputs, inputs, **kw):
    """Record the scalar upstream differentiates (sum over graphs of en_out)."""
    _captured["energy_sum"] = outputs.detach().clone()
    return _orig_grad(outputs, inputs, **kw)


amod.grad = _grad_spy


def load_structures():
    z = np.load(FIX / "graphs.npz", allow_pickle=False)
    meta = json.load(open(FIX / "graphs.json"))
    return z, meta


def make_atoms(z, meta, name):
    return Atoms(
        lattice_mat=z[f"{name}/lattice"],
        coords=z[f"{name}/positions"],
        elements=meta["structures"][name]["elements"],
        cartesian=True,
    )


def build_graph(z, meta, name):
    """Build in float64 (identical to the fixture), then cast floats to the default dtype.

    Building directly in float32 can break distance ties at the 12th neighbour
    differently (upstream's unstable top-k), giving a different edge list.
    """
    want = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        g, lg = _build_graph64(z, meta, name)
    finally:
        torch.set_default_dtype(want)
    if want != torch.float64:
        for d in (g.ndata, g.edata, lg.ndata, lg.edata):
            for k, v in list(d.items()):
                if v.is_floating_point():
                    d[k] = v.to(want)
        lg.ndata["r"] = g.edata["r"]
    return g, lg


def _build_graph64(z, meta, name):
    atoms = make_atoms(z, meta, name)
    dtype = torch.get_default_dtype()
    # upstream uses atoms.cart_coords / atoms.lattice_mat; pass the fixture arrays
    # explicitly so the rebuild uses exactly the stored numbers.
    with redirect_stdout(io.StringIO()):
        g, lg = build_pure_torch_graph(
            atoms=atoms,
            two_body_cutoff=CUTOFF,
            three_body_cutoff=THREE_BODY,
            max_neighbors=MAX_NB,
            atom_features="cgcnn",
            positions=torch.as_tensor(z[f"{name}/positions"], dtype=dtype),
            lattice=torch.as_tensor(z[f"{name}/lattice"], dtype=dtype),
        )
    p = f"{name}/{GRAPH_SETTING}"
    assert np.array_equal(g.src.numpy(), z[f"{p}/src"]), name
    assert np.array_equal(g.dst.numpy(), z[f"{p}/dst"]), name
    assert np.array_equal(g.edata["images"].numpy(), z[f"{p}/images"].astype(g.edata["images"].numpy().dtype)), name
    assert np.array_equal(lg.src.numpy(), z[f"{p}/lg_src"]), name
    return g, lg


def tolist(t):
    return t.detach().to(torch.float64).cpu().numpy().tolist()


def run(model, pairs, calc_grad, stress_on):
    _captured.clear()
    fc_out = {}
    def _hook(mod, inp, outp):  # must return None (a returned value replaces the output)
        fc_out["v"] = outp.detach().clone()

    hook = model.fc.register_forward_hook(_hook)
    if len(pairs) == 1:
        g, lg = pairs[0]
    else:
        g, lg = batch_torch_graph_pairs(pairs)
    out = model((g, lg, None))
    hook.remove()
    res = {"out": tolist(out["out"]), "fc_out": tolist(fc_out["v"])}
    if calc_grad:
        res["grad"] = tolist(out["grad"])
        res["energy_sum"] = float(_captured["energy_sum"])
        if stress_on:
            res["stresses"] = tolist(out["stresses"])
    return res


def fresh_pairs(z, meta, names):
    return [build_graph(z, meta, n) for n in names]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    z, meta = load_structures()
    summary = {}
    for case, (extra, names, dtype_name) in CASES.items():
        dtype = getattr(torch, dtype_name)
        torch.set_default_dtype(dtype)
        kwargs = dict(BASE, **extra)
        cfg = ALIGNNAtomWisePureConfig(**kwargs)
        torch.manual_seed(SEED)
        model = ALIGNNAtomWisePure(cfg)
        model.eval()
        calc_grad = bool(model.config.calculate_gradient)
        stress_on = calc_grad and model.config.stresswise_weight != 0
        sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        torch.save(sd, OUT / f"{case}.pt")
        back = torch.load(OUT / f"{case}.pt", weights_only=True)
        assert set(back) == set(sd)
        single = {n: run(model, fresh_pairs(z, meta, [n]), calc_grad, stress_on) for n in names}
        batch = run(model, fresh_pairs(z, meta, names), calc_grad, stress_on)
        doc = {
            "case": case,
            "upstream": f"alignn {version('alignn')}, torch {torch.__version__}",
            "dtype": dtype_name,
            "seed": f"torch.manual_seed({SEED}) immediately before ALIGNNAtomWisePure(config)",
            "constructor_kwargs": kwargs,
            "config": model.config.model_dump(),
            "effective": {
                "use_zbl": model.use_zbl,
                "calculate_gradient": calc_grad,
                "stress_computed": stress_on,
            },
            "state_dict_dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in sd.items()},
            "state_dict_shapes": {k: list(v.shape) for k, v in sd.items()},
            "model.eval()": True,
            "inputs": {
                "graphs": f"graphs.npz '<structure>/{GRAPH_SETTING}/*' (rebuilt by upstream "
                          f"build_pure_torch_graph in float64, floats then cast to {dtype_name}; cutoff {CUTOFF}, max_neighbors "
                          f"{MAX_NB}, three_body_cutoff {THREE_BODY}, cgcnn features)",
                "structures": names,
                "call": "model((g, lg, None)); batch = batch_torch_graph_pairs([(g, lg), ...]) in "
                        "the listed order",
            },
            "single": single,
            "batch": batch,
        }
        if case == "a_default_ff":
            doc["torchscript"] = torchscript_case(model, z, meta, "JVASP-50332", single["JVASP-50332"])
        with open(OUT / f"{case}.json", "w") as fh:
            json.dump(doc, fh, indent=1)
        summary[case] = {n: single[n].get("energy_sum", single[n]["out"]) for n in names}
        print(case, summary[case], "batch", batch.get("energy_sum", batch["out"]))
    torch.set_default_dtype(torch.float32)
    return 0


def torchscript_case(model, z, meta, name, eager):
    """forward_tensors_z of torch.jit.script(model) after register_species_table('cgcnn')."""
    res = {"structure": name, "edges": f"graphs.npz '{name}/{GRAPH_SETTING}/src|dst|images'",
           "call": "sm = torch.jit.script(m); sm.forward_tensors_z(positions, lattice, Z, src, dst, "
                   "images, True) with m in eval mode; positions.requires_grad_(True) (required: "
                   "forward_tensors differentiates w.r.t. r, which must depend on a grad leaf)",
           "eager_energy_sum_same_model": eager["energy_sum"]}
    p = f"{name}/{GRAPH_SETTING}"
    for label, conv in (("float64", torch.float64), ("float32", torch.float32)):
        import copy

        m = copy.deepcopy(model).to(conv)  # casts every floating param and buffer
        with redirect_stdout(io.StringIO()):
            m.register_species_table("cgcnn")
        m.eval()
        sm = torch.jit.script(m)
        out = sm.forward_tensors_z(
            torch.as_tensor(z[f"{name}/positions"], dtype=conv).clone().requires_grad_(True),
            torch.as_tensor(z[f"{name}/lattice"], dtype=conv),
            torch.as_tensor(z[f"{name}/Z"], dtype=torch.long),
            torch.as_tensor(z[f"{p}/src"]),
            torch.as_tensor(z[f"{p}/dst"]),
            torch.as_tensor(z[f"{p}/images"], dtype=conv),
            True,
        )
        res[label] = {
            "note": ("model.to(float64) also casts _species_table to float64 (upstream keeps it "
                     "float32, so forward_tensors_z fails on a float64 model without this cast)")
            if label == "float64" else "model.to(float32): weights rounded to float32",
            "energy": float(out["energy"].detach()),
            "forces": tolist(out["forces"]),
            "stress": tolist(out["stress"]),
        }
    return res


if __name__ == "__main__":
    sys.exit(main())
