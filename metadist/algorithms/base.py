"""The interface every learner implements, and what a worker sends to the parameter server.

A learner is configuration plus pure functions of (meta-parameters, batch of episodes). It holds no
parameters and no optimizer: those live in one place (the local trainer's loop or the parameter server).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import torch
from torch.func import grad_and_value

from metadist.algorithms.functional import Forward, Params, accuracy, make_forward, over_tasks, task_loss
from metadist.data.sampler import shift_examples

if TYPE_CHECKING:
    from metadist.config import AlgorithmConfig


@contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """`model` in eval mode for the block (training-only layers such as DropBlock off), then back as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class Update:
    """One worker's contribution to an outer step, summed (not averaged) over its tasks so updates add up.

    kind "gradient": the outer optimizer descends along tensors / num_tasks.
    kind "delta":    the meta-parameters move towards θ + tensors / num_tasks (Reptile); the optimizer is
                     handed −delta as its gradient.
    metrics: sums over tasks too (divide by num_tasks for the mean).
    """

    kind: str
    tensors: Params
    num_tasks: int
    metrics: dict[str, float] = field(default_factory=dict)

    def __add__(self, other: "Update") -> "Update":
        if other.kind != self.kind:
            raise ValueError(f"cannot add a {other.kind!r} update to a {self.kind!r} one")
        return Update(
            kind=self.kind,
            tensors={k: v + other.tensors[k] for k, v in self.tensors.items()},
            num_tasks=self.num_tasks + other.num_tasks,
            metrics={k: v + other.metrics.get(k, 0.0) for k, v in self.metrics.items()},
        )

    def as_gradient(self) -> Params:
        """The mean pseudo-gradient the outer optimizer applies."""
        sign = 1.0 if self.kind == "gradient" else -1.0
        return {k: sign * v / self.num_tasks for k, v in self.tensors.items()}


class MetaLearner(ABC):
    """A meta-learning algorithm over a model template. Subclasses implement `compute_update`, `adapt`, `predict`.

    All methods take a batch of T tasks (leading dimension) and map over it with vmap; none mutates its inputs.
    """

    name: str = ""
    adapts_weights: bool = True  # False for the metric learners, which have no "before adaptation"
    # Name prefixes of meta-parameters that belong to the algorithm, not the model (Meta-SGD's rates, Matching
    # Networks' LSTMs, the Siamese head): model_params leaves them out of every forward pass.
    extra_prefixes: tuple[str, ...] = ()
    # Prefixes (among extra_prefixes) of entries that are running statistics rather than learned parameters: the outer
    # step sets them to the mean the tasks report, with no optimizer (Reptile's inner Adam second moment).
    running_prefixes: tuple[str, ...] = ()
    # Test-time augmentation (algorithm.eval_shift): adapt_at_test and predict_at_test also see every example moved by
    # each offset within ±eval_shift pixels. Set by from_config; 0 is off.
    eval_shift: int = 0
    # The AlgorithmConfig fields from_config copies onto the learner as attributes of the same name.
    config_settings: tuple[str, ...] = ("eval_shift",)

    def __init__(self, model: torch.nn.Module, kind: str, *, inner_lr: float, inner_steps: int, eval_inner_steps: int) -> None:
        self.model = model
        self.kind = kind
        self.loss = task_loss(kind)
        self.forward: Forward = make_forward(model)
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps

    @classmethod
    def from_config(cls, config: "AlgorithmConfig", model: torch.nn.Module, kind: str, **settings) -> Self:
        """The learner the configuration describes; a learner with settings of its own adds them as `settings`."""
        learner = cls(
            model, kind, inner_lr=config.inner_lr, inner_steps=config.inner_steps, eval_inner_steps=config.eval_inner_steps,
            **settings,
        )
        for name in cls.config_settings:
            setattr(learner, name, getattr(config, name))
        return learner

    # -- parameters ------------------------------------------------------------------------------------------
    def init_meta_params(self) -> Params:
        """The meta-parameters to learn: the model's, plus anything the algorithm learns besides (Meta-SGD)."""
        return {name: p.detach().clone() for name, p in self.model.named_parameters()}

    def embedding_size(self) -> int:
        """D of the embeddings an embed-only model returns (Conv4(ways=None)); metric learners size their heads by it."""
        size = getattr(self.model, "embedding_dim", None)
        if size is None or getattr(self.model, "head", None) is not None:
            raise ValueError(
                f"{self.name}: the model must embed only and state its `embedding_dim` (e.g. Conv4(ways=None)); "
                f"{type(self.model).__name__} does not"
            )
        return size

    def model_params(self, meta_params: Params) -> Params:
        """The subset of meta_params that the model's forward takes (all but the `extra_prefixes` ones)."""
        return {k: v for k, v in meta_params.items() if not k.startswith(self.extra_prefixes)}

    def task_start(self, meta_params: Params) -> Params:
        """The model parameters every task starts from, before adaptation: model_params, unless the learner resets
        some (the MAML family's zero head)."""
        return self.model_params(meta_params)

    # -- learning --------------------------------------------------------------------------------------------
    @abstractmethod
    def compute_update(self, meta_params: Params, batch) -> Update:
        """The update this batch of tasks asks for, with its metrics."""

    @abstractmethod
    def adapt(self, meta_params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """Task-specific state from each task's support set: [T, ...] tensors (adapted weights, prototypes ...)."""

    @abstractmethod
    def predict(self, meta_params: Params, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        """Logits [T, Q, N] (or regression outputs [T, Q, 1]) for each task's queries."""

    # -- evaluation ------------------------------------------------------------------------------------------
    def adapt_at_test(self, meta_params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                      steps: int | None = None) -> Params:
        """`adapt` as evaluation and serving use it: with eval_shift = s, on the support set and each example's copies
        moved by every offset in [−s, s]² (zero fill), (2s + 1)² times as many examples."""
        if not self.eval_shift:
            return self.adapt(meta_params, support_x, support_y, steps)
        x = copies_as_examples(support_x, self.eval_shift)
        return self.adapt(meta_params, x, support_y.repeat(1, x.shape[1] // support_x.shape[1]), steps)

    def predict_at_test(self, meta_params: Params, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        """`predict` as evaluation and serving use it: with eval_shift, the mean of the outputs for each query's
        shifted copies (for a linear head or ProtoNet's distances, the prediction of the mean embedding)."""
        if not self.eval_shift:
            return self.predict(meta_params, adapted, query_x)
        outputs = [self.predict(meta_params, adapted, copy) for copy in shifted_copies(query_x, self.eval_shift)]
        return torch.stack(outputs).mean(0)

    def evaluate(self, meta_params: Params, batch, steps: int | None = None) -> dict[str, torch.Tensor]:
        """Per-task query loss (and accuracy) after adaptation, and before it for weight-adapting learners: [T]."""
        # torch.func.grad ignores an outer no_grad, so inner loops still adapt; nothing else builds a graph. Eval mode
        # switches training-only regularisers (DropBlock) off; batch norm is transductive either way.
        with torch.no_grad(), evaluation_mode(self.model):
            adapted = self.adapt_at_test(meta_params, batch.support_x, batch.support_y, steps)
            out = self.predict_at_test(meta_params, adapted, batch.query_x)
            metrics = self.per_task_metrics(out, batch.query_y, "after")
            if self.adapts_weights:
                before = self.outputs_before_adaptation(meta_params, batch)
                metrics.update(self.per_task_metrics(before, batch.query_y, "before"))
        return metrics

    def before_adaptation_sums(self, meta_params: Params, batch) -> dict[str, float]:
        """Query loss (and accuracy) of the meta-parameters themselves, no adaptation, summed over the batch's tasks:
        the 'before' curve. Sums, like Update.metrics, so the figures of several workers' slices add up; {} for a
        learner that adapts no weights."""
        if not self.adapts_weights:
            return {}
        with torch.no_grad():
            out = self.outputs_before_adaptation(meta_params, batch)
            metrics = self.per_task_metrics(out, batch.query_y, "before")
        return {k: float(v.sum()) for k, v in metrics.items()}

    def outputs_before_adaptation(self, meta_params: Params, batch) -> torch.Tensor:
        """Each task's query outputs [T, Q, ...] from the parameters it starts its inner loop from."""
        return over_tasks(self.forward, in_dims=(None, 0))(self.task_start(meta_params), batch.query_x)

    def per_task_metrics(self, out: torch.Tensor, y: torch.Tensor, when: str) -> dict[str, torch.Tensor]:
        """Query loss (and accuracy, for classification) of each task's outputs [T, Q, ...]: 'loss_<when>' [T] ..."""
        losses = over_tasks(self.loss)(out, y)
        metrics = {f"loss_{when}": losses}
        if self.kind == "classification":
            metrics[f"accuracy_{when}"] = over_tasks(accuracy)(out, y)
        return metrics


def task_slice(batch, start: int, stop: int):
    """Tasks [start, stop) of a batch: every tensor field with a task axis sliced, the rest kept."""
    return type(batch)(**{k: (v[start:stop] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in vars(batch).items()})


def in_passes(compute: Callable[[Params, Any], Update], meta_params: Params, batch, size: int | None) -> Update:
    """compute(meta_params, batch) over at most `size` tasks at a time (None: all at once), the parts summed: the same
    update up to float rounding, with the memory of `size` tasks."""
    if size is None or len(batch) <= size:
        return compute(meta_params, batch)
    parts = [compute(meta_params, task_slice(batch, start, start + size)) for start in range(0, len(batch), size)]
    return sum(parts[1:], parts[0])


class MetricLearner(MetaLearner):
    """A learner that classifies by comparing embeddings (ProtoNet, Matching, Siamese, SNAIL): no weights adapt, so
    there is no inner loop and no before-adaptation score. A subclass states one task's loss and accuracy
    (`_task_loss`); the update is its gradient, vmapped over the tasks and summed.

    tasks_per_pass (`algorithm.tasks_per_pass`): at most this many tasks are differentiated together and the parts
    summed; None, the whole batch. Memory grows with it: four 5-way 15-query tasks of 84-pixel images through a
    ResNet-12 hold more activations than a 24 GB machine has."""

    adapts_weights = False
    tasks_per_pass: int | None = None
    config_settings = (*MetaLearner.config_settings, "tasks_per_pass")

    @staticmethod
    def ways(support_y: torch.Tensor) -> int:
        """N of an episode whose labels are 0..N-1."""
        return int(support_y.max()) + 1

    @abstractmethod
    def _task_loss(self, meta_params: Params, sx, sy, qx, qy, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's query loss and accuracy (scalars) from its support (sx, sy) and queries (qx, qy)."""

    def compute_update(self, meta_params: Params, batch) -> Update:
        return in_passes(self._compute_update, meta_params, batch, self.tasks_per_pass)

    def embed_at_test(self, embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, together: bool) -> torch.Tensor:
        """Each task's examples [T, M, ...] embedded by `embed` (one task's [M, ...] → [M, D]): [T, M, D]. With
        eval_shift, an example's embedding is the mean of its shifted copies' (test-time augmentation in the
        embedding space, for learners that compare or read embeddings rather than adapt weights), the copies embedded
        all as one batch (`together`: a support set, as the base class adapts on it) or each copy of the set as its own
        batch (queries, as predict_at_test sees them)."""
        if not self.eval_shift:
            return over_tasks(embed)(x)
        if together:
            z = over_tasks(embed)(copies_as_examples(x, self.eval_shift))
            return z.reshape(x.shape[0], -1, x.shape[1], z.shape[-1]).mean(1)
        return torch.stack([over_tasks(embed)(copy) for copy in shifted_copies(x, self.eval_shift)]).mean(0)

    def _compute_update(self, meta_params: Params, batch) -> Update:
        ways = self.ways(batch.support_y)
        if len(batch) == 1:
            return self._one_task_update(meta_params, batch, ways)
        step = grad_and_value(lambda p, sx, sy, qx, qy: self._task_loss(p, sx, sy, qx, qy, ways), has_aux=True)
        grads, (losses, acc) = over_tasks(step, in_dims=(None, 0, 0, 0, 0))(
            meta_params, batch.support_x, batch.support_y, batch.query_x, batch.query_y
        )
        metrics = {"loss_after": float(losses.sum()), "accuracy_after": float(acc.sum())}
        return Update("gradient", {k: g.sum(0) for k, g in grads.items()}, len(losses), metrics)

    def _one_task_update(self, meta_params: Params, batch, ways: int) -> Update:
        """A pass of one task by plain autograd: nothing to batch, and no graph of the backward pass kept (see
        functional.one_task_forward); the same gradient as the vmapped route."""
        with torch.enable_grad():
            wrt = {k: v.detach().requires_grad_() for k, v in meta_params.items()}
            loss, acc = self._task_loss(wrt, batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0], ways)
            grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
        tensors = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(meta_params.items(), grads)}
        return Update("gradient", tensors, 1, {"loss_after": float(loss.detach()), "accuracy_after": float(acc)})


def shifted_copies(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Images [T, M, C, H, W] moved by every offset (dy, dx) in [−shift, shift]² (zero fill): [(2·shift + 1)², T, M, ...],
    the unshifted copy at the centre of the grid."""
    tasks, m = x.shape[:2]
    flat = x.reshape(tasks * m, *x.shape[2:])
    offsets = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]
    return torch.stack([
        shift_examples(flat, torch.tensor([offset], device=x.device).expand(len(flat), 2), shift).reshape(x.shape)
        for offset in offsets
    ])


def copies_as_examples(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Each task's images [T, M, ...] and all their shifted copies as one set of examples: [T, n·M, ...] (n = (2·shift +
    1)²), copy c of example m at c·M + m, so labels repeat as `y.repeat(1, n)`."""
    copies = shifted_copies(x, shift)  # [n, T, M, C, H, W]
    n, tasks, m = copies.shape[:3]
    return copies.transpose(0, 1).reshape(tasks, n * m, *copies.shape[3:])
