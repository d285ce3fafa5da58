"""The learn2learn side of bench/backbone_speed.py: one learner's meta-training steps on learn2learn's ResNet12.

Run by bench/backbone_speed.py under the learn2learn virtualenv, one fresh process per learner:

    /tmp/l2l-venv/bin/python bench/_l2l_backbone.py --learner maml --threads 2

learn2learn 0.2.0's own ResNet12 (64-160-320-640, average-pooled, DropBlock off so both sides run the same
network), 5-way 1-shot with 15 queries per class on synthetic 84×84 RGB images, 4 tasks per meta-batch, Adam on the
summed task losses / 4. The loops are learn2learn's examples': MAML and first-order MAML `maml.clone()` and
`adapt` once per task (inner rate 0.01); ANIL adapts a `l2l.algorithms.MAML` head over the shared features;
ProtoNet classifies queries by squared distance to the support prototypes. Prints one result line: tasks/s over the
timed steps and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

from _backbone_common import WAYS, episodes, side_result
from common.results import emit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--learner", choices=("protonet", "anil", "fomaml", "maml"), required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import learn2learn as l2l
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = l2l.vision.models.ResNet12(output_size=WAYS, dropblock_dropout=0.0)
    if args.learner == "protonet":
        learnable = model.features
    elif args.learner == "anil":
        head = l2l.algorithms.MAML(model.classifier, lr=0.01)
        learnable = torch.nn.ModuleList([model.features, head])
    else:
        maml = l2l.algorithms.MAML(model, lr=0.01, first_order=args.learner == "fomaml")
        learnable = maml
    optimizer = torch.optim.Adam(learnable.parameters(), lr=1e-3)

    def task_loss(sx, sy, qx, qy):
        if args.learner == "protonet":
            z = model.features(torch.cat([sx, qx]))
            prototypes = z[: len(sx)].view(WAYS, -1, z.shape[-1]).mean(1)
            return F.cross_entropy(-torch.cdist(z[len(sx):], prototypes) ** 2, qy)
        if args.learner == "anil":
            features = model.features(torch.cat([sx, qx]))
            learner = head.clone()
            learner.adapt(F.cross_entropy(learner(features[: len(sx)]), sy))
            return F.cross_entropy(learner(features[len(sx):]), qy)
        learner = maml.clone()
        learner.adapt(F.cross_entropy(learner(sx), sy))
        return F.cross_entropy(learner(qx), qy)

    batches = episodes(args.warmup + args.steps)
    timed = 0.0
    for index, (support_x, support_y, query_x, query_y) in enumerate(batches):
        start = time.perf_counter()
        optimizer.zero_grad()
        for t in range(len(support_x)):
            (task_loss(support_x[t], support_y[t], query_x[t], query_y[t]) / len(support_x)).backward()
        optimizer.step()
        if index >= args.warmup:
            timed += time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit(side_result(args.steps * len(batches[0][0]) / timed, peak_mb, l2l.__version__))


if __name__ == "__main__":
    main()
