"""ANIL, "almost no inner loop" (Raghu et al., 2020): MAML whose inner loop adapts only the head.

The body is still meta-learned by the outer step (its gradient flows through the adapted head), but each task
only re-fits the final linear layer, which is most of MAML's adaptation and a fraction of its cost.
"""

from __future__ import annotations

from metadist.algorithms.maml import MAML


class ANIL(MAML):
    name = "anil"

    def adapt_names(self) -> tuple[str, ...]:
        return tuple(self.model.HEAD)  # type: ignore[arg-type]  # the model class names its head parameters
