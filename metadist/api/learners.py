"""Meta-learners over your own `nn.Module`, with plain tensors in: the same functions metadist's trainers and task
workers run, wrapped the way learn2learn users expect.

    >>> import torch, metadist
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> maml = metadist.MAML(net, inner_lr=0.4, inner_steps=1)
    >>> outer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    >>> support_x, support_y = torch.randn(8, 6, 4), torch.arange(3).repeat(2).expand(8, 6)   # 8 tasks, 3-way 2-shot
    >>> query_x, query_y = torch.randn(8, 9, 4), torch.arange(3).repeat(3).expand(8, 9)
    >>> outer.zero_grad()
    >>> step = maml.compute_update(support_x, support_y, query_x, query_y)
    >>> step.backward()            # the mean meta-gradient over the 8 tasks, into .grad of maml's parameters
    >>> outer.step()
    >>> round(step.metrics["loss_after"], 1) > 0
    True
    >>> logits = maml(support_x, support_y, query_x)   # adapt to each support set, classify its queries: [8, 9, 3]

Every tensor leads with the task axis T (one task: `x[None]`); labels are 0..N-1. Classification by default
(`task="regression"`: mean squared error). The meta-parameters are the module's own parameters plus what the
algorithm learns besides (Meta-SGD's per-parameter rates, the Siamese head), all in `parameters()`, so any torch
optimizer, scheduler or DDP wrapper takes them as they are. Nothing here writes into the module: adaptation is a
dict of tensors in and a new dict out (torch.func), so the module stays usable as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metadist.algorithms import LEARNERS, MetaLearner, Update
from metadist.algorithms.functional import Params

TASKS = ("classification", "regression")


@dataclass
class Episodes:
    """T tasks' support and query sets, each tensor leading with the task axis: what a learner's functions take."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]


class MetaStep:
    """One outer step's worth of learning: the update the tasks ask for, and its metrics (means over the tasks)."""

    def __init__(self, update: Update, learner: "Learner") -> None:
        self.update = update
        self._learner = learner
        self.metrics = {k: v / update.num_tasks for k, v in update.metrics.items()}

    @property
    def loss(self) -> float:
        """Mean query loss after adaptation."""
        return self.metrics["loss_after"]

    def backward(self) -> None:
        """Add the mean meta-gradient (for Reptile and model averaging: minus the mean delta, so that a step of the
        optimizer moves the parameters towards the adapted ones) into `.grad` of the learner's parameters; running
        statistics (Reptile's inner Adam moment) are set to the tasks' mean here, once per call."""
        gradient = self.update.as_gradient()
        with torch.no_grad():
            for name, statistic in self._learner.running_statistics().items():
                statistic.sub_(gradient[name].to(statistic.dtype))  # − (− mean delta): the tasks' mean
        for name, parameter in self._learner.named_meta_parameters().items():
            g = gradient[name].to(parameter.dtype)
            parameter.grad = g.clone() if parameter.grad is None else parameter.grad + g


class Learner(nn.Module):
    """A meta-learner over `module`; subclasses name the algorithm (see the module's docstring for a full loop)."""

    algorithm: str = ""

    def __init__(self, module: nn.Module, *, inner_lr: float = 0.4, inner_steps: int = 1,
                 eval_inner_steps: int | None = None, task: str = "classification", **settings) -> None:
        """inner_lr, inner_steps: the inner loop's SGD (ignored by metric learners); eval_inner_steps: steps when
        adapting for `adapt`/`forward` (None: inner_steps); settings: the algorithm's own (e.g. tasks_per_pass)."""
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if inner_steps < 1 or (eval_inner_steps is not None and eval_inner_steps < 0):
            raise ValueError(f"inner_steps must be >= 1 and eval_inner_steps >= 0, got {inner_steps} and {eval_inner_steps}")
        self.module = module
        self.learner: MetaLearner = LEARNERS[self.algorithm](
            module, task, inner_lr=inner_lr, inner_steps=inner_steps,
            eval_inner_steps=inner_steps if eval_inner_steps is None else eval_inner_steps, **settings,
        )
        own = dict(module.named_parameters())
        extra = {k: v for k, v in self.learner.init_meta_params().items() if k not in own}
        running = self.learner.running_prefixes
        is_running = lambda name: bool(running) and name.startswith(running)  # noqa: E731
        # nn.ParameterDict keys cannot hold dots; the learner's names (lr.features.0.weight) are kept beside them.
        self.extra = nn.ParameterDict({_key(k): nn.Parameter(v) for k, v in extra.items() if not is_running(k)})
        self._extra_names = {_key(k): k for k in extra if not is_running(k)}
        # Running statistics (Reptile's inner Adam moment) are buffers, not parameters: no optimizer steps them, and
        # MetaStep.backward sets them to the tasks' mean.
        self._running_names = {f"running_{_key(k)}": k for k in extra if is_running(k)}
        for buffer, name in self._running_names.items():
            self.register_buffer(buffer, extra[name].clone())

    # -- parameters ----------------------------------------------------------------------------------------------
    def named_meta_parameters(self) -> dict[str, nn.Parameter]:
        """The meta-parameters by the learner's names: the module's, then the algorithm's own."""
        return dict(self.module.named_parameters()) | {self._extra_names[k]: p for k, p in self.extra.items()}

    def running_statistics(self) -> dict[str, torch.Tensor]:
        """The algorithm's running statistics by the learner's names (buffers; Reptile's inner Adam moment)."""
        return {name: getattr(self, buffer) for buffer, name in self._running_names.items()}

    def meta_params(self) -> Params:
        """The meta-parameters, and any running statistics, as a dict of detached tensors (what the functional
        learners take)."""
        return {k: p.detach() for k, p in (self.named_meta_parameters() | self.running_statistics()).items()}

    # -- learning ------------------------------------------------------------------------------------------------
    def compute_update(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                       query_y: torch.Tensor) -> MetaStep:
        """Adapt to each task's support set and score its queries; `.backward()` on the result writes the mean
        meta-gradient into the parameters' `.grad`. The same computation as a metadist worker's."""
        episodes = Episodes(support_x, support_y, query_x, query_y)
        return MetaStep(self.learner.compute_update(self.meta_params(), episodes), self)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """Each task's adapted state from its support set (adapted weights, or prototypes for a metric learner)."""
        return self.learner.adapt(self.meta_params(), support_x, support_y, steps)

    def predict(self, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        """Logits [T, Q, N] (or outputs [T, Q, 1]) of each task's queries under its adapted state."""
        return self.learner.predict(self.meta_params(), adapted, query_x)

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                steps: int | None = None) -> torch.Tensor:
        """Adapt to each support set (eval_inner_steps, unless `steps`), then predict its queries."""
        return self.predict(self.adapt(support_x, support_y, steps), query_x)

    def evaluate(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor,
                 steps: int | None = None) -> dict[str, float]:
        """Mean query loss (and accuracy) after adaptation, and before it for learners that adapt weights."""
        metrics = self.learner.evaluate(self.meta_params(), Episodes(support_x, support_y, query_x, query_y), steps)
        return {k: float(v.mean()) for k, v in metrics.items()}


def _key(name: str) -> str:
    return name.replace(".", "__")


class MAML(Learner):
    """MAML (Finn et al., 2017): SGD on each support set, then the exact second-order meta-gradient of the query loss;
    `first_order=True` drops the second derivatives (first-order MAML: the query gradient at the adapted weights)."""

    def __init__(self, module: nn.Module, *, first_order: bool = False, **settings) -> None:
        self.algorithm = "fomaml" if first_order else "maml"
        super().__init__(module, **settings)


class ANIL(Learner):
    """ANIL (Raghu et al., 2020): MAML whose inner loop adapts only the head, named by the module's `HEAD` attribute
    (a tuple of parameter names, as metadist's Conv4 has)."""

    algorithm = "anil"


class MetaSGD(Learner):
    """Meta-SGD (Li et al., 2017): MAML with a learned inner learning rate for every parameter entry."""

    algorithm = "metasgd"


class Reptile(Learner):
    """Reptile (Nichol et al., 2018): move towards each task's adapted weights. `backward()` writes minus the mean
    delta as the gradient, so `torch.optim.SGD(lr=ε)` takes Reptile's step θ ← θ + ε·mean(θ' − θ). The paper's
    inner loop: `Reptile(module, inner_lr=0.001, inner_steps=5, inner_optimizer="adam", inner_batch=10)`."""

    algorithm = "reptile"


class ProtoNet(Learner):
    """Prototypical Networks (Snell et al., 2017): the module embeds ([B, ...] → [B, D]); each class is the mean
    embedding of its support examples, and queries are scored by negative squared distance to them."""

    algorithm = "protonet"
