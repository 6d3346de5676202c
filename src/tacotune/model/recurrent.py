"""A weight applied at every decoder step, with its gradient computed once for all steps.

Plain autograd computes the weight gradient of `y_t = x_t W^T` at every step t as a
(batch-rows) outer product and adds it into a weight-sized buffer: for the paper-size
decoder that is ~60 MB written per step, ~130 times per training step. Here each
step's backward only stores (x_t, dy_t); the gradient sum_t dy_t^T x_t is one large,
efficient GEMM, done when the backward pass reaches the decoder's initial state
(which every step depends on, so every step has been stored by then).

Same mathematics as F.linear; `tests/test_model.py` compares the gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class RecurrentLinear:
    """`x -> x W^T` for one forward pass; call `anchor` on the initial state first."""

    def __init__(self, weight: Tensor, deferred: bool = True) -> None:
        self.weight = weight  # (out, in), already in the compute dtype
        # False: plain F.linear (autograd adds the weight gradient at every step)
        self.deferred = deferred and torch.is_grad_enabled() and weight.requires_grad
        self.inputs: list[Tensor] = []
        self.output_grads: list[Tensor] = []

    def anchor(self, initial_state: Tensor) -> Tensor:
        """Route `initial_state` through the node that receives the weight gradient."""
        if not self.deferred:
            return initial_state
        result: Tensor = _CollectWeightGrad.apply(initial_state, self.weight, self)
        return result

    def __call__(self, x: Tensor) -> Tensor:
        """(B, in) -> (B, out)"""
        if not self.deferred:
            return F.linear(x, self.weight)
        result: Tensor = _StepLinear.apply(x, self.weight, self)
        return result

    def weight_grad(self) -> Tensor:
        """sum_t dy_t^T x_t over the stored steps, then forget them."""
        if not self.inputs:
            return torch.zeros_like(self.weight)
        grads, inputs = torch.cat(self.output_grads), torch.cat(self.inputs)
        self.inputs, self.output_grads = [], []
        return grads.t().to(self.weight.dtype) @ inputs.to(self.weight.dtype)


class _StepLinear(torch.autograd.Function):
    """y = x W^T whose backward returns dx now and stores what dW needs for later."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, owner: RecurrentLinear) -> Tensor:
        x = x.to(weight.dtype)
        ctx.save_for_backward(x, weight)
        ctx.owner = owner
        return x @ weight.t()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        x, weight = ctx.saved_tensors
        ctx.owner.inputs.append(x)
        ctx.owner.output_grads.append(grad)
        return grad.to(weight.dtype) @ weight, None, None


class _CollectWeightGrad(torch.autograd.Function):
    """Identity on the initial state; its backward runs after every step's and returns dW."""

    @staticmethod
    def forward(ctx: Any, state: Tensor, weight: Tensor, owner: RecurrentLinear) -> Tensor:
        ctx.owner = owner
        return state.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        return grad, ctx.owner.weight_grad(), None
