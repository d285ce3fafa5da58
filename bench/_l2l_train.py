"""The learn2learn side of bench/train_speed.py: learn2learn 0.2.0's MAML meta-training loop on Omniglot.

Run by bench/train_speed.py under the learn2learn virtualenv (its interpreter, not metadist's), one fresh
process per configuration, and driven over stdin/stdout by train_speed.serve (which see):

    /tmp/l2l-venv/bin/python bench/_l2l_train.py --images DIR --algorithm maml --ways 5 --inner-steps 1

One meta-training step is the loop of learn2learn's examples/vision/maml_omniglot.py: for each of the 32 tasks
of a meta-batch, sample an episode from the TaskDataset, `learner = maml.clone()`, `inner_steps` times
`learner.adapt(loss(learner(support_x), support_y))`, then `loss(learner(query_x), query_y).backward()`; then
the summed gradients are divided by 32 and Adam steps. The model is learn2learn's own OmniglotCNN (4 × [3×3 conv
64, stride 2 → batch norm with batch statistics → ReLU], mean over the final 2×2 map, linear head); the tasks come
from the transforms of learn2learn's Omniglot benchmark (vision/benchmarks/omniglot_benchmark.py):
FusedNWaysKShots(N, K+Q), LoadData, RemapLabels, ConsecutiveLabels, RandomClassRotation(0/90/180/270°), over
the images of DIR loaded as bench/_l2l_sampler.py loads them (metadist's Omniglot preprocessing).
meta_step and adapted are that loop, shared with bench/_l2l_time_to_accuracy.py.
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from pathlib import Path

from _l2l_sampler import load_omniglot, support_query_masks, taskset
from train_speed import META_BATCH, serve


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, type=Path, help="extracted images_background_small1 folder")
    parser.add_argument("--algorithm", choices=("maml", "fomaml"), required=True)
    parser.add_argument("--ways", type=int, required=True)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--inner-lr", type=float, required=True)
    parser.add_argument("--meta-lr", type=float, required=True)
    parser.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def adapted(maml, loss, data, targets, support, steps: int):
    """A clone of `maml` adapted by `steps` SGD steps on the episode's support examples."""
    learner = maml.clone()
    for _ in range(steps):
        learner.adapt(loss(learner(data[support]), targets[support]))
    return learner


def meta_step(maml, optimizer, loss, tasks, masks, *, meta_batch: int, inner_steps: int) -> float:
    """One meta-training step of maml_omniglot.py: for each of `meta_batch` episodes, adapt a clone and backpropagate
    its query loss; divide the summed gradients by `meta_batch`; step. Returns the seconds spent sampling."""
    support, query = masks
    sample_s = 0.0
    optimizer.zero_grad()
    for _ in range(meta_batch):
        started = time.perf_counter()
        data, targets = tasks.sample()
        sample_s += time.perf_counter() - started
        learner = adapted(maml, loss, data, targets, support, inner_steps)
        loss(learner(data[query]), targets[query]).backward()
    for p in maml.parameters():
        p.grad.data.mul_(1.0 / meta_batch)
    optimizer.step()
    return sample_s


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore")  # learn2learn's imports warn about gym and torchvision versions
    import numpy as np
    import torch
    import torchvision
    import learn2learn as l2l

    torch.set_num_threads(args.threads)
    random.seed(args.seed)  # learn2learn draws classes, shots and rotations from Python's random
    torch.manual_seed(args.seed)
    images, labels = load_omniglot(args.images, torch)
    tasks = taskset(images, labels, torch, l2l, ways=args.ways, k=args.shots + args.queries, rotations=True)

    model = l2l.vision.models.OmniglotCNN(args.ways)
    maml = l2l.algorithms.MAML(model, lr=args.inner_lr, first_order=args.algorithm == "fomaml")
    optimizer = torch.optim.Adam(maml.parameters(), args.meta_lr)
    loss = torch.nn.CrossEntropyLoss(reduction="mean")
    masks = support_query_masks(args.ways, args.shots, args.queries, np, torch)

    def step() -> float:
        """One meta-training step; returns the seconds spent sampling episodes."""
        return meta_step(maml, optimizer, loss, tasks, masks, meta_batch=META_BATCH, inner_steps=args.inner_steps)

    info = {
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": {"learn2learn": l2l.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__},
    }
    serve(step, warmup_steps=args.warmup_steps, info=info)


if __name__ == "__main__":
    main()
