"""The learn2learn side of bench/quality.py's time-to-accuracy row: learn2learn 0.2.0's FOMAML on Omniglot for a
wall-clock budget, then tested on the development protocol's held-out characters.

Run by bench/quality.py under the learn2learn virtualenv (its interpreter, not metadist's):

    /tmp/l2l-venv/bin/python bench/_l2l_time_to_accuracy.py --train DIR --test DIR --budget-s 600 --threads 2

Training is learn2learn's examples/vision/maml_omniglot.py with its settings (5-way 1-shot, 1 query per class, 32
tasks a step, 1 inner step at 0.5, Adam at 0.003, first order), on its Omniglot benchmark's transforms over
small1's images as bench/_l2l_sampler.py loads them; it stops at the budget. Testing adapts as in training
(1 step at 0.5) and scores 5 queries per class on `--episodes` 5-way 1-shot episodes of the characters under
`--test` (small2's new alphabets), no rotations, as metadist's held-out episodes: mean ± 95% CI.
Prints one result line (common.results.emit). The training step is bench/_l2l_train.py's meta_step.
"""

from __future__ import annotations

import argparse
import math
import random
import warnings
from pathlib import Path

from _l2l_sampler import load_omniglot, support_query_masks, taskset
from _l2l_train import adapted, meta_step
from common.measure import Stopwatch
from common.results import emit


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


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore")  # learn2learn's imports warn about gym and torchvision versions
    import numpy as np
    import torch
    import learn2learn as l2l

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    train = taskset(*load_omniglot(args.train, torch), torch, l2l, ways=WAYS, k=SHOTS + TRAIN_QUERIES, rotations=True)
    test = taskset(*load_omniglot(args.test, torch), torch, l2l, ways=WAYS, k=SHOTS + TEST_QUERIES, rotations=False)

    model = l2l.vision.models.OmniglotCNN(WAYS)
    maml = l2l.algorithms.MAML(model, lr=FAST_LR, first_order=True)
    optimizer = torch.optim.Adam(maml.parameters(), META_LR)
    loss = torch.nn.CrossEntropyLoss(reduction="mean")
    masks = support_query_masks(WAYS, SHOTS, TRAIN_QUERIES, np, torch)

    steps, watch = 0, Stopwatch()
    while watch.wall < args.budget_s:
        meta_step(maml, optimizer, loss, train, masks, meta_batch=META_BATCH, inner_steps=ADAPTATION_STEPS)
        steps += 1
    train_s = watch.wall

    support, query = support_query_masks(WAYS, SHOTS, TEST_QUERIES, np, torch)
    accuracies = []
    for _ in range(args.episodes):
        data, targets = test.sample()
        learner = adapted(maml, loss, data, targets, support, ADAPTATION_STEPS)
        with torch.no_grad():
            predicted = learner(data[query]).argmax(1)
        accuracies.append(float((predicted == targets[query]).float().mean()))
    a = np.asarray(accuracies)
    ci95 = 1.96 * a.std(ddof=1) / math.sqrt(len(a))
    emit({
        "steps": steps, "train_time_s": train_s, "tasks_per_step": META_BATCH, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "learn2learn": l2l.__version__,
        "test": {"accuracy_after": {"mean": float(a.mean()), "ci95": float(ci95), "episodes": len(a)}},
    })


if __name__ == "__main__":
    main()
