"""SNAIL (Mishra et al., 2018): a simple neural attentive meta-learner, which reads the support set as a sequence.

Each query is classified by one pass over a sequence: the N·K support examples, each its embedding followed by its
one-hot label, then the query with a zero label; the output at the last position is the query's N logits. Nothing
adapts at test time: what a task teaches is read by temporal convolutions and causal attention over the sequence.

The head is the paper's Omniglot architecture over the embedding network (conv-4):

    AttentionBlock(64, 32), TCBlock(T, 128), AttentionBlock(256, 128), TCBlock(T, 128), AttentionBlock(512, 256),
    then a linear layer to N logits

where T = N·K + 1 is the training sequence's length, a TCBlock is ⌈log₂ T⌉ dense blocks of causal convolutions of
kernel 2 and dilations 1, 2, 4, ..., each with gated activations (tanh ⊙ sigmoid) and its output concatenated to its
input, and an AttentionBlock(d_k, d_v) appends a causally masked, scaled dot-product read of the sequence. Its
meta-parameters are named "snail.<layer>" beside the embedding network's; all are learned by the query loss.

At test time the support sequence is read in label order, as training presents it, and with eval_relabelings R > 1
under R labellings of the task (class c labelled (c + r) mod N), the class probabilities averaged: causal reading
makes the answer depend on where each class sits, and every labelling is one training could have drawn.

Ways: the output layer has N logits, so a SNAIL learner classifies N-way tasks only (the job's data.episode.ways,
which data.test_episode must share); any number of shots.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metadist.algorithms.base import MetricLearner
from metadist.algorithms.functional import Params, accuracy, over_tasks
from metadist.algorithms.matching import one_hot

PREFIX = "snail."
# (kind, size): attention (d_k, d_v) or a TC block of dense blocks with this many filters; the paper's Omniglot head
ARCHITECTURE: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("attention", (64, 32)), ("tc", (128,)), ("attention", (256, 128)), ("tc", (128,)), ("attention", (512, 256)),
)


class DenseBlock(nn.Module):
    """Causal convolution of kernel 2 at `dilation`, gated (tanh ⊙ sigmoid), its output appended to the features."""

    def __init__(self, channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, 2 * filters, kernel_size=2, dilation=dilation)

    def forward(self, support: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """support [S, C] (positions 0..S−1), queries [Q, C] (each at position S) → [S, C + F], [Q, C + F]."""
        sequence = F.pad(support.t()[None], (self.dilation, 0))  # left padding only: t sees t and t − dilation
        support_out = self.conv(sequence)[0].t()  # [S, 2F]
        position = support.shape[0]
        past = support[position - self.dilation] if position >= self.dilation else torch.zeros_like(support[0])
        weight, bias = self.conv.weight, self.conv.bias  # weight [2F, C, 2]: tap 0 reads t − dilation, tap 1 reads t
        assert bias is not None
        query_out = queries @ weight[:, :, 1].t() + past @ weight[:, :, 0].t() + bias
        return _gated(support, support_out), _gated(queries, query_out)


def _gated(features: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    value, gate = out.chunk(2, dim=-1)
    return torch.cat([features, torch.tanh(value) * torch.sigmoid(gate)], dim=-1)


class AttentionBlock(nn.Module):
    """Causal scaled dot-product attention over the sequence, its read appended to the features."""

    def __init__(self, channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.key_size = key_size
        self.query = nn.Linear(channels, key_size)
        self.key = nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)

    def forward(self, support: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """support [S, C], queries [Q, C] → [S, C + d_v], [Q, C + d_v]: each support position reads the positions up
        to itself; each query reads the whole support set and itself (not the other queries)."""
        scale = math.sqrt(self.key_size)
        keys, values = self.key(support), self.value(support)
        length = support.shape[0]
        future = torch.ones(length, length, dtype=torch.bool, device=support.device).triu(1)
        scores = (self.query(support) @ keys.t() / scale).masked_fill(future, -torch.inf)
        support_read = torch.softmax(scores, dim=-1) @ values
        asked = self.query(queries)
        own = (asked * self.key(queries)).sum(-1, keepdim=True) / scale  # [Q, 1]
        weights = torch.softmax(torch.cat([asked @ keys.t() / scale, own], dim=-1), dim=-1)  # [Q, S + 1]
        query_read = weights[:, :-1] @ values + weights[:, -1:] * self.value(queries)
        return torch.cat([support, support_read], dim=-1), torch.cat([queries, query_read], dim=-1)


class SnailHead(nn.Module):
    """The sequence model over one task: support [S, D + N] (embedding ⊕ label per position) and queries
    [Q, D + N] (embedding ⊕ 0) → logits [Q, N], each query read as the last position after the support set.

    Every layer is causal, so the support positions' features are the same in each query's sequence: they are
    computed once, and each query's position on top of them (the same numbers as Q separate sequences, at the cost
    of S + Q positions instead of Q·(S + 1))."""

    def __init__(self, embedding_size: int, ways: int, length: int) -> None:
        super().__init__()
        channels = embedding_size + ways
        blocks: list[nn.Module] = []
        for kind, size in ARCHITECTURE:
            if kind == "attention":
                blocks.append(AttentionBlock(channels, *size))
                channels += size[1]
            else:
                for level in range(max(1, math.ceil(math.log2(length)))):
                    blocks.append(DenseBlock(channels, size[0], dilation=2**level))
                    channels += size[0]
        self.blocks = nn.ModuleList(blocks)
        self.output = nn.Linear(channels, ways)

    def forward(self, support: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            support, queries = block(support, queries)
        return self.output(queries)


def relabeled_support(support_z: torch.Tensor, support_onehot: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's support sequence as training presents it after relabeling by `shift`: label y becomes
    (y + shift) mod N, and the positions are ordered by the new label (stable: a class's examples keep their order).

    support_z [S, D], support_onehot [S, N] → the same, reordered. Logit j of the relabeled task is class j − shift's."""
    onehot = support_onehot.roll(shift, dims=-1)
    order = onehot.argmax(-1).argsort(stable=True)
    return support_z[order], onehot[order]


class SNAIL(MetricLearner):
    name = "snail"
    extra_prefixes = (PREFIX,)
    needs_episode = True  # its output layer is sized by the episode's ways (metadist.algorithms.registry)
    # Relabelings a test query's probabilities are averaged over (algorithm.eval_relabelings); 1 is off.
    eval_relabelings: int = 1
    config_settings = (*MetricLearner.config_settings, "eval_relabelings")

    def __init__(self, model: torch.nn.Module, kind: str, *, inner_lr: float, inner_steps: int, eval_inner_steps: int,
                 ways: int = 5, shots: int = 1) -> None:
        super().__init__(model, kind, inner_lr=inner_lr, inner_steps=inner_steps, eval_inner_steps=eval_inner_steps)
        if kind != "classification":
            raise ValueError("snail classifies: it has no regression form")
        self.ways_trained = ways
        # Built here, just after the model, so its initial weights depend only on the seed.
        self.head = SnailHead(self.embedding_size(), ways, length=ways * shots + 1)

    def init_meta_params(self) -> Params:
        params = super().init_meta_params()
        like = next(iter(params.values()))
        head = {PREFIX + k: v.detach().clone().to(device=like.device, dtype=like.dtype) for k, v in self.head.named_parameters()}
        return params | head

    # -- one task ----------------------------------------------------------------------------------------------------
    def _embed(self, meta_params: Params, x: torch.Tensor) -> torch.Tensor:
        return self.forward(self.model_params(meta_params), x)

    def _logits(self, meta_params: Params, support_z, support_onehot, query_z) -> torch.Tensor:
        """One task: support [S, D] with labels [S, N], queries [Q, D] → [Q, N], one sequence per query."""
        support = torch.cat([support_z, support_onehot], dim=-1)  # [S, D + N]
        queries = torch.cat([query_z, torch.zeros(query_z.shape[0], support_onehot.shape[-1], dtype=query_z.dtype,
                                                  device=query_z.device)], dim=-1)  # the label is the unknown: 0
        head = {k[len(PREFIX):]: v for k, v in meta_params.items() if k.startswith(PREFIX)}
        return functional_call(self.head, head, (support, queries))

    def _check_ways(self, ways: int) -> None:
        if ways != self.ways_trained:
            raise ValueError(f"snail: this learner was trained on {self.ways_trained}-way tasks (its output layer has "
                             f"{self.ways_trained} logits); these tasks have {ways} classes")

    def _task_loss(self, meta_params: Params, sx, sy, qx, qy, ways: int):
        logits = self._logits(meta_params, self._embed(meta_params, sx), one_hot(sy, ways, sx.dtype), self._embed(meta_params, qx))
        return F.cross_entropy(logits, qy), accuracy(logits, qy)

    # -- the learner -------------------------------------------------------------------------------------------------
    def compute_update(self, meta_params: Params, batch):
        self._check_ways(self.ways(batch.support_y))
        return super().compute_update(meta_params, batch)

    def adapt(self, meta_params: Params, support_x, support_y, steps: int | None = None) -> Params:
        return self._adapted(over_tasks(lambda x: self._embed(meta_params, x))(support_x), support_y)

    def _adapted(self, support_z: torch.Tensor, support_y: torch.Tensor) -> Params:
        ways = self.ways(support_y)
        self._check_ways(ways)
        return {"support_z": support_z, "support_onehot": one_hot(support_y, ways, support_z.dtype)}

    def predict(self, meta_params: Params, adapted: Params, query_x) -> torch.Tensor:
        return self._read(meta_params, adapted, over_tasks(lambda x: self._embed(meta_params, x))(query_x))

    def _read(self, meta_params: Params, adapted: Params, query_z: torch.Tensor) -> torch.Tensor:
        """Each task's query logits [T, Q, N] from its support sequence and query embeddings [T, Q, D]."""
        return over_tasks(lambda z, onehot, q: self._logits(meta_params, z, onehot, q))(
            adapted["support_z"], adapted["support_onehot"], query_z
        )

    # -- evaluation: test-time shifts in the embedding space -----------------------------------------------------
    # The base class would lengthen the support sequence by its shifted copies ((2s + 1)² times N·K examples), which
    # the temporal convolutions were not trained to read; each example's embedding averaged over its copies keeps the
    # sequence the trained one (held out: 93.4% → 94.3% with shift 3, docs/benchmarks.md).
    def adapt_at_test(self, meta_params: Params, support_x, support_y, steps: int | None = None) -> Params:
        embed = lambda x: self._embed(meta_params, x)  # noqa: E731
        return self._adapted(self.embed_at_test(embed, support_x, together=True), support_y)

    def predict_at_test(self, meta_params: Params, adapted: Params, query_x) -> torch.Tensor:
        embed = lambda x: self._embed(meta_params, x)  # noqa: E731
        return self._read_relabeled(meta_params, adapted, self.embed_at_test(embed, query_x, together=False))

    # -- evaluation: relabelings --------------------------------------------------------------------------------
    # Causal reading makes SNAIL's answer depend on where in the sequence, and under which label, each class sits:
    # the first class is read with no context, the last with all of it. Training draws a fresh labelling for every
    # task, so every relabeling of a test task is one it could have been shown; the mean over several removes the
    # part of the answer that comes from the labelling drawn.
    def _read_relabeled(self, meta_params: Params, adapted: Params, query_z: torch.Tensor) -> torch.Tensor:
        """Each task's query logits [T, Q, N] read after its support sequence ordered by label; with eval_relabelings
        R > 1, the log of the class probabilities averaged over R relabelings of the task."""
        logits = []
        for shift in range(self.eval_relabelings):
            support_z, onehot = over_tasks(relabeled_support, in_dims=(0, 0, None))(
                adapted["support_z"], adapted["support_onehot"], shift
            )
            relabeled = self._read(meta_params, {"support_z": support_z, "support_onehot": onehot}, query_z)
            logits.append(relabeled.roll(-shift, dims=-1))  # back to the task's own labels
        if len(logits) == 1:
            return logits[0]
        return torch.stack([torch.softmax(one, dim=-1) for one in logits]).mean(0).log()
