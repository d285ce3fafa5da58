"""The model-averaging learner: train a copy on each task's support set, average the copies, fine-tune to adapt.

It is Reptile with outer step size 1 and plain SGD: θ ← θ + mean_t(θ'_t − θ) = mean_t θ'_t, i.e. federated
averaging over tasks. Reptile's smaller outer step (and any optimizer) interpolates between the old θ and this
average; at step size 1 the initialisation is replaced by the average outright. Evaluation fine-tunes the
average on the support set, exactly like Reptile. Its inner loop is Reptile's (SGD or Adam with β1 = 0 over
minibatches, the Adam moment carried across tasks): with Reptile's Omniglot recipe it reaches 80.5% on the
development protocol after 5,000 steps from a random network, where full-batch SGD on the 1-shot support set reached
34.6%; its job files add Reptile's pre-training and one-shot prototype head (92.5% after 2,000 steps).
"""

from __future__ import annotations

from metadist.algorithms.reptile import Reptile


class ModelAveraging(Reptile):
    name = "model_averaging"
    fixed_outer_lr = 1.0  # the trainer applies θ ← θ + mean delta with this step and no optimizer state
