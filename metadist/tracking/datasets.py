"""The job's shard sets as MLflow datasets (the run's inputs): which data, exactly which version, used how.

One dataset per shard set, logged with `log_inputs` when the run starts:
    name     the data set's name and version in its manifest ("omniglot-images_background_small1"), else the
             last part of its URI
    digest   the first 32 hex digits of the manifest's SHA-256 (MLflow keeps at most 36 characters); the manifest
             lists every shard's own SHA-256, so it names the exact bytes trained on
    source   the manifest's URI as the job names it ({"uri": "s3://bucket/omniglot/manifest.json"}), type "metadist-shards"
    context  "training" (data.train) or "test" (data.test: held-out evaluations and the final test)
    schema   the example's shape ([C, H, W], uint8) and the label, as a tensor spec

A regression job draws its tasks from a generated family and logs no dataset. Held-out and test metrics carry the
test dataset's name and digest, so MLflow's model pages show what they were measured on.
This module imports mlflow at its top: only the tracker's methods import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow.data.dataset_source import DatasetSource

from metadist.config import JobConfig, TaskSourceConfig
from metadist.data import schema

SOURCE_TYPE = "metadist-shards"
MAX_DIGEST_CHARS = 32  # MLflow's limit is 36 (mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE)
CONTEXTS = {"train": "training", "test": "test"}


@dataclass(frozen=True)
class ShardDataset:
    """A shard set as the run records it."""

    context: str  # "training" or "test"
    name: str
    digest: str
    manifest_uri: str
    example_shape: tuple[int, int, int]


def shard_datasets(job: JobConfig) -> list[ShardDataset]:
    """The job's training and test shard sets (reading their manifests); none for a regression job."""
    from metadist.core.tasks import open_shards

    data = job.data
    if data.regression is not None:
        return []
    found = []
    for split, context in CONTEXTS.items():
        source: TaskSourceConfig | None = getattr(data, split)
        if source is None:
            continue
        shards = open_shards(source, progress=False, verify_checksums=False)  # only the manifest is read
        try:
            found.append(ShardDataset(context, dataset_name(shards.manifest.dataset, source.uri),
                                      shards.manifest_sha256[:MAX_DIGEST_CHARS], f"{source.uri.rstrip('/')}/{schema.MANIFEST_NAME}",
                                      shards.manifest.example_shape))
        finally:
            shards.close()
    return found


def dataset_name(described: dict, uri: str) -> str:
    """"<name>-<version>" from the manifest's free-form description, else the last part of the URI."""
    name, version = described.get("name"), described.get("version")
    if not name:
        return uri.rstrip("/").rsplit("/", 1)[-1]
    return f"{name}-{version}" if version else str(name)


def dataset_inputs(datasets: list[ShardDataset]) -> list[Any]:
    """mlflow.entities.DatasetInput of each, with its context as the `mlflow.data.context` input tag."""
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types.schema import Schema, TensorSpec
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for d in datasets:
        spec = Schema([TensorSpec(np.dtype(np.uint8), (-1, *d.example_shape), "image"),
                       TensorSpec(np.dtype(np.int64), (-1,), "label")])
        # profile: abstract in its base class, None in MetaDataset at runtime (no data to profile)
        dataset = MetaDataset(ShardSetSource(d.manifest_uri), name=d.name, digest=d.digest, schema=spec)  # type: ignore[abstract]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, d.context)]))
    return inputs


class ShardSetSource(DatasetSource):
    """Where a shard set is: its manifest's URI (any fsspec URI, or bundled://NAME)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return SOURCE_TYPE

    def load(self) -> str:
        return self.uri  # the shard set is read by metadist (ShardSet), not by MLflow

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # never picked for an arbitrary URI: only metadist creates these

    @classmethod
    def _resolve(cls, raw_source: Any) -> "ShardSetSource":
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> "ShardSetSource":
        return cls(source_dict["uri"])
