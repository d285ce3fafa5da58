"""Importers turn users' data into shard sets: Omniglot, any image folder, and the standard few-shot benchmarks."""

from metadist.data.importers.cifar import import_cifar_fs, import_fc100
from metadist.data.importers.cub import import_cub
from metadist.data.importers.image_folder import import_image_folder
from metadist.data.importers.imagenet import import_mini_imagenet, import_tiered_imagenet
from metadist.data.importers.omniglot import MAML_PREPROCESSING, import_omniglot

__all__ = [
    "MAML_PREPROCESSING",
    "import_cifar_fs",
    "import_cub",
    "import_fc100",
    "import_image_folder",
    "import_mini_imagenet",
    "import_omniglot",
    "import_tiered_imagenet",
]
