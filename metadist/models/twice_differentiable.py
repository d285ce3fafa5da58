"""Twice-differentiable grouped convolution and batch norm: what lets `Conv4.forward_tasks` run MAML's second order.

Each op is a pair of autograd Functions: the op, whose backward calls the second Function (so that with
create_graph=True the backward pass is recorded), and that backward, whose own backward is written out here.
Third derivatives are never taken (MAML's meta-gradient differentiates the inner backward pass once), so the
second Functions' backward passes need not be differentiable themselves. tests/test_forward_tasks.py checks both
with gradgradcheck; tests/test_gpu.py on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class GroupedConv2d(torch.autograd.Function):
    """F.conv2d(x, weight, bias, stride, padding, groups=groups)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (tuple(stride), tuple(padding), groups)
        ctx.set_materialize_grads(False)
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad_y):
        if grad_y is None:
            return None, None, None, None, None, None
        x, weight = ctx.saved_tensors
        grad_x, grad_w, grad_b = GroupedConv2dBackward.apply(grad_y, x, weight, ctx.geometry, ctx.needs_input_grad[:3])
        return grad_x, grad_w, grad_b, None, None, None


class GroupedConv2dBackward(torch.autograd.Function):
    """(∂/∂x, ∂/∂weight, ∂/∂bias) of ⟨grad_y, conv(x, weight) + bias⟩, for the parts asked for in `needs`."""

    @staticmethod
    def forward(ctx, grad_y, x, weight, geometry, needs):
        stride, padding, groups = geometry
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_y, x, weight, None, stride, padding, (1, 1), False, (0, 0), groups, [needs[0], needs[1], False]
        )
        grad_b = grad_y.sum(dim=(0, 2, 3)) if needs[2] else None
        ctx.save_for_backward(grad_y, x, weight)
        ctx.geometry = geometry
        ctx.set_materialize_grads(False)  # an output nothing depends on gets None, not a tensor of zeros
        return grad_x, grad_w, grad_b

    @staticmethod
    def backward(ctx, gg_x, gg_w, gg_b):
        # The backward is linear in grad_y, x and weight separately: with Λ = ⟨gg_x, grad_x⟩ + ⟨gg_w, grad_w⟩ +
        # ⟨gg_b, grad_b⟩ = ⟨grad_y, conv(gg_x, weight) + conv(x, gg_w) + gg_b⟩,
        #   ∂Λ/∂grad_y = conv(gg_x, weight) + conv(x, gg_w) + gg_b,
        #   ∂Λ/∂weight = the weight gradient of conv(gg_x, ·) against grad_y,
        #   ∂Λ/∂x      = the input gradient of conv(·, gg_w) against grad_y.
        grad_y, x, weight = ctx.saved_tensors
        stride, padding, groups = ctx.geometry
        need_gy, need_x, need_w = ctx.needs_input_grad[:3]
        d_grad_y = d_x = d_w = None
        if need_gy:
            terms = []
            if gg_x is not None:
                terms.append(F.conv2d(gg_x, weight, None, stride, padding, 1, groups))
            if gg_w is not None:
                terms.append(F.conv2d(x, gg_w, None, stride, padding, 1, groups))
            if gg_b is not None:
                terms.append(gg_b.view(1, -1, 1, 1).expand_as(grad_y))
            d_grad_y = sum(terms[1:], terms[0]) if terms else None
        if need_x and gg_w is not None:
            d_x = torch.ops.aten.convolution_backward(
                grad_y, x, gg_w, None, stride, padding, (1, 1), False, (0, 0), groups, [True, False, False]
            )[0]
        if need_w and gg_x is not None:
            d_w = torch.ops.aten.convolution_backward(
                grad_y, gg_x, weight, None, stride, padding, (1, 1), False, (0, 0), groups, [False, True, False]
            )[1]
        return d_grad_y, d_x, d_w, None, None


class BatchNorm(torch.autograd.Function):
    """F.batch_norm(x, None, None, weight, bias, training=True, eps=eps): batch statistics per channel."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        if grad_y is None:
            return None, None, None, None
        x, weight, mean, rstd = ctx.saved_tensors
        grad_x, grad_w, grad_b = BatchNormBackward.apply(grad_y, x, weight, mean, rstd, ctx.eps)
        return grad_x, grad_w, grad_b, None


class BatchNormBackward(torch.autograd.Function):
    """Batch norm's (grad_x, grad_weight, grad_bias) from grad_y; mean and rstd are x's, so not inputs of their own.

    Per channel, over its n values: x̂ = (x − μ)·r, r = (σ² + ε)^−½, y = γ·x̂ + β, and with g = grad_y,
        grad_x = γ·r·P(g),  P(g) = g − ⟨g⟩ − x̂·⟨g·x̂⟩  (⟨·⟩ the mean over the n values),
        grad_γ = n·⟨g·x̂⟩,  grad_β = n·⟨g⟩.
    """

    @staticmethod
    def forward(ctx, grad_y, x, weight, mean, rstd, eps):
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, None, None, mean, rstd, True, eps, [True, True, True]
        )
        ctx.save_for_backward(grad_y, x, weight, mean, rstd, grad_w, grad_b)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return grad_x, grad_w, grad_b

    @staticmethod
    def backward(ctx, u, c_w, c_b):
        # Upstream: u = ∂Λ/∂grad_x (full size), c_w = ∂Λ/∂grad_γ, c_b = ∂Λ/∂grad_β (per channel). With
        # B = ⟨u·x̂⟩, C = ⟨g·x̂⟩, A = ⟨u·g⟩ − ⟨u⟩⟨g⟩, using ∂⟨w·x̂⟩/∂x = (r/n)·P(w) and ∂r/∂x = −r²·x̂/n:
        #   ∂Λ/∂g = γr·P(u) + c_w·x̂ + c_b                       (P is symmetric)
        #   ∂Λ/∂γ = n·r·(A − B·C)
        #   ∂Λ/∂x = −γr²(A − BC)·x̂ − γr²C·P(u) − (γr²B − c_w·r)·P(g)
        # Each full-size result is written as a·u + b·g + k·(x − μ) + const with per-channel a, b, k, const, so
        # that it costs two or three passes over memory instead of one per term. (x − μ, not x: r·x − r·μ would
        # cancel catastrophically in float32 where a channel's mean is large against its spread.)
        grad_y, x, weight, mean, rstd, grad_w, grad_b = ctx.saved_tensors
        need_gy, need_x, need_w = ctx.needs_input_grad[:3]
        n = x.numel() // x.shape[1]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        channel = lambda t: t.view(shape)  # noqa: E731
        r = channel(rstd)
        gamma = channel(weight)
        g_mean, C = channel(grad_b) / n, channel(grad_w) / n
        c_w = channel(c_w) if c_w is not None else torch.zeros_like(r)
        c_b = channel(c_b) if c_b is not None else torch.zeros_like(r)
        if u is not None:
            u_mean, B, A = (channel(t) / n for t in _channel_sums(u, x, mean, rstd, grad_y, ctx.eps))
            A = A - u_mean * g_mean
        else:
            u_mean = B = A = torch.zeros_like(r)
        d_grad_y = d_x = d_w = None
        centred = x - channel(mean) if need_gy or need_x else None  # x̂ = r·centred
        if need_gy:
            # γr·(u − ⟨u⟩ − x̂B) + c_w·x̂ + c_b
            k = (c_w - gamma * r * B) * r
            const = c_b - gamma * r * u_mean
            d_grad_y = (torch.addcmul(const, u, gamma * r) if u is not None else const.expand_as(x)).addcmul(centred, k)
        if need_x:
            # α·x̂ + β·P(u) + κ·P(g), expanded
            alpha = -gamma * r * r * (A - B * C)
            beta = -gamma * r * r * C
            kappa = -(gamma * r * r * B - c_w * r)
            const = -beta * u_mean - kappa * g_mean
            d_x = torch.addcmul(const, grad_y, kappa).addcmul_(centred, (alpha - beta * B - kappa * C) * r)
            if u is not None:
                d_x.addcmul_(u, beta)
        if need_w and u is not None:
            d_w = (n * r * (A - B * C)).view(-1)
        return d_grad_y, d_x, d_w, None, None, None


def _channel_sums(u, x, mean, rstd, grad_y, eps):
    """Per channel: Σu, Σu·x̂ and Σu·grad_y, in two fused passes.

    native_batch_norm_backward(u, x, ...) returns exactly (Σu·x̂, Σu) as its weight and bias gradients; fed grad_y
    as its "input" with mean 0 and rstd 1, its weight gradient is Σu·grad_y. Those two gradients do not depend on
    the weight, but the weight is passed (ones) all the same: the CUDA kernel fails on an absent one ("tensor does
    not have a device", PyTorch 2.11), where the CPU kernel accepts it.
    """
    zeros, ones = torch.zeros_like(mean), torch.ones_like(rstd)
    _, sum_ux, sum_u = torch.ops.aten.native_batch_norm_backward(u, x, ones, None, None, mean, rstd, True, eps, [False, True, True])
    _, sum_ug, _ = torch.ops.aten.native_batch_norm_backward(u, grad_y, ones, None, None, zeros, ones, True, eps, [False, True, False])
    return sum_u, sum_ux, sum_ug
