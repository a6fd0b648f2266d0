"""SiLU and LayerNorm with hand-written second derivatives, for training on forces.

Training on forces differentiates twice: the forces are dE/dr (a backward pass recorded with
``create_graph``), and the loss on them is differentiated again. PyTorch's built-in double
backward of these two operations is generic: SiLU's first derivative is recorded as six
elementwise operations (each differentiated again), and LayerNorm's double backward is a long
chain of elementwise operations. On the line graph (triplets x features, the largest tensors of
the model) that was the largest share of a training step.

Here the first derivative of each is a single custom autograd node that runs PyTorch's own fused
backward kernel (``silu_backward``, ``native_layer_norm_backward``), and that node's own
backward is written out by hand: the forward values and the first derivatives are PyTorch's
kernels, the second derivatives are the same mathematics in fewer, fused-where-possible steps
(float32 results differ from the built-ins only by rounding order). Third derivatives are not
supported (``once_differentiable``); nothing in training needs them.

Custom autograd functions cannot be compiled by TorchScript, so :func:`silu` and
:func:`layer_norm` use them only in eager mode and only when asked (the model asks while
training); evaluation and exported models run the built-ins, and so does LayerNorm on mixed
precision (autocast).
"""

from __future__ import annotations

import torch
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn import functional as F


def silu(x: torch.Tensor, second_order: bool) -> torch.Tensor:
    """``F.silu(x)``; with ``second_order`` (eager only) its double backward is the cheap one."""
    if second_order and not torch.jit.is_scripting():
        return _silu_twice_differentiable(x)
    return F.silu(x)


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, second_order: bool
) -> torch.Tensor:
    """LayerNorm over the last dimension (affine); ``second_order`` as in :func:`silu`."""
    if second_order and not torch.jit.is_scripting():
        return _layer_norm_twice_differentiable(x, weight, bias, eps)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def layer_norm_silu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, second_order: bool
) -> torch.Tensor:
    """``silu(layer_norm(x))``, the normalise-then-activate step of every ALIGNN unit."""
    return silu(layer_norm(x, weight, bias, eps, second_order), second_order)


@torch.jit.unused
def _silu_twice_differentiable(x: torch.Tensor) -> torch.Tensor:
    return _Silu.apply(x)


@torch.jit.unused
def _layer_norm_twice_differentiable(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    if x.dtype != weight.dtype:
        # Mixed precision (autocast: bf16 activations, float32 parameters) has its own rules for
        # layer_norm (CUDA runs it in float32), which a custom function would bypass.
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return _LayerNorm.apply(x, weight, bias, eps)


class _Silu(torch.autograd.Function):
    """y = x sigmoid(x); its backward is the node :class:`_SiluGrad`."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.silu(x)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return _SiluGrad.apply(grad, x)


class _SiluGrad(torch.autograd.Function):
    """grad * silu'(x) in one kernel; backward: d/dgrad = gg silu'(x), d/dx = gg grad silu''(x)
    with silu''(x) = s (1 - s) (2 + x (1 - 2 s)), s = sigmoid(x)."""

    @staticmethod
    def forward(ctx: FunctionCtx, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grad, x)
        return torch.ops.aten.silu_backward(grad, x)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, gg: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        grad, x = ctx.saved_tensors
        d_grad = torch.ops.aten.silu_backward(gg, x) if ctx.needs_input_grad[0] else None
        d_x = None
        if ctx.needs_input_grad[1]:
            s = torch.sigmoid(x)
            curvature = s.mul(-2.0).add_(1.0).mul_(x).add_(2.0)  # 2 + x (1 - 2 s)
            curvature.mul_(s).mul_(s.neg_().add_(1.0))  # s (1 - s) (2 + x (1 - 2 s))
            d_x = curvature.mul_(gg).mul_(grad)
        return d_grad, d_x


class _LayerNorm(torch.autograd.Function):
    """PyTorch's fused LayerNorm; its backward is the node :class:`_LayerNormGrad`."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> torch.Tensor:
        out, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return out

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        grad_x, grad_w, grad_b = _LayerNormGrad.apply(grad, x, weight, bias, mean, rstd)
        return grad_x, grad_w, grad_b, None


def _normalizer_transpose(
    u: torch.Tensor, xhat: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(J u, mean(u xhat)) per row, J = d xhat / dx = rstd (I - 1/H - xhat xhat^T / H)
    (symmetric): the map LayerNorm's backward applies to (grad * weight)."""
    mean_ux = (u * xhat).mean(-1, keepdim=True)
    j_u = (u - u.mean(-1, keepdim=True)).addcmul_(xhat, mean_ux, value=-1.0).mul_(rstd)
    return j_u, mean_ux


class _LayerNormGrad(torch.autograd.Function):
    """First derivatives of LayerNorm (gx = J (g w), gw = sum g xhat, gb = sum g over rows) in
    PyTorch's fused kernel, with their derivatives written out in :meth:`backward`.

    ``mean`` and ``rstd`` come from the forward pass and are treated as functions of ``x``
    analytically (d rstd / dx = -rstd^2 xhat / H), so they take no gradient themselves.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        grad: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        rstd: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad, x, weight, mean, rstd)
        return torch.ops.aten.native_layer_norm_backward(
            grad, x, (x.shape[-1],), mean, rstd, weight, bias, (True, True, True)
        )

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx,
        gg_x: torch.Tensor | None,
        gg_w: torch.Tensor | None,
        gg_b: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None, None, None]:
        """With A = gg_x, Bw = gg_w, Bb = gg_b and g = grad * weight:
        d/dgrad = weight (J A) + Bw xhat + Bb,  d/dweight = sum_rows grad (J A),
        d/dx = J (Bw grad - rstd m A) - rstd / H (xhat <A, gx> + gx <A, xhat>),
        m = mean(g xhat) per row, gx = J g (derived from gx = J g with J's dependence on x).
        """
        grad, x, weight, mean, rstd = ctx.saved_tensors
        features = x.shape[-1]
        xhat = (x - mean).mul_(rstd)
        d_grad: torch.Tensor | None = None
        d_x: torch.Tensor | None = None
        d_w: torch.Tensor | None = None
        if gg_x is not None:
            j_a, mean_a_xhat = _normalizer_transpose(gg_x, xhat, rstd)  # J A
            d_grad = j_a * weight
            d_w = (grad * j_a).reshape(-1, features).sum(0)
            grad_x = torch.ops.aten.native_layer_norm_backward(
                grad, x, (features,), mean, rstd, weight, None, (True, False, False)
            )[0]
            m = ((grad * xhat) @ weight).unsqueeze(-1) / features  # mean(g xhat), [rows, 1]
            a_gx = (gg_x * grad_x).sum(-1, keepdim=True)
            d_x = (xhat * a_gx).addcmul_(grad_x, mean_a_xhat * features)
            d_x.mul_(rstd / -features).addcmul_(j_a, rstd * m, value=-1.0)
        if gg_w is not None:
            d_grad = gg_w * xhat if d_grad is None else d_grad.addcmul_(gg_w, xhat)
            j_w = _normalizer_transpose(gg_w * grad, xhat, rstd)[0]
            d_x = j_w if d_x is None else d_x.add_(j_w)
        if gg_b is not None:
            d_grad = gg_b.expand_as(grad).clone() if d_grad is None else d_grad.add_(gg_b)
        return d_grad, d_x, d_w, None, None, None
