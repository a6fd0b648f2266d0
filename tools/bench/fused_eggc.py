#!/usr/bin/env python
"""How much would fused C++ kernels speed up CPU inference? Measured, not guessed.

    python tools/bench/fused_eggc.py --out bench/            # dev venv; needs g++ and ninja

Builds ``fused_eggc.cpp`` (a prototype: each edge-gated graph convolution as one kernel with a
hand-written first-order backward, and LayerNorm + SiLU of the embedding MLPs as one) with
``torch.utils.cpp_extension``, swaps it into a copy of the bench's inference model (``ours_worker``:
reduced mlearn Cu architecture, random weights, energy + forces + stress) module by module,
and times stock and fused calls alternately on the bench's Si cells. Before timing it checks
that the fused layer is the stock layer (outputs and input gradients for random output
gradients, relative to the largest entry; it stops above ``LAYER_TOLERANCE``), and it reports
how far the model's forces and stress are from a float64 evaluation, stock and fused. Writes
``fused_eggc.{json,md}`` to ``--out``.

The kernels are float32, single-threaded and first-order only (no training), so this answers
"what would fusion give" for the bench's one-thread inference rows, and nothing ships with it:
docs/performance-details.md (*What remains, and why*) has the numbers and what they mean.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ours_worker
import torch
from alignn_torch.model.layers import EdgeGatedGraphConv, MLPLayer
from run_bench import silicon_json

from alignn_core.allocator import policy_from_env

HERE = Path(__file__).resolve().parent
LAYER_TOLERANCE = 1e-5
"""Largest relative difference allowed between fused and stock layer (float32 rounding: ~5e-7)."""


def build_extension(build_dir: Path):
    """Compile ``fused_eggc.cpp`` (about 40 s the first time, then cached in ``build_dir``)."""
    from torch.utils.cpp_extension import is_ninja_available, load

    if not is_ninja_available() or not shutil.which(os.environ.get("CXX", "c++")):
        sys.exit("fused_eggc.py builds C++: it needs ninja (pip install ninja) and a compiler")
    build_dir.mkdir(parents=True, exist_ok=True)
    flags = ["-O3", "-march=native", "-fopenmp-simd", "-ffp-contract=fast"]
    return load("alignn_fused_eggc", [str(HERE / "fused_eggc.cpp")], extra_cflags=flags,
                build_directory=str(build_dir))  # fmt: skip


def fused_functions(ext) -> tuple[type, type]:
    """The autograd Functions around the kernels (first derivatives for inputs only)."""

    class LayerNormSilu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, eps):
            x = x.contiguous()  # the kernels index rows by pointer arithmetic
            out, stats = ext.ln_silu_fwd(x, weight, bias, eps, x.new_empty(0), False)
            ctx.save_for_backward(x, weight, bias, stats)
            return out

        @staticmethod
        def backward(ctx, grad):
            x, weight, bias, stats = ctx.saved_tensors
            return ext.ln_silu_bwd(grad, x, weight, bias, stats), None, None, None

    class EdgeGatedConv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y, src, dst, conv, update_edges):
            w4 = torch.cat([conv.src_gate.weight, conv.dst_gate.weight,
                            conv.dst_update.weight, conv.src_update.weight])  # fmt: skip
            b4 = torch.cat([conv.src_gate.bias, conv.dst_gate.bias,
                            conv.dst_update.bias, conv.src_update.bias])  # fmt: skip
            nodes, edges = conv.bn_nodes, conv.bn_edges
            x_new, y_new, *saved = ext.eggc_fwd(
                x.contiguous(), y.contiguous(), src, dst, w4, b4, conv.edge_gate.weight,
                conv.edge_gate.bias, nodes.weight, nodes.bias, nodes.eps, edges.weight,
                edges.bias, edges.eps, conv.eps, update_edges,
            )  # fmt: skip
            ctx.save_for_backward(src, dst, w4, conv.edge_gate.weight, nodes.weight, nodes.bias,
                                  edges.weight, edges.bias, *saved)  # fmt: skip
            ctx.update_edges = update_edges
            return x_new, (y_new if update_edges else y)

        @staticmethod
        def backward(ctx, grad_x, grad_y):
            saved = ctx.saved_tensors
            grad_x = torch.zeros_like(saved[-3]) if grad_x is None else grad_x.contiguous()
            edge_path = ctx.update_edges and grad_y is not None  # does y' reach the loss?
            grad_y_new = grad_y.contiguous() if edge_path else grad_x.new_empty(0)
            gx, gy = ext.eggc_bwd(grad_x, grad_y_new, *saved, edge_path)
            if grad_y is not None and not ctx.update_edges:
                gy = gy + grad_y  # y was passed through unchanged
            return gx, gy, None, None, None, None

    return LayerNormSilu, EdgeGatedConv


def fused_copy(model: torch.nn.Module, ext) -> torch.nn.Module:
    """A copy of ``model`` whose eligible modules run through the kernels: the upstream gated
    mean with residuals, and the MLP units. ``model`` itself stays stock."""
    layer_norm_silu, edge_gated_conv = fused_functions(ext)

    def conv_forward(self, x, y, src, dst, update_edges=True):
        return edge_gated_conv.apply(x, y, src, dst, self, update_edges)

    def mlp_forward(self, x):
        norm = self.layer[1]
        return layer_norm_silu.apply(self.layer[0](x), norm.weight, norm.bias, norm.eps)

    fused = copy.deepcopy(model)
    for module in fused.modules():
        if type(module) is EdgeGatedGraphConv and module.residual and not module.gated_sum:
            module.forward = types.MethodType(conv_forward, module)
        elif type(module) is MLPLayer:
            module.forward = types.MethodType(mlp_forward, module)
    return fused


def layer_errors(ext) -> dict[str, float]:
    """Fused vs stock layer on random inputs: max |difference| / max |stock| per output and
    input gradient, with and without the edge update."""
    torch.manual_seed(0)
    n, e, h = 50, 600, 64
    conv = EdgeGatedGraphConv(h, h).eval()
    x = torch.randn(n, h, requires_grad=True)
    y = torch.randn(e, h, requires_grad=True)
    src, dst = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    errors = {}
    for update_edges in (True, False):
        grad_x_new, grad_y_new = torch.randn(n, h), torch.randn(e, h)
        results = []
        for layer in (conv, fused_copy(conv, ext)):
            x_new, y_new = layer(x, y, src, dst, update_edges)
            loss = (x_new * grad_x_new).sum() + (y_new * grad_y_new).sum()
            results.append((x_new.detach(), y_new.detach(), *torch.autograd.grad(loss, [x, y])))
        for name, stock, fused in zip(
            ("x_new", "y_new", "grad_x", "grad_y"), *results, strict=True
        ):
            key = f"{name}, update_edges={update_edges}"
            errors[key] = float((stock - fused).abs().max() / stock.abs().max())
    return errors


def model_errors(model, fused_model, graph) -> dict[str, float]:
    """Forces and stress, stock and fused float32, each against stock float64: the fused ones
    should be no further from it than the stock ones (random weights give small forces, so
    float32 rounding alone is a few percent of them)."""
    graph64 = graph.to(graph.positions.device, torch.float64)
    reference = copy.deepcopy(model).double()(graph64, compute_stress=True)
    errors = {}
    for variant, variant_model in (("stock", model), ("fused", fused_model)):
        output = variant_model(graph, compute_stress=True)
        for key in ("grad", "stresses"):
            diff = (output[key].detach().double() - reference[key]).abs().max()
            errors[f"{key}, {variant} float32"] = float(diff / reference[key].abs().max())
    return errors


def time_case(model, fused_model, graph, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of the stock model and of its fused copy, alternating (the order flips
    every round, so both see the same drift of this shared machine)."""
    models = {"stock": model, "fused": fused_model}
    times: dict[str, list[float]] = {"stock": [], "fused": []}
    for index in range(rounds + 3):  # the first three rounds warm up
        for variant in ("stock", "fused") if index % 2 == 0 else ("fused", "stock"):
            start = time.perf_counter()
            models[variant](graph, compute_stress=True)
            if index >= 3:
                times[variant].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["8", "64", "512", "4096", "8x32"],
                        help="Si cells: atoms (8: one small cell, an MD host's call), or "
                             "atoms x copies for a batch")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=30, help="timed calls per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--build-dir", type=Path, default=Path("bench") / "fused_eggc_build")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="fused_eggc_"))
    ext = build_extension(args.build_dir)
    errors = layer_errors(ext)
    if max(errors.values()) > LAYER_TOLERANCE:
        sys.exit(f"fused layer differs from the stock one ({errors}); timing it would mean nothing")
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": platform.platform(), "torch": torch.__version__,
              "threads": args.threads, "allocator": policy_from_env(),
              "layer_errors": errors, "cases": {}}  # fmt: skip
    for case in args.cases:
        atoms, copies = (int(v) for v in case.split("x")) if "x" in case else (int(case), 1)
        path = silicon_json(work / f"si{atoms}x{copies}.json", atoms, copies=copies)
        (model, _), (graph, _) = ours_worker._inference_setup(path, copies)
        rounds = max(5, args.rounds // 3) if atoms * copies >= 4096 else args.rounds
        fused_model = fused_copy(model, ext)
        times = time_case(model, fused_model, graph, rounds)
        stock, fused = (statistics.median(times[k]) for k in ("stock", "fused"))
        report["cases"][case] = {"errors": model_errors(model, fused_model, graph), "times": times,
                                 "stock_ms": stock * 1e3, "fused_ms": fused * 1e3,
                                 "speedup": stock / fused}  # fmt: skip
        print(f"{case}: stock {stock * 1e3:.2f} ms, fused {fused * 1e3:.2f} ms, "
              f"{stock / fused:.3f}x", flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fused_eggc.json").write_text(json.dumps(report, indent=1))
    (args.out / "fused_eggc.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        "# Fused edge-gated conv kernels (prototype) vs stock, CPU inference",
        "",
        f"{report['date']}; {report['machine']}, torch {report['torch']}, "
        f"{report['threads']} thread(s), ALIGNN_MALLOC={report['allocator']}; "
        "energy + forces + stress, reduced mlearn Cu "
        "architecture, random weights; medians of alternating calls.",
        "",
        "| case | stock, ms | fused, ms | speedup | force error vs float64: stock / fused |",
        "|---|---|---|---|---|",
    ]
    for case, row in report["cases"].items():
        err = row["errors"]
        lines.append(
            f"| Si {case} | {row['stock_ms']:.2f} | {row['fused_ms']:.2f} | "
            f"{row['speedup']:.3f}x | {err['grad, stock float32']:.1e} / "
            f"{err['grad, fused float32']:.1e} |"
        )
    worst = max(report["layer_errors"].values())
    lines += [
        "",
        f"Layer check (fused vs stock, relative to the largest entry): largest {worst:.1e}. "
        "Force errors are relative to the largest float64 force; random weights give forces "
        "of ~1e-6, so float32 rounding alone is several percent of them, stock or fused.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
