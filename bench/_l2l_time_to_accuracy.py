"""The learn2learn side of bench/quality.py's time-to-accuracy row: learn2learn 0.2.0's FOMAML on Omniglot for a
wall-clock budget, then tested on the development protocol's held-out characters.

Run by bench/quality.py under the learn2learn virtualenv (its interpreter, not metadist's):

    /tmp/l2l-venv/bin/python bench/_l2l_time_to_accuracy.py --train DIR --test DIR --budget-s 600 --threads 2

Training is learn2learn's examples/vision/maml_omniglot.py with its settings (5-way 1-shot, 1 query per class, 32
tasks a step, 1 inner step at 0.5, Adam at 0.003, first order), on its Omniglot benchmark's transforms over
small1's images as bench/_l2l_sampler.py loads them; it stops at the budget. Testing adapts as in training
(1 step at 0.5) and scores 5 queries per class on `--episodes` 5-way 1-shot episodes of the characters under
`--test` (small2's new alphabets), no rotations, as metadist's held-out episodes: mean ± 95% CI.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
import warnings
from pathlib import Path

from _l2l_sampler import ROTATION_DEGREES, in_memory_dataset, load_omniglot


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, type=Path, help="extracted images_background_small1 folder")
    parser.add_argument("--test", required=True, type=Path, help="a folder of <alphabet>/<character> held-out folders")
    parser.add_argument("--budget-s", type=float, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


# maml_omniglot.py's settings
WAYS, SHOTS, TRAIN_QUERIES, TEST_QUERIES = 5, 1, 1, 5
META_BATCH, FAST_LR, META_LR, ADAPTATION_STEPS = 32, 0.5, 0.003, 1


def taskset(images, labels, queries, rotations, torch, l2l):
    dataset = in_memory_dataset(images, labels, torch, l2l)
    transforms = [
        l2l.data.transforms.FusedNWaysKShots(dataset, n=WAYS, k=SHOTS + queries),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
        l2l.data.transforms.ConsecutiveLabels(dataset),
    ]
    if rotations:
        transforms.append(l2l.vision.transforms.RandomClassRotation(dataset, ROTATION_DEGREES))
    return l2l.data.TaskDataset(dataset, transforms, num_tasks=-1)


def split(queries, np, torch):
    """Support / query masks of an episode (ConsecutiveLabels puts each class's K+Q examples together)."""
    per_class = SHOTS + queries
    is_support = np.zeros(WAYS * per_class, dtype=bool)
    is_support[np.arange(WAYS)[:, None] * per_class + np.arange(SHOTS)] = True
    return torch.from_numpy(is_support), torch.from_numpy(~is_support)


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore")  # learn2learn's imports warn about gym and torchvision versions
    import numpy as np
    import torch
    import learn2learn as l2l

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    train = taskset(*load_omniglot(args.train, torch), TRAIN_QUERIES, True, torch, l2l)
    test = taskset(*load_omniglot(args.test, torch), TEST_QUERIES, False, torch, l2l)

    model = l2l.vision.models.OmniglotCNN(WAYS)
    maml = l2l.algorithms.MAML(model, lr=FAST_LR, first_order=True)
    optimizer = torch.optim.Adam(maml.parameters(), META_LR)
    loss = torch.nn.CrossEntropyLoss(reduction="mean")
    support, query = split(TRAIN_QUERIES, np, torch)

    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.budget_s:
        optimizer.zero_grad()
        for _ in range(META_BATCH):
            data, targets = train.sample()
            learner = maml.clone()
            for _ in range(ADAPTATION_STEPS):
                learner.adapt(loss(learner(data[support]), targets[support]))
            loss(learner(data[query]), targets[query]).backward()
        for p in maml.parameters():
            p.grad.data.mul_(1.0 / META_BATCH)
        optimizer.step()
        steps += 1
    train_s = time.perf_counter() - started

    support, query = split(TEST_QUERIES, np, torch)
    accuracies = []
    for _ in range(args.episodes):
        data, targets = test.sample()
        learner = maml.clone()
        for _ in range(ADAPTATION_STEPS):
            learner.adapt(loss(learner(data[support]), targets[support]))
        with torch.no_grad():
            predicted = learner(data[query]).argmax(1)
        accuracies.append(float((predicted == targets[query]).float().mean()))
    a = np.asarray(accuracies)
    ci95 = 1.96 * a.std(ddof=1) / math.sqrt(len(a))
    print(json.dumps({
        "steps": steps, "train_time_s": train_s, "tasks_per_step": META_BATCH, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "learn2learn": l2l.__version__,
        "test": {"accuracy_after": {"mean": float(a.mean()), "ci95": float(ci95), "episodes": len(a)}},
    }), flush=True)


if __name__ == "__main__":
    main()
