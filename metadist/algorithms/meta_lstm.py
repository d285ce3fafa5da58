"""The Meta-Learner LSTM (Ravi & Larochelle, 2017): an LSTM, shared by every coordinate, that is the inner loop.

The learner's parameters are the cell state of an LSTM. From c_0 = θ_0 (meta-learned, like MAML's initialisation),
each inner step takes the support loss L_t and its gradient ∇_t at θ_{t−1} = c_{t−1} and sets

    c_t = f_t ⊙ c_{t−1} + i_t ⊙ (−∇_t)
    i_t = σ(w_I · [h_t, θ_{t−1}, i_{t−1}] + b_I)     a learned learning rate per coordinate and step
    f_t = σ(w_F · [h_t, θ_{t−1}, f_{t−1}] + b_F)     a learned shrinkage (1 − f_t: weight decay)

where h_t is the hidden state of a standard LSTM (the paper's first layer, 20 units) over the preprocessed
(∇_t, L_t): Andrychowicz et al.'s (log|x| / p, sign x), p = 10. Every coordinate of every parameter runs the same
two layers with a state of its own. As in the paper, loss and gradient are inputs only: the meta-gradient flows
through the cell-state updates and the gates, not through ∇_t (no Hessian terms).

Start: the input gate at the configured inner_lr (b_I = logit(inner_lr)), the forget gate near 1 (b_F = 5), w_I
and w_F small (±0.01), the first layer as torch's LSTM starts; drawn from a fixed seed, so every process (trainer,
parameter server, task worker) builds the same meta-parameters. The gates are learned for `inner_steps` steps: use
as many at evaluation (`eval_inner_steps`).
"""

from __future__ import annotations

import math

import torch
from torch.func import grad_and_value

from metadist.algorithms.functional import Params, TaskForward
from metadist.algorithms.maml import MAML

PREFIX = "metalstm."
HIDDEN = 20  # units of the first layer (the paper's)
PREPROCESS_P = 10.0
FORGET_BIAS = 5.0  # σ(5) ≈ 0.993: the parameters are kept, not shrunk, at the start
GATE_WEIGHT_INIT = 0.01
INIT_SEED = 0


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """(log|x| / p, sign x) where |x| ≥ e^−p, else (−1, e^p · x): [..., 2]. Gradients span orders of magnitude;
    this gives the LSTM their scale and sign on a bounded range."""
    small = math.exp(-PREPROCESS_P)
    big = x.abs() >= small
    scale = torch.where(big, torch.log(x.abs().clamp_min(small)) / PREPROCESS_P, torch.full_like(x, -1.0))
    sign = torch.where(big, torch.sign(x), x / small)
    return torch.stack([scale, sign], dim=-1)


class MetaLSTM(MAML):
    name = "meta_lstm"
    first_order = False  # the meta-gradient goes through the learned updates (∇_t enters them as a constant)
    extra_prefixes = (PREFIX,)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 < self.inner_lr < 1:
            raise ValueError(f"{type(self).__name__}: inner_lr is the input gate's start, a sigmoid: it must lie in "
                             f"(0, 1), got {self.inner_lr}")

    def init_meta_params(self) -> Params:
        params = super().init_meta_params()
        dtype = next(iter(params.values())).dtype
        generator = torch.Generator().manual_seed(INIT_SEED)

        def uniform(*shape: int, bound: float) -> torch.Tensor:
            return (torch.rand(*shape, generator=generator, dtype=dtype) * 2 - 1) * bound

        lstm_bound = 1 / math.sqrt(HIDDEN)
        return params | {
            PREFIX + "lstm.weight_ih": uniform(4 * HIDDEN, 4, bound=lstm_bound),  # gates i, f, g, o (torch's order)
            PREFIX + "lstm.weight_hh": uniform(4 * HIDDEN, HIDDEN, bound=lstm_bound),
            PREFIX + "lstm.bias": uniform(4 * HIDDEN, bound=lstm_bound),
            PREFIX + "input_gate.weight": uniform(HIDDEN + 2, bound=GATE_WEIGHT_INIT),
            PREFIX + "input_gate.bias": torch.tensor(math.log(self.inner_lr / (1 - self.inner_lr)), dtype=dtype),
            PREFIX + "forget_gate.weight": uniform(HIDDEN + 2, bound=GATE_WEIGHT_INIT),
            PREFIX + "forget_gate.bias": torch.tensor(FORGET_BIAS, dtype=dtype),
        }

    def task_forward(self, tasks: int) -> TaskForward | None:
        return None  # the learned update runs task by task under vmap

    def _adapt_one(self, meta_params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool) -> Params:
        params = self.model_params(meta_params)
        names = list(params)
        sizes = [params[n].numel() for n in names]

        def unflatten(flat: torch.Tensor) -> Params:
            return {n: part.view(params[n].shape) for n, part in zip(names, flat.split(sizes))}

        def support_loss(flat: torch.Tensor) -> torch.Tensor:
            return self.loss(self.forward(unflatten(flat), x), y)

        m = {k[len(PREFIX):]: v for k, v in meta_params.items() if k.startswith(PREFIX)}
        theta = torch.cat([params[n].reshape(-1) for n in names])  # the cell state c, one coordinate per row
        hidden = cell = theta.new_zeros(theta.shape[0], HIDDEN)
        input_gate = forget_gate = torch.zeros_like(theta)
        for _ in range(steps):
            gradient, loss = grad_and_value(support_loss)(theta)
            gradient, loss = gradient.detach(), loss.detach()  # inputs only, as in the paper
            inputs = torch.cat([preprocess(gradient), preprocess(loss).expand(theta.shape[0], 2)], dim=-1)  # [P, 4]
            gates = inputs @ m["lstm.weight_ih"].t() + hidden @ m["lstm.weight_hh"].t() + m["lstm.bias"]
            i, f, g, o = gates.chunk(4, dim=-1)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            hidden = torch.sigmoid(o) * torch.tanh(cell)
            state = theta.unsqueeze(-1)
            input_gate = torch.sigmoid(torch.cat([hidden, state, input_gate.unsqueeze(-1)], -1) @ m["input_gate.weight"]
                                       + m["input_gate.bias"])
            forget_gate = torch.sigmoid(torch.cat([hidden, state, forget_gate.unsqueeze(-1)], -1) @ m["forget_gate.weight"]
                                        + m["forget_gate.bias"])
            theta = forget_gate * theta - input_gate * gradient
        return unflatten(theta)
