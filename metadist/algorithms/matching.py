"""Matching Networks (Vinyals et al., 2016): classify a query by attention over the labelled support set.

Attention is a softmax over the cosine similarities c between a query's embedding f(x̂) and each support
embedding g(x_i); a class's probability is the attention summed over that class's support examples, and the loss
is the negative log-probability of the true class:

    a(x̂, x_i) = exp c(f(x̂), g(x_i)) / Σ_j exp c(f(x̂), g(x_j)),      P(y = n | x̂) = Σ_{i: y_i = n} a(x̂, x_i)

computed in log space (log P = logsumexp over the class's log-attention), never as the log of a sum that may have
underflowed. `predict` returns these log-probabilities as the logits [T, Q, N]; cross-entropy on them is the NLL.

c is the cosine similarity times a learned scale s, a meta-parameter "matching.scale" initialised to 10. The paper
uses the plain cosine (scale=None here): a softmax over values in [−1, 1] — [0, 1] for post-ReLU embeddings, as
without FCE — stays soft, so the loss can only fall by pushing other classes' embeddings towards orthogonal. On
5-way 1-shot Omniglot (small1 → small2's held-out alphabets; conv-4, 32 filters, 8 tasks a step, Adam 1e-3, one seed)
the plain cosine's held-out accuracy peaked at 72% after 350 steps and fell to 59% by step 1000; the learned scale
reached 80% by step 300 and held it (81% at 1000; 82% with FCE).

Full-context embeddings (fce=True, the paper's appendix). Support: g(x_i) = h→_i + h←_i + g'(x_i), a bidirectional
LSTM over the conv embeddings g' [S, D] in support order, plus the skip connection. Queries: f(x̂) = h_K after K
read steps of an attention LSTM over g, from h_0 = c_0 = 0:

    ĥ_k, c_k = LSTM(f'(x̂), [h_{k−1}, r_{k−1}], c_{k−1}),   h_k = ĥ_k + f'(x̂),   r_k = Σ_i softmax_i(h_k · g(x_i)) g(x_i)

Hidden sizes are D (the model's embedding size) so the skips add up. The LSTMs' weights are meta-parameters named
"fce.*", kept out of the model's forward; the cell is a pure function of tensors so grad and vmap go through it.
"""

from __future__ import annotations

import math
from typing import Self

import torch
import torch.nn.functional as F

from metadist.algorithms.base import MetricLearner
from metadist.algorithms.functional import Params, accuracy, over_tasks

# K, the attention LSTM's read steps over the support set (the paper leaves it open; a handful of reads is the
# usual choice in reimplementations, and each costs one [Q, S] attention — nothing next to the conv net).
FCE_READ_STEPS = 5
FCE_LSTMS = ("support_fw", "support_bw", "query")  # "fce.<lstm>.{w_ih, w_hh, bias}"
# The cosine's initial scale: a softmax over 10·cos ∈ [−10, 10] can approach one-hot, as cross-entropy needs (the
# usual temperature of cosine classifiers); learned from there. None gives the paper's plain cosine.
SCALE_INIT = 10.0


def one_hot(labels: torch.Tensor, ways: int, dtype: torch.dtype) -> torch.Tensor:
    """Labels [...] in [0, N) → [..., N]."""
    return (labels[..., None] == torch.arange(ways, device=labels.device)).to(dtype)


def lstm_cell(w_ih: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """One LSTM step, PyTorch's gate order (i, f, g, o): x [..., I], h [..., H_in], c [..., H] → (h', c') [..., H]."""
    i, f, g, o = (x @ w_ih.T + h @ w_hh.T + bias).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def init_lstm(input_size: int, hidden_size: int, recurrent_size: int) -> Params:
    """nn.LSTM's initialisation, U(−1/√H, 1/√H), drawn from torch's global generator; one bias (not two)."""
    bound = 1.0 / math.sqrt(hidden_size)
    shapes = {"w_ih": (4 * hidden_size, input_size), "w_hh": (4 * hidden_size, recurrent_size), "bias": (4 * hidden_size,)}
    return {name: torch.empty(shape).uniform_(-bound, bound) for name, shape in shapes.items()}


def _lstm(params: Params, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return params[f"fce.{name}.w_ih"], params[f"fce.{name}.w_hh"], params[f"fce.{name}.bias"]


def support_context(params: Params, support_z: torch.Tensor) -> torch.Tensor:
    """g(x_i) = h→_i + h←_i + g'(x_i): the bidirectional LSTM over the support embeddings [S, D] → [S, D]."""

    def run(lstm, sequence: torch.Tensor) -> torch.Tensor:
        h = c = torch.zeros_like(sequence[0])
        states = []
        for x in sequence.unbind(0):
            h, c = lstm_cell(lstm[0], lstm[1], lstm[2], x, h, c)
            states.append(h)
        return torch.stack(states)

    forward = run(_lstm(params, "support_fw"), support_z)
    backward = run(_lstm(params, "support_bw"), support_z.flip(0)).flip(0)
    return forward + backward + support_z


def query_context(params: Params, query_z: torch.Tensor, support_g: torch.Tensor, steps: int) -> torch.Tensor:
    """f(x̂) = h_K, K read steps of the attention LSTM: queries [Q, D] and support g [S, D] → [Q, D]."""
    lstm = _lstm(params, "query")
    h = c = torch.zeros_like(query_z)
    for _ in range(steps):
        read = torch.softmax(h @ support_g.T, dim=-1) @ support_g  # r_{k−1} [Q, D]
        h_hat, c = lstm_cell(*lstm, query_z, torch.cat([h, read], dim=-1), c)
        h = h_hat + query_z
    return h


def attention_log_probs(
    query_z: torch.Tensor, support_z: torch.Tensor, support_onehot: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """log Σ_{i in class n} softmax_i(s·cos(q, s_i)) for queries [Q, D], support [S, D], labels [S, N] → [Q, N]."""
    similarity = F.cosine_similarity(query_z[:, None, :], support_z[None, :, :], dim=-1)  # [Q, S]
    if scale is not None:
        similarity = scale * similarity
    log_attention = torch.log_softmax(similarity, dim=-1)
    in_class = support_onehot.T.bool()  # [N, S]
    masked = torch.where(in_class, log_attention[:, None, :], -math.inf)  # [Q, N, S]
    return torch.logsumexp(masked, dim=-1)


class MatchingNetworks(MetricLearner):
    name = "matching"
    extra_prefixes = ("fce.", "matching.")

    def __init__(self, model: torch.nn.Module, kind: str, *, inner_lr: float, inner_steps: int, eval_inner_steps: int,
                 fce: bool = False, fce_steps: int = FCE_READ_STEPS, scale: float | None = SCALE_INIT) -> None:
        super().__init__(model, kind, inner_lr=inner_lr, inner_steps=inner_steps, eval_inner_steps=eval_inner_steps)
        self.fce = fce
        self.fce_steps = fce_steps
        self.scaled = scale is not None
        self._extra_init: Params = {} if scale is None else {"matching.scale": torch.tensor(float(scale))}
        # Drawn here, just after the model is built, so the initial LSTM weights (like the model's) depend only on the
        # seed, whenever and however often init_meta_params is called.
        if fce:
            size = self.embedding_size()
            recurrent = {"support_fw": size, "support_bw": size, "query": 2 * size}  # the query LSTM reads [h, r]
            for lstm in FCE_LSTMS:
                for k, v in init_lstm(size, size, recurrent[lstm]).items():
                    self._extra_init[f"fce.{lstm}.{k}"] = v

    @classmethod
    def from_config(cls, config, model: torch.nn.Module, kind: str, **settings) -> Self:
        return super().from_config(config, model, kind, fce=config.matching_fce, **settings)

    def init_meta_params(self) -> Params:
        params = super().init_meta_params()
        like = next(iter(params.values()))
        return {**params, **{k: v.to(device=like.device, dtype=like.dtype) for k, v in self._extra_init.items()}}

    # -- one task --------------------------------------------------------------------------------------------
    def _support(self, meta_params: Params, sx: torch.Tensor, sy: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Support embeddings g [S, D] and labels [S, N]."""
        support_z = self.forward(self.model_params(meta_params), sx)
        if self.fce:
            support_z = support_context(meta_params, support_z)
        return support_z, one_hot(sy, ways, support_z.dtype)

    def _log_probs(self, meta_params: Params, support_z: torch.Tensor, support_onehot: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        """log P(y = n | x̂) [Q, N]."""
        query_z = self.forward(self.model_params(meta_params), qx)
        if self.fce:
            query_z = query_context(meta_params, query_z, support_z, self.fce_steps)
        return attention_log_probs(query_z, support_z, support_onehot, meta_params["matching.scale"] if self.scaled else None)

    def _task_loss(self, meta_params: Params, sx, sy, qx, qy, ways: int):
        log_probs = self._log_probs(meta_params, *self._support(meta_params, sx, sy, ways), qx)
        # Cross-entropy on log-probabilities that already normalise is their NLL (log_softmax leaves them as they are).
        return self.loss(log_probs, qy), accuracy(log_probs, qy)

    # -- the learner -----------------------------------------------------------------------------------------

    def adapt(self, meta_params: Params, support_x, support_y, steps: int | None = None) -> Params:
        ways = self.ways(support_y)
        support_z, support_onehot = over_tasks(lambda x, y: self._support(meta_params, x, y, ways))(support_x, support_y)
        return {"support_z": support_z, "support_onehot": support_onehot}

    def predict(self, meta_params: Params, adapted: Params, query_x) -> torch.Tensor:
        return over_tasks(lambda z, y, x: self._log_probs(meta_params, z, y, x))(
            adapted["support_z"], adapted["support_onehot"], query_x
        )
