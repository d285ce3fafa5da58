"""The one typed configuration model. Defaults are written here once, each with the reason for it.

Job files (YAML) are parsed into these models; the resolved configuration is printed into every run and saved
in every checkpoint. Library code takes these models (or their fields) and holds no defaults of its own.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    # A misspelled key is an error that names it, never a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class EpisodeConfig(_Strict):
    """The shape of one few-shot classification episode (N-way K-shot, Q queries per class)."""

    ways: int = Field(5, ge=1, description="classes per episode (N); 5 and 20 are the Omniglot benchmarks")
    shots: int = Field(1, ge=1, description="support examples per class (K)")
    queries: int = Field(5, ge=1, description="query examples per class (Q); 5 keeps 1-shot episodes cheap")
    rotations: bool = Field(
        False, description="treat each 90° rotation of a class as a new class (the Omniglot convention)"
    )


class SplitConfig(_Strict):
    """Which classes of a shard set an episode may draw from."""

    groups: list[str] | None = Field(None, description="keep only these groups (alphabets, domains ...); None keeps all")
    exclude_groups: list[str] = Field(default_factory=list, description="drop these groups")
    classes: list[str] | None = Field(None, description="keep only these class names; None keeps all")


class TaskSourceConfig(_Strict):
    """A shard set and the class split to sample from it."""

    uri: str = Field(description="shard set URI (local path, file://, memory://, s3:// ...) or bundled://NAME")
    split: SplitConfig = Field(default_factory=SplitConfig)
    cache_mb: float = Field(
        512, gt=0, description="decoded-class cache per process; all of Omniglot at 28×28 needs about 26 MB"
    )
    max_open_shards: int = Field(8, ge=1, description="shard files kept open per process; bounds memory maps")
    storage_options: dict = Field(default_factory=dict, description="fsspec options (endpoint_url, key ...)")


class RegressionConfig(_Strict):
    """A generated regression task family, sampled on the fly (no shards)."""

    family: str = Field("sinusoid", description="'sinusoid' (MAML's) or 'linear'")
    shots: int = Field(5, ge=1, description="support points per task (K); the MAML paper reports K = 5, 10")
    queries: int = Field(10, ge=1, description="query points per task")

    @model_validator(mode="after")
    def _known_family(self) -> "RegressionConfig":
        from metadist.data.regression import FAMILIES

        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {self.family!r}")
        return self


class ModelConfig(_Strict):
    """The network: conv-4 for images, the 2×40 MLP for regression."""

    name: str = Field("conv4", description="'conv4' (images) or 'mlp' (regression)")
    hidden: int | None = Field(
        None, ge=1, description="conv-4 filters / MLP width; None = the literature's (64 at 28×28, 32 at 84×84, 40 for the MLP)"
    )
    downsample: str | None = Field(
        None, description="conv4: 'stride' or 'maxpool'; None = the MAML code's (stride at ≤ 32 px, max-pool above)"
    )
    batch_norm: str = Field(
        "transductive",
        description="'transductive' (batch statistics at train and test, as in the MAML papers) or 'none'",
    )

    @model_validator(mode="after")
    def _known(self) -> "ModelConfig":
        if self.name not in ("conv4", "mlp"):
            raise ValueError(f"name must be 'conv4' or 'mlp', got {self.name!r}")
        if self.downsample not in (None, "stride", "maxpool"):
            raise ValueError(f"downsample must be 'stride' or 'maxpool', got {self.downsample!r}")
        if self.batch_norm not in ("transductive", "none"):
            raise ValueError(f"batch_norm must be 'transductive' or 'none', got {self.batch_norm!r}")
        return self


ALGORITHMS = ("maml", "fomaml", "reptile", "model_averaging", "anil", "metasgd", "protonet", "matching", "siamese")


class AlgorithmConfig(_Strict):
    """The meta-learning algorithm and its inner loop (ignored by the metric learners, which do not adapt weights)."""

    name: str = Field("maml", description=f"one of {ALGORITHMS}")
    inner_lr: float = Field(0.4, gt=0, description="inner SGD step; 0.4 is MAML's Omniglot value (0.01 for sinusoids)")
    inner_steps: int = Field(1, ge=1, description="inner steps while meta-training; MAML uses 1 on 5-way Omniglot")
    eval_inner_steps: int = Field(3, ge=0, description="inner steps at evaluation; MAML evaluates Omniglot with 3")
    matching_fce: bool = Field(False, description="Matching Networks: full-context embeddings (LSTMs over the support set)")

    @model_validator(mode="after")
    def _known(self) -> "AlgorithmConfig":
        if self.name not in ALGORITHMS:
            raise ValueError(f"name must be one of {ALGORITHMS}, got {self.name!r}")
        return self


class OptimizerConfig(_Strict):
    """The outer (meta) optimizer, applied to the mean of the workers' updates."""

    name: str = Field("adam", description="'adam' (MAML's choice) or 'sgd'")
    lr: float = Field(1e-3, gt=0, description="outer step; MAML uses Adam at 1e-3 on Omniglot")
    schedule: str = Field("constant", description="'constant' or 'cosine' (to 0 over the run's steps)")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps before the schedule")
    clip_norm: float | None = Field(10.0, gt=0, description="clip the update's global L2 norm; None disables")

    @model_validator(mode="after")
    def _known(self) -> "OptimizerConfig":
        if self.name not in ("adam", "sgd"):
            raise ValueError(f"name must be 'adam' or 'sgd', got {self.name!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        return self
