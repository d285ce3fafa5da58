"""Reptile (Nichol et al., 2018): move the initialisation towards task-adapted weights.

Per task: θ' = k inner steps on the support set from θ; the update is the delta θ' − θ, and the outer step moves
θ along the mean delta (an optimizer sees −delta as its gradient). No second derivatives, no query gradient.

The inner loop is the paper's: SGD, or Adam with β1 = 0, each step on the next minibatch of the support set
(`algorithm.inner_batch`, every class in each batch). Reptile's Omniglot recipe trains on 10-shot episodes in
minibatches of 10, so 5 inner steps pass over each example once, with Adam at 0.001, and tests 1-shot after 50
steps. Full-batch SGD on a 1-shot support set, 5 examples seen 5 times, learns far less: 43.0% after 5,000 outer
steps on the development protocol, against 85.1% with the recipe from a random network (docs/benchmarks.md; the
paper's 95-98% take 100,000 steps on all of Omniglot's background alphabets). The job files
(jobs/omniglot-5way-1shot-reptile.yaml) add pre-training and a prototype head (below): 93.5% after 2,000 steps.

Adam's second moment is carried from task to task, as in the paper's code (one TensorFlow Adam whose slots are not
reset between tasks): a fresh moment per task makes the first step a sign step of size lr for every coordinate, the
near-zero ones included, and learned 8-10 points less over the first 500 outer steps here (61% against 69% at 250,
65% against 74% at 500, 100 held-out episodes each). So that every task of a step
still sees the same state whichever worker runs it, the moment (`inner_adam.v.*`) and its step count
(`inner_adam.t`) live beside the meta-parameters as running statistics: tasks start from them, report their final
moment, and the outer step sets the state to the tasks' mean (MetaOptimizer's running entries). Evaluation starts
from the trained moment, as the paper's does.

With `algorithm.prototype_head` each task's inner loop starts from the head made of its support set's prototypes
(as Proto-MAML's does, metadist.algorithms.maml): the head's meta-parameters are then never a start, their delta is
zero, and the body moves towards weights that adapt well from a prototype head. `algorithm.prototype_shots` makes
that head, while meta-training, of the first few shots of each class only (as many as a test task has): with the
recipe's 10 training shots, a head made of all ten already fits the examples the inner steps train on (a pre-trained
body learned nothing more: 91.1% held out after 500 steps), while one made of a single shot leaves the other nine to
be pulled towards it, the 1-shot test's situation (93.2% after 500 steps, 94.3% after 2,000; 200 episodes each,
docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Self

import torch

from metadist.algorithms.base import Update
from metadist.algorithms.functional import Params, interleave_classes, minibatch_adapt, over_tasks
from metadist.algorithms.maml import MAML

ADAM_STATE = "inner_adam."
MOMENT = ADAM_STATE + "v."  # + the parameter's name: the running mean of its squared inner gradients
MOMENT_STEPS = ADAM_STATE + "t"  # inner steps the moment has seen (Adam's bias correction)


class Reptile(MAML):
    name = "reptile"
    first_order = True

    def __init__(self, *args, inner_optimizer: str = "sgd", inner_batch: int | None = None,
                 prototype_shots: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if prototype_shots is not None and (prototype_shots < 1 or not self.prototype_head):
            raise ValueError(f"{type(self).__name__}: prototype_shots must be >= 1 and needs prototype_head, got "
                             f"{prototype_shots} (prototype_head={self.prototype_head})")
        self.prototype_shots = prototype_shots
        if inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"{type(self).__name__}: inner_optimizer must be 'sgd' or 'adam', got {inner_optimizer!r}")
        if inner_batch is not None and inner_batch < 1:
            raise ValueError(f"{type(self).__name__}: inner_batch must be >= 1 or None, got {inner_batch}")
        self.inner_optimizer = inner_optimizer
        self.inner_batch = inner_batch
        if inner_optimizer == "adam":
            self.extra_prefixes = self.running_prefixes = (ADAM_STATE,)

    @classmethod
    def from_config(cls, config, model: torch.nn.Module, kind: str, **settings) -> Self:
        return super().from_config(config, model, kind, inner_optimizer=config.inner_optimizer,
                                   inner_batch=config.inner_batch, prototype_shots=config.prototype_shots, **settings)

    def init_meta_params(self) -> Params:
        params = super().init_meta_params()
        if self.inner_optimizer != "adam":
            return params
        moments = {MOMENT + k: torch.zeros_like(v) for k, v in params.items()}
        return params | moments | {MOMENT_STEPS: torch.zeros((), dtype=next(iter(params.values())).dtype)}

    # -- the inner loop --------------------------------------------------------------------------------------------
    def _adapt_with_moment(self, meta_params: Params, x: torch.Tensor, y: torch.Tensor, steps: int,
                           head_rows: torch.Tensor | None = None) -> tuple[Params, Params | None]:
        """head_rows: the support examples a prototype head is made of (embedded on their own, as a test task's
        support set would be); None = all."""
        head_x, head_y = (x, y) if head_rows is None else (x[head_rows], y[head_rows])
        params = self._task_start_for(meta_params, head_x, head_y)
        moment = {k: meta_params[MOMENT + k] for k in params} if self.inner_optimizer == "adam" else None
        return minibatch_adapt(self.forward, self.loss, params, x, y, steps=steps, lr=self.inner_lr,
                               batch_size=self.inner_batch, second_moment=moment,
                               moment_steps=meta_params[MOMENT_STEPS] if moment is not None else 0.0)

    def _adapt_one(self, meta_params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool) -> Params:
        return self._adapt_with_moment(meta_params, x, y, steps)[0]

    def _training_head_rows(self, support_y: torch.Tensor) -> torch.Tensor | None:
        """The support positions of each class's first prototype_shots examples (None: the head is made of all)."""
        if self.prototype_shots is None:
            return None
        y = support_y[0]
        if not torch.equal(support_y, y.expand_as(support_y)):
            raise ValueError(f"{type(self).__name__}: algorithm.prototype_shots needs the tasks of a batch to share one "
                             "label layout (episodes of equal ways and shots)")
        one_hot = (y.unsqueeze(-1) == torch.arange(int(y.max()) + 1, device=y.device)).to(torch.int64)
        position = (one_hot.cumsum(0) * one_hot).sum(-1)  # 1 for a class's first example, 2 for its second ...
        return torch.nonzero(position <= self.prototype_shots).squeeze(-1)

    def _support(self, support_x: torch.Tensor, support_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inner_batch is None or self.kind != "classification":
            return support_x, support_y
        return interleave_classes(support_x, support_y, int(support_y.max()) + 1)

    # -- learning --------------------------------------------------------------------------------------------------
    def compute_update(self, meta_params: Params, batch) -> Update:
        params = self.model_params(meta_params)
        support_x, support_y = self._support(batch.support_x, batch.support_y)
        rows = self._training_head_rows(support_y)
        if self.inner_optimizer == "adam":
            adapted, moments = over_tasks(
                lambda x, y: self._adapt_with_moment(meta_params, x, y, self.inner_steps, rows)
            )(support_x, support_y)
        else:  # (vmap maps tensors only: no moment to return)
            adapted, moments = over_tasks(
                lambda x, y: self._adapt_with_moment(meta_params, x, y, self.inner_steps, rows)[0]
            )(support_x, support_y), None
        tasks = support_x.shape[0]
        delta = {k: (adapted[k] - params[k]).sum(0) for k in params}
        if self.prototype_head:  # each task's head started from its own prototypes, not from the meta-parameters
            delta |= {k: torch.zeros_like(params[k]) for k in self.head_names()}
        if moments is not None:  # each task's moment minus the shared one: the outer step leaves their mean
            delta |= {MOMENT + k: (moments[k] - meta_params[MOMENT + k]).sum(0) for k in params}
            delta[MOMENT_STEPS] = torch.full_like(meta_params[MOMENT_STEPS], float(self.inner_steps * tasks))
        with torch.no_grad():
            out = over_tasks(self.forward)(adapted, batch.query_x)
            losses = over_tasks(self.loss)(out, batch.query_y)
            metrics = {"loss_after": float(losses.sum())}
            if self.kind == "classification":
                metrics["accuracy_after"] = float(over_tasks(self._aux)(out, batch.query_y)["accuracy_after"].sum())
        return Update("delta", delta, len(losses), metrics)

    def adapt(self, meta_params: Params, support_x, support_y, steps: int | None = None) -> Params:
        return super().adapt(meta_params, *self._support(support_x, support_y), steps)
