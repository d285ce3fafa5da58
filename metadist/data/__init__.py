"""Task data: Arrow shard sets on any fsspec URI, their importers, and the deterministic episode samplers that stream from them.

>>> from metadist.data import ShardSet, EpisodeSampler, resolve_uri
>>> shards = ShardSet(resolve_uri("bundled://omniglot-small1"))
>>> batch = EpisodeSampler(shards, EpisodeConfig(ways=5), seed=0).sample(step=0, task_indices=range(32))
"""

from metadist.data.bundled import SMALL2_NEW_ALPHABETS, ensure_bundled, resolve_uri
from metadist.data.episodes import ClassificationBatch, RegressionBatch
from metadist.data.images import ImagePreprocessing
from metadist.data.importers import (
    MAML_PREPROCESSING,
    import_cifar_fs,
    import_cub,
    import_fc100,
    import_image_folder,
    import_mini_imagenet,
    import_omniglot,
    import_tiered_imagenet,
)
from metadist.data.manifest import ClassInfo, Manifest, ShardInfo
from metadist.data.prefetch import Lookahead, Prefetcher
from metadist.data.regression import FAMILIES, LinearTasks, RegressionSampler, SinusoidTasks
from metadist.data.sampler import EpisodeSampler, MultiSourceSampler, check_same_examples
from metadist.data.shardset import ShardSet
from metadist.data.writer import ShardSetWriter

__all__ = [
    "FAMILIES",
    "MAML_PREPROCESSING",
    "SMALL2_NEW_ALPHABETS",
    "ClassInfo",
    "ClassificationBatch",
    "EpisodeSampler",
    "ImagePreprocessing",
    "LinearTasks",
    "Manifest",
    "MultiSourceSampler",
    "Lookahead",
    "Prefetcher",
    "RegressionBatch",
    "RegressionSampler",
    "ShardInfo",
    "ShardSet",
    "ShardSetWriter",
    "SinusoidTasks",
    "check_same_examples",
    "ensure_bundled",
    "import_cifar_fs",
    "import_cub",
    "import_fc100",
    "import_image_folder",
    "import_mini_imagenet",
    "import_omniglot",
    "import_tiered_imagenet",
    "resolve_uri",
]
