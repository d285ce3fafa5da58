"""The one typed configuration of a job (`JobConfig` and its sections) and the one way to load it from files and overrides."""

from metadist.config.job import (
    ALGORITHMS,
    DEFAULT_CACHE_MB,
    DEFAULT_CHECKPOINT_DIR,
    DEFAULT_MAX_OPEN_SHARDS,
    DEFAULT_VERIFY_CHECKSUMS,
    DISTRIBUTED_MODES,
    METRIC_ALGORITHMS,
    SMALL2_NEW_ALPHABETS,
    STALE_POLICIES,
    TRAIN_SOURCE_TAGS,
    AffineJitterConfig,
    AlgorithmConfig,
    CheckpointConfig,
    DataConfig,
    DistributedConfig,
    EpisodeConfig,
    JobConfig,
    ModelConfig,
    OptimizerConfig,
    PretrainConfig,
    RegressionConfig,
    SplitConfig,
    TaskSourceConfig,
    TrackingConfig,
    TrainConfig,
    WeightedSourceConfig,
)
from metadist.config.loading import (
    apply_flags,
    apply_overrides,
    load_job,
    load_job_with,
    read_mapping,
    set_dotted,
    validate,
    validation_message,
)

__all__ = [
    "ALGORITHMS", "DEFAULT_CACHE_MB", "DEFAULT_CHECKPOINT_DIR", "DEFAULT_MAX_OPEN_SHARDS", "DEFAULT_VERIFY_CHECKSUMS",
    "DISTRIBUTED_MODES", "METRIC_ALGORITHMS", "SMALL2_NEW_ALPHABETS", "STALE_POLICIES", "TRAIN_SOURCE_TAGS",
    "AffineJitterConfig", "AlgorithmConfig", "CheckpointConfig", "DataConfig", "DistributedConfig", "EpisodeConfig",
    "JobConfig", "ModelConfig", "OptimizerConfig", "PretrainConfig", "RegressionConfig", "SplitConfig", "TaskSourceConfig", "TrackingConfig",
    "TrainConfig", "apply_flags", "apply_overrides", "load_job", "load_job_with", "read_mapping", "set_dotted", "validate",
    "validation_message", "WeightedSourceConfig",
]  # fmt: skip
