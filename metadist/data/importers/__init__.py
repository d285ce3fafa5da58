"""Importers turn users' data into shard sets: Omniglot, and any image folder."""

from metadist.data.importers.image_folder import import_image_folder
from metadist.data.importers.omniglot import MAML_PREPROCESSING, import_omniglot

__all__ = ["MAML_PREPROCESSING", "import_image_folder", "import_omniglot"]
