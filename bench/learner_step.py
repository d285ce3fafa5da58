"""Quick in-process timing of one learner's `compute_update` (no sampling, no outer step): tasks/s.

    .venv/bin/python bench/learner_step.py maml 5        # ALGORITHM WAYS [META_BATCH]

Conv-4 (64 filters) on bundled Omniglot small1, 1-shot, 1 query per class, 1 inner step, 2 threads; 2 warm-up
updates, then the mean over 5. For the side-by-side comparison with learn2learn use bench/train_speed.py.
"""

import sys


from common.measure import Stopwatch
from metadist.algorithms import build_learner
from metadist.config import AlgorithmConfig, EpisodeConfig, ModelConfig
from metadist.data import EpisodeSampler, ShardSet, ensure_bundled
from metadist.models import build_model
from metadist.runtime import configure_process


def main() -> None:
    name, ways = sys.argv[1], int(sys.argv[2])
    tasks = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    configure_process(2)  # what every metadist process does at start (the C heap keeps freed memory)
    sampler = EpisodeSampler(ShardSet(ensure_bundled("omniglot-small1", progress=False)),
                             EpisodeConfig(ways=ways, shots=1, queries=1, rotations=True), seed=0)
    metric = name in ("protonet", "matching", "siamese")
    model = build_model(ModelConfig(), input_shape=(1, 28, 28), outputs=None if metric else ways)
    learner = build_learner(AlgorithmConfig(name=name), model, "classification")
    params = learner.init_meta_params()
    batches = [sampler.sample(step, range(tasks)) for step in range(7)]
    for batch in batches[:2]:
        learner.compute_update(params, batch)
    watch = Stopwatch()
    for batch in batches[2:]:
        learner.compute_update(params, batch)
    print(f"{name} {ways}-way, {tasks} tasks per update: {5 * tasks / watch.wall:.1f} tasks/s")


if __name__ == "__main__":
    main()
