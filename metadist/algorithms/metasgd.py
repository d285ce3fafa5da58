"""Meta-SGD (Li et al., 2017): MAML that also meta-learns a learning rate for every parameter element.

The rates are meta-parameters named "lr.<parameter>", initialised to inner_lr; the inner step is
θ' = θ − lr ⊙ ∇L_support(θ), so the outer gradient reaches the rates through θ'.
"""

from __future__ import annotations

import torch

from metadist.algorithms.functional import Params
from metadist.algorithms.maml import MAML


class MetaSGD(MAML):
    name = "metasgd"
    extra_prefixes = ("lr.",)  # the learned rates are meta-parameters, not model parameters

    def init_meta_params(self) -> Params:
        params = super().init_meta_params()
        rates = {f"lr.{name}": torch.full_like(p, self.inner_lr) for name, p in params.items()}
        return {**params, **rates}

    def inner_lrs(self, meta_params: Params) -> Params:
        return {name[len("lr."):]: rate for name, rate in meta_params.items() if name.startswith("lr.")}
