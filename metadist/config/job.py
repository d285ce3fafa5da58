"""The job model: every setting of a meta-training job, typed and validated, each default written once with its why.

Job files (YAML) are parsed into these models (metadist.config.loading); the resolved configuration is printed into
every run and saved in every checkpoint. Library code takes these models (or their fields) and holds no defaults of
its own.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

# Choice fields are Literals: pydantic names the field and lists the allowed values when a job file gets one wrong.
RegressionFamily = Literal["sinusoid", "linear"]
ModelName = Literal["conv4", "resnet12", "wrn", "mlp"]
Downsample = Literal["stride", "maxpool"]
BatchNormMode = Literal["transductive", "none"]
Pooling = Literal["flatten", "mean"]
AlgorithmName = Literal[
    "maml", "fomaml", "reptile", "model_averaging", "anil", "metasgd", "meta_lstm", "protonet", "matching", "siamese",
    "snail",
]
OptimizerName = Literal["adam", "sgd"]
ScheduleName = Literal["constant", "cosine", "linear"]
InnerOptimizerName = Literal["sgd", "adam"]
DistributedMode = Literal["sync", "async"]
StalePolicy = Literal["drop", "downweight"]

ALGORITHMS: tuple[str, ...] = get_args(AlgorithmName)
# The metric learners embed only: their model has no classification head and they adapt no weights.
METRIC_ALGORITHMS: tuple[str, ...] = ("protonet", "matching", "siamese", "snail")
# Learners whose inner loop is not differentiated, so it may take minibatches and use Adam (Reptile's recipe).
MINIBATCH_INNER_LOOP_ALGORITHMS: tuple[str, ...] = ("reptile", "model_averaging")
ZERO_HEAD_ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "anil", "metasgd")
# A prototype head is a start for any inner loop that adapts a head: the MAML family's and Reptile's.
PROTOTYPE_HEAD_ALGORITHMS: tuple[str, ...] = ZERO_HEAD_ALGORITHMS + MINIBATCH_INNER_LOOP_ALGORITHMS
# Variable-way episodes need a learner with no output layer sized by the ways; unequal shots, one that takes the support
# set as it comes (not Reptile's and model averaging's minibatches, which take every class in turn).
VARIABLE_WAYS_ALGORITHMS: tuple[str, ...] = ("protonet", "matching", "siamese")
VARIABLE_SHOTS_ALGORITHMS: tuple[str, ...] = VARIABLE_WAYS_ALGORITHMS + ZERO_HEAD_ALGORITHMS + ("meta_lstm", "snail")
DISTRIBUTED_MODES: tuple[str, ...] = get_args(DistributedMode)
# Backbones whose activations fragment a C heap that keeps freed memory (train.retain_freed_memory's default).
FRAGMENTING_MODELS: tuple[str, ...] = ("resnet12", "wrn")
STALE_POLICIES: tuple[str, ...] = get_args(StalePolicy)
# Where checkpoints go when checkpoint.uri is unset ({name}: the job's name).
DEFAULT_CHECKPOINT_DIR = "outputs/{name}/checkpoints"
# The development protocol: meta-train on the bundled small1 background set, measure on the 106 characters of
# the three alphabets that only small2 has (Lake et al.'s "minimal" splits).
SMALL2_NEW_ALPHABETS: tuple[str, ...] = ("Japanese_(katakana)", "Sanskrit", "Tagalog")


class StrictModel(BaseModel):
    """A settings model that refuses unknown keys and is immutable once validated."""

    # A misspelled key is an error that names it, never a silently ignored setting. No setting means anything at
    # infinity or NaN (a rate, a size, a timeout: None says "none" where a field allows it), and `lr: .inf` would
    # train on NaN and save checkpoints that JSON cannot hold: every float must be finite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AffineJitterConfig(StrictModel):
    """Augmentation: a random affine warp of each training example (the variation between two people's drawings
    of one character: slant, size, skew). Each amount is a ± range drawn uniformly per example; all 0 = off."""

    degrees: float = Field(0, ge=0, le=45, description="rotate by up to ±degrees (small tilts; 90° turns are `rotations`)")
    scale: float = Field(0, ge=0, lt=1, description="scale by a factor in [1 - scale, 1 + scale]")
    shear: float = Field(0, ge=0, le=45, description="shear along x by up to ±shear degrees")

    @property
    def enabled(self) -> bool:
        return bool(self.degrees or self.scale or self.shear)


class VariableEpisodeConfig(StrictModel):
    """Meta-Dataset's variable-way variable-shot episodes (Triantafillou et al., 2020), one shape drawn per outer step:
    N uniform in [min_ways, ways]; with imbalanced_shots, a support budget and unequal per-class shots, each class 1
    to `shots` (the episode's `shots` is then the most a class gets; Meta-Dataset: 100). Queries stay `queries`."""

    min_ways: int = Field(5, ge=2, description="fewest classes in an episode (Meta-Dataset: 5); the most is episode.ways")
    imbalanced_shots: bool = Field(
        True, description="Meta-Dataset's shots: a support budget min(max_support, N·⌈β·shots⌉), β ~ U(0, 1), shared "
        "out unequally (shares ∝ exp(α), α ~ U(log ½, log 2)), at least 1 per class; false: `shots` for every class",
    )
    max_support: int = Field(500, ge=2, description="the most support examples in an episode (Meta-Dataset: 500)")


class EpisodeConfig(StrictModel):
    """The shape of one few-shot classification episode (N-way K-shot, Q queries per class)."""

    ways: int = Field(
        5, ge=2, description="classes per episode (N); 5 and 20 are the Omniglot benchmarks. At least 2: a task of one "
        "class has nothing to tell apart",
    )
    shots: int = Field(1, ge=1, description="support examples per class (K)")
    queries: int = Field(5, ge=1, description="query examples per class (Q); 5 keeps 1-shot episodes cheap")
    rotations: bool = Field(
        False, description="treat each 90° rotation of a class as a new class (the Omniglot convention)"
    )
    reflections: bool = Field(
        False, description="treat the mirror image of each class as a new class: twice the classes; with `rotations`, "
        "the 8 symmetries of the square",
    )
    shift: int = Field(
        0, ge=0, le=8, description="augmentation: move each example by up to ±shift pixels in x and y (zero fill), "
        "drawn per example; 0 = off. For training episodes (data.episode) only",
    )
    affine: AffineJitterConfig = Field(
        default_factory=AffineJitterConfig,
        description="augmentation: random rotation/scale/shear per example (bilinear, zero fill), applied after "
        "`shift`; all 0 = off. For training episodes (data.episode) only",
    )
    variable: VariableEpisodeConfig | None = Field(
        None, description="Meta-Dataset's variable way and shot, drawn per outer step (every task of a step shares the "
        "shape, so they still stack and any worker count sees the same episodes); None = always ways × shots. For "
        "training episodes (data.episode) only",
    )

    @model_validator(mode="after")
    def _variable_shape(self) -> "EpisodeConfig":
        v = self.variable
        if v is None:
            return self
        if v.min_ways > self.ways:
            raise ValueError(f"variable.min_ways = {v.min_ways} exceeds ways = {self.ways} (the most classes an episode has)")
        if v.max_support < self.ways:
            raise ValueError(f"variable.max_support = {v.max_support} is below ways = {self.ways}: every class needs a shot")
        if v.min_ways == self.ways and not v.imbalanced_shots:
            raise ValueError("variable: min_ways = ways and imbalanced_shots = false leave nothing variable; drop it")
        return self


class SplitConfig(StrictModel):
    """Which classes of a shard set an episode may draw from."""

    groups: list[str] | None = Field(None, description="keep only these groups (alphabets, domains ...); None keeps all")
    exclude_groups: list[str] = Field(default_factory=list, description="drop these groups")
    classes: list[str] | None = Field(None, description="keep only these class names; None keeps all")


# Per-process limits of reading a shard set; the data layer's own defaults are these.
DEFAULT_CACHE_MB = 512.0  # decoded-class cache; all of Omniglot at 28×28 needs about 26 MB
DEFAULT_MAX_OPEN_SHARDS = 8  # shard files kept open; bounds memory maps
# Hash each shard against the manifest's SHA-256 when a process first opens it, so a corrupted or replaced file fails
# naming itself: one streaming read per shard per process, about 1 GB/s on one core (the bundled Omniglot shards,
# 2.5 and 2.9 MB: 3 ms each), nothing on later reads.
DEFAULT_VERIFY_CHECKSUMS = True


class TaskSourceConfig(StrictModel):
    """A shard set and the class split to sample from it."""

    uri: str = Field(description="shard set URI (local path, file://, memory://, s3:// ...) or bundled://NAME")
    split: SplitConfig = Field(default_factory=SplitConfig)
    cache_mb: float = Field(DEFAULT_CACHE_MB, gt=0, description="decoded-class cache per process (MB)")
    max_open_shards: int = Field(DEFAULT_MAX_OPEN_SHARDS, ge=1, description="shard files kept open per process")
    storage_options: dict = Field(default_factory=dict, description="fsspec options (endpoint_url, key ...)")


class WeightedSourceConfig(TaskSourceConfig):
    """One of several training sources (`data.train` as a list): a shard set, its split, and its share of episodes."""

    weight: float = Field(
        1.0, gt=0, description="relative share of training episodes drawn from this source: weights 3 and 1 give 75% "
        "and 25%; they need not sum to 1",
    )


# The tags `data.train` is told apart by (a mapping: one source; a list: weighted sources). pydantic puts the tag into
# an error's location; config.loading leaves it out, so an error reads `data.train.0.weight`, not `data.train.sources.0.weight`.
ONE_SOURCE_TAG, SOURCES_TAG = "source", "sources"
TRAIN_SOURCE_TAGS: tuple[str, ...] = (ONE_SOURCE_TAG, SOURCES_TAG)


def _train_kind(value: Any) -> str:
    return SOURCES_TAG if isinstance(value, (list, tuple)) else ONE_SOURCE_TAG


# One source (a mapping, as every single-source job writes it) or a weighted list; told apart by the value's type, so
# an error names only the form that was given.
TrainSources = Annotated[
    Annotated[TaskSourceConfig, Tag(ONE_SOURCE_TAG)] | Annotated[list[WeightedSourceConfig], Tag(SOURCES_TAG)],
    Discriminator(_train_kind),
]


class RegressionConfig(StrictModel):
    """A generated regression task family, sampled on the fly (no shards)."""

    family: RegressionFamily = Field("sinusoid", description="'sinusoid' (MAML's) or 'linear'")
    shots: int = Field(5, ge=1, description="support points per task (K); the MAML paper reports K = 5, 10")
    queries: int = Field(10, ge=1, description="query points per task")



class ModelConfig(StrictModel):
    """The network: conv-4, ResNet-12 or a wide ResNet for images (metadist.models), the 2×40 MLP for regression."""

    name: ModelName = Field(
        "conv4", description="'conv4', 'resnet12' (64-160-320-640), 'wrn' (WRN-depth-widen; 28-10 by default) for "
        "images; 'mlp' for regression"
    )
    hidden: int | None = Field(
        None, ge=1, description="conv-4 filters / MLP width / ResNet-12's first block (the others scale with it: 64 → "
        "64-160-320-640); None = the literature's (64 at 28×28, 32 at 84×84, 40 for the MLP, 64 for ResNet-12)"
    )
    depth: int = Field(28, ge=10, description="wrn: layers (6n + 4: 16, 22, 28, 40 ...)")
    widen: int = Field(10, ge=1, description="wrn: width multiplier (filters 16·widen, 32·widen, 64·widen)")
    drop_rate: float = Field(
        0.0, ge=0, lt=1, description="resnet12: DropBlock rate in the last two blocks while training (MetaOptNet: 0.1); "
        "off at evaluation"
    )
    downsample: Downsample | None = Field(
        None, description="conv4: 'stride' or 'maxpool'; None = the MAML code's (stride at ≤ 32 px, max-pool above)"
    )
    batch_norm: BatchNormMode = Field(
        "transductive",
        description="'transductive' (batch statistics at train and test, as in the MAML papers) or 'none'",
    )
    pool: Pooling = Field(
        "flatten", description="conv4: the head reads the last feature map 'flatten'ed (MAML paper) or its 'mean' over "
        "positions (the MAML reference code, learn2learn's OmniglotCNN)",
    )



class AlgorithmConfig(StrictModel):
    """The meta-learning algorithm and its inner loop (ignored by the metric learners, which do not adapt weights)."""

    name: AlgorithmName = Field("maml", description=f"one of {ALGORITHMS}")
    inner_lr: float = Field(0.4, gt=0, description="inner SGD step; 0.4 is MAML's Omniglot value (0.01 for sinusoids)")
    inner_steps: int = Field(1, ge=1, description="inner steps while meta-training; MAML uses 1 on 5-way Omniglot")
    eval_inner_steps: int = Field(3, ge=0, description="inner steps at evaluation; MAML evaluates Omniglot with 3")
    eval_shift: int = Field(
        0, ge=0, le=8, description="test-time augmentation (evaluation, eval, predict, serve): each support and query "
        "image is also seen moved by every offset within ±eval_shift px (zero fill), (2·s+1)² copies: the learner adapts "
        "to the support set with its copies, and a query's output is the mean over its copies (protonet and snail: each "
        "example's embedding is the mean of its copies'; for protonet the same probabilities). 0 = off; costs (2·s+1)² "
        "times the evaluation's compute (3 on the embedded default: +1.9 points held out)",
    )
    transductive_steps: int = Field(
        0, ge=0, le=20, description="protonet at test time (evaluation, eval, predict, serve): the prototypes refined "
        "by this many soft k-means steps over the queries classified together (Ren et al. 2018): each query joins every "
        "class weighted by its probability under the current prototypes, and a prototype becomes the weighted mean of "
        "its support examples (weight 1 each) and those queries. A prediction then depends on the other queries of the "
        "same call, as transductive batch norm's already does. 0 = off; 2 on the long ProtoNet jobs (held out: +1.1 "
        "points 5-way with eval_shift 3, +5.0 at 20-way)",
    )
    eval_relabelings: int = Field(
        1, ge=1, le=20, description="snail at test time (evaluation, eval, predict, serve): a query's class "
        "probabilities are the mean over this many relabelings of its task, relabeling r giving class c the label "
        "(c + r) mod N and ordering the support sequence by label as training does, so that each class is read at as "
        "many places of the sequence, under as many labels (at most the test ways). 1 = off (the support sequence "
        "still ordered by label); costs this many passes of the SNAIL head, not of the embedding",
    )
    inner_optimizer: InnerOptimizerName = Field(
        "sgd", description="Reptile and model averaging: the inner loop's optimizer. 'adam' is Reptile's recipe "
        "(β1 = 0, β2 = 0.999, its second moment carried from task to task as the paper's code does, inner_lr ≈ 0.001); "
        "the MAML family differentiates plain SGD only",
    )
    inner_batch: int | None = Field(
        None, ge=1, description="Reptile and model averaging: examples per inner step, taken in turn from the support "
        "set (every class in each batch), cycling; None = the whole support set each step. Reptile's Omniglot recipe: "
        "10, with 10-shot training episodes, so 5 inner steps see each example once",
    )
    zero_head: bool = Field(
        False, description="MAML family (maml, fomaml, anil, metasgd): every task adapts from a zero head rather than "
        "a learned one (the zeroing trick, Kao et al. 2022); with it, first-order MAML learns about as well as MAML. "
        "Other learners have no head that tasks adapt, and ignore it (so a job that sets it can switch learners)",
    )
    prototype_head: bool = Field(
        False, description="MAML family, Reptile and model averaging: every task adapts from the head that makes its "
        "logits ProtoNet's (Proto-MAML, Triantafillou et al. 2020): row k = 2·c_k, bias −‖c_k‖², c_k the mean embedding "
        "of class k's support examples; the MAML family's meta-gradient flows through the prototypes into the body, "
        "Reptile moves the body towards the weights adapted from that start. In 1-shot the support set sits on its "
        "prototypes, so SGD's inner steps barely move it and training is close to ProtoNet's. Others ignore it, as "
        "zero_head",
    )
    prototype_shots: int | None = Field(
        None, ge=1, description="Reptile and model averaging with prototype_head: while meta-training, each task's head "
        "is made of the first prototype_shots examples of each class only (the test episodes' shots), while the inner "
        "steps still train on every support example. Reptile's recipe trains on more shots than it is tested with; a "
        "head made of all of them already fits the examples the inner loop trains on, so the body has little to learn, "
        "where one made of as many shots as a test task has must pull the other examples to it (1 on 5-way 1-shot "
        "after pre-training: 93.2% against 91.1% held out, 500 steps). None = every support example, as at test",
    )
    matching_fce: bool = Field(False, description="Matching Networks: full-context embeddings (LSTMs over the support set)")
    tasks_per_pass: int | None = Field(
        None, ge=1, description="tasks differentiated together (memory grows with it, the result does not change). MAML "
        "family: None = 8 on CPU (fewer for second order with several inner steps), the whole meta-batch on GPU; "
        "metric learners: None = the whole meta-batch (set 1 or 2 for ResNet-12 on 84-pixel images)",
    )

    @model_validator(mode="after")
    def _inner_loop_settings(self) -> "AlgorithmConfig":
        if self.zero_head and self.prototype_head:
            raise ValueError("algorithm.zero_head and algorithm.prototype_head are two starts for the head; set one")
        if self.inner_optimizer != "sgd" and self.name not in MINIBATCH_INNER_LOOP_ALGORITHMS:
            raise ValueError(f"algorithm.inner_optimizer {self.inner_optimizer!r}: only for "
                             f"{' and '.join(MINIBATCH_INNER_LOOP_ALGORITHMS)}; {self.name} adapts with plain SGD")
        if self.inner_batch is not None and self.name not in MINIBATCH_INNER_LOOP_ALGORITHMS:
            raise ValueError(f"algorithm.inner_batch: only for {' and '.join(MINIBATCH_INNER_LOOP_ALGORITHMS)}; "
                             f"{self.name} adapts on the whole support set")
        if self.prototype_shots is not None and not (self.prototype_head and self.name in MINIBATCH_INNER_LOOP_ALGORITHMS):
            raise ValueError(f"algorithm.prototype_shots: only for {' and '.join(MINIBATCH_INNER_LOOP_ALGORITHMS)} with "
                             "algorithm.prototype_head: true (it says how many shots per class the head is made of)")
        if self.name == "meta_lstm" and not self.inner_lr < 1:
            raise ValueError(f"algorithm.inner_lr {self.inner_lr}: meta_lstm starts its input gate (a sigmoid) there, "
                             "so it must be below 1 (0.1 is typical)")
        return self

    @property
    def is_metric(self) -> bool:
        """A metric learner (ProtoNet, Matching, Siamese): embeds only, adapts no weights."""
        return self.name in METRIC_ALGORITHMS


class OptimizerConfig(StrictModel):
    """The outer (meta) optimizer, applied to the mean of the workers' updates."""

    name: OptimizerName = Field("adam", description="'adam' (MAML's choice) or 'sgd'")
    lr: float = Field(1e-3, gt=0, description="outer step; MAML uses Adam at 1e-3 on Omniglot")
    schedule: ScheduleName = Field("constant", description="'constant', 'cosine' or 'linear' (both to 0 over the run's steps; Reptile anneals its outer step linearly)")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps before the schedule")
    clip_norm: float | None = Field(10.0, gt=0, description="clip the update's global L2 norm; None disables")



# -- the job ---------------------------------------------------------------------------------------------------


class DataConfig(StrictModel):
    """Where tasks come from: shard sets for classification, or a generated family for regression."""

    train: TrainSources | None = Field(
        default_factory=lambda: TaskSourceConfig(uri="bundled://omniglot-small1"),
        description="meta-training tasks (classification): one source, or a list of sources each with a `weight`; "
        "each episode comes from one source, drawn by weight. All sources must share the example shape and "
        "preprocessing (the model is built for one input). None with `regression` set",
    )
    test: TaskSourceConfig | None = Field(
        default_factory=lambda: TaskSourceConfig(
            uri="bundled://omniglot-small2", split=SplitConfig(groups=list(SMALL2_NEW_ALPHABETS))
        ),
        description="held-out tasks for evaluation during and after training (classes never seen in training)",
    )
    episode: EpisodeConfig = Field(
        default_factory=lambda: EpisodeConfig(rotations=True),
        description="episode shape; Omniglot is trained with rotated classes as in MAML/ProtoNet",
    )
    test_episode: EpisodeConfig = Field(
        default_factory=EpisodeConfig,
        description="episode shape at evaluation; no rotations, so held-out tasks are the characters as drawn. "
        "It may differ from training (ProtoNet trains with more ways than it is tested on)",
    )
    regression: RegressionConfig | None = Field(
        None, description="set for a regression job (train/test shard sets are then ignored and may be null)"
    )
    verify_checksums: bool = Field(
        DEFAULT_VERIFY_CHECKSUMS,
        description="check each shard's SHA-256 against its manifest the first time a process opens it (one read of "
        "the file per process); false skips it for speed, leaving the size check and `metadist data verify`",
    )

    @property
    def kind(self) -> str:
        return "regression" if self.regression is not None else "classification"

    @property
    def train_sources(self) -> list[tuple[TaskSourceConfig, float]]:
        """The training sources with their weights: one source has weight 1; [] for a regression job."""
        if self.train is None:
            return []
        if isinstance(self.train, list):
            return [(source, source.weight) for source in self.train]
        return [(self.train, 1.0)]

    @model_validator(mode="after")
    def _sources(self) -> "DataConfig":
        if self.regression is None and self.train is None:
            raise ValueError("train must name a shard set (or set regression for a generated task family)")
        if isinstance(self.train, list) and not self.train:
            raise ValueError("train is an empty list: name at least one source ({uri: ..., weight: ...})")
        if self.test_episode.shift:
            raise ValueError("test_episode.shift must be 0: held-out tasks are measured on the images as they are")
        if self.test_episode.variable is not None:
            raise ValueError("test_episode.variable must be unset: held-out episodes keep one shape, so runs compare")
        if self.test_episode.affine.enabled:
            raise ValueError("test_episode.affine must be all 0: held-out tasks are measured on the images as they are")
        return self


Precision = Literal["fp32", "bf16"]


class PretrainConfig(StrictModel):
    """Supervised pre-training of the network on every training class before meta-training (off unless epochs > 0).

    One classifier over all the training split's classes (each rotation and mirror image a class of its own, as
    data.episode makes them), trained with Adam on a one-cycle schedule; meta-training then starts from its weights,
    every parameter but the classifier's head. The embedding a few-shot learner needs is learned in seconds this
    way, and meta-training refines it (the pre-train, then meta-train recipe of the few-shot literature).
    """

    epochs: int = Field(0, ge=0, description="passes over every training example; 0 = no pre-training")
    batch_size: int = Field(128, ge=2, description="examples per pre-training step")
    lr: float = Field(3e-3, gt=0, description="peak learning rate of the one-cycle schedule (Adam)")
    weight_decay: float = Field(0.0, ge=0, description="Adam's L2 penalty during pre-training")


class TrainConfig(StrictModel):
    """The outer loop: how long, how many tasks per step, where it runs, how often it reports."""

    steps: int = Field(400, ge=1, description="outer steps; 400 × 32 tasks take MAML to ~85% on the held-out alphabets (a few minutes on a CPU)")
    meta_batch: int = Field(32, ge=1, description="tasks per outer step (MAML uses 32 on Omniglot)")
    seed: int = Field(0, ge=0, description="seeds initialisation and every episode: same seed, same run")
    time_budget_s: float | None = Field(None, gt=0, description="stop after this much training time (seconds)")
    eval_every: int = Field(100, ge=0, description="held-out evaluation every N steps (0: only at the end)")
    eval_episodes: int = Field(100, ge=1, description="episodes per evaluation during training")
    final_eval_episodes: int = Field(600, ge=1, description="episodes of the final evaluation (600: the literature's protocol)")
    log_every: int = Field(10, ge=1, description="log metrics every N steps")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; None = torch's default")
    retain_freed_memory: bool | None = Field(
        None, description="keep freed memory in the process's C heap for reuse rather than return it to the OS: fewer "
        "page faults, a peak that stays resident (metadist.runtime). None = yes, except for resnet12 and wrn, whose "
        "large activations fragment the kept heap (ResNet-12 on CPU: 1.4-1.9× the peak memory for 1.3× faster steps)",
    )
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'")
    precision: Precision = Field(
        "fp32", description="'fp32', or 'bf16': adaptation, updates, evaluation and serving run under bfloat16 autocast "
        "(matrix products and convolutions in bf16), the meta-parameters and the outer optimizer stay fp32, and task "
        "workers send their updates to the parameter server in bf16",
    )

    @model_validator(mode="after")
    def _device(self) -> "TrainConfig":
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        return self


class CheckpointConfig(StrictModel):
    """Self-describing checkpoints written through fsspec (safetensors + JSON; never pickle)."""

    uri: str | None = Field(None, description=f"directory URI; None = {DEFAULT_CHECKPOINT_DIR.format(name='<job name>')}")
    every: int = Field(200, ge=0, description="save every N outer steps (0: only at the end)")
    keep: int = Field(3, ge=1, description="periodic checkpoints kept (the final one is always kept)")


class TrackingConfig(StrictModel):
    """MLflow tracking. The URI comes from here, else MLFLOW_TRACKING_URI, else a local store."""

    enabled: bool = Field(True, description="record the run in MLflow")
    uri: str | None = Field(None, description="tracking URI; None = $MLFLOW_TRACKING_URI or a local sqlite store")
    experiment: str = Field("metadist", description="MLflow experiment name")
    run_name: str | None = Field(None, description="MLflow run name; None = the job name")
    log_checkpoints: bool = Field(True, description="upload checkpoints as run artifacts")
    log_model: bool = Field(True, description="log the final model as an MLflow pyfunc that adapts and predicts")
    parent_run_id: str | None = Field(
        None, description="create the run as a child of this MLflow run (tag mlflow.parentRunId), as `metadist tune` "
        "does for each trial under its search's run; None = a top-level run",
    )
    log_checkpoint_models: bool = Field(
        True, description="log each periodic checkpoint too as a pyfunc LoggedModel (its step's held-out metrics linked "
        "to it; about 1 MB of code plus the checkpoint each, only at checkpoint.every steps)",
    )
    register_model: bool = Field(True, description="register the final model in the MLflow Model Registry (with log_model)")
    registered_model: str | None = Field(
        None, min_length=1, description="registered model name the final model becomes a version of; None = the job name"
    )
    alias: str = Field(
        "champion", min_length=1, description="registry alias of the best version: moved to the new version only when "
        "its test accuracy (regression: test loss) beats the current holder's",
    )

    @field_validator("alias")
    @classmethod
    def _alias(cls, alias: str) -> str:
        # MLflow reserves these: "latest" and "v<N>" already name versions.
        if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
            raise ValueError(f"{alias!r} is reserved by MLflow's Model Registry (latest, v<number>)")
        return alias


class DistributedConfig(StrictModel):
    """Meta-training on Ray: task workers (actors that each own a GPU) and a parameter-server actor.

    `workers: 0` keeps the in-process local trainer; `metadist train --workers N` sets it from the command line.
    """

    workers: int = Field(0, ge=0, description="task workers (Ray actors); 0 trains in this process (the local trainer)")
    min_workers: int | None = Field(
        None, ge=1,
        description="start, and keep going, once this many workers are up; None = all of them. Fewer than `workers` "
        "makes the run elastic: the others join as the cluster grows (autoscaler or `ray start`)",
    )
    slices: int | None = Field(
        None, ge=1,
        description="sync: contiguous task ranges each meta-batch is cut into; None = workers. Slices are summed in "
        "their order whoever computes them, so a run gives the same bits at any worker count and through failures",
    )
    mode: DistributedMode = Field(
        "sync",
        description="'sync': every outer step waits for its whole meta-batch (equals the local trainer); 'async': each "
        "worker computes whole steps on the newest parameters it has and the server applies them as they arrive",
    )
    max_staleness: int | None = Field(
        None, ge=0,
        description="async: S, the most versions an update's parameters may lag the server's; None = workers - 1, "
        "which lets all W workers contribute (with W in flight, W-1 lag is the normal case). Enforced when steps are "
        "handed out (held only while the oldest in flight is S versions behind and slower than a typical step) and on "
        "arrival (drop or downweight)",
    )
    stale_policy: StalePolicy = Field(
        "drop",
        description="async, an update staler than S: 'drop' (its step is recomputed on fresh parameters) or "
        "'downweight' (applied with its step scaled by 1/(1 + staleness - S): the optimizer's step, not the gradient, "
        "which Adam would normalise back)",
    )
    gpus_per_worker: float | None = Field(
        None, ge=0,
        description="GPUs each worker owns: a fraction (0.5: two workers share one GPU) or a whole number; None = 1 "
        "when the worker runs on CUDA (train.device 'cuda', or 'auto' on a cluster that has or can add GPU nodes), "
        "else 0. Asked of Ray whatever the cluster holds at start, so an autoscaler adds GPU nodes for it",
    )
    cpus_per_worker: float | None = Field(
        None, gt=0, description="CPU slots each worker reserves; None = train.threads, or 1"
    )
    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto' or 'HOST:6379'); None = $RAY_ADDRESS, else a "
        "local Ray started in this process on loopback",
    )
    worker_restarts: int = Field(
        20, ge=-1,
        description="dead workers replaced over the run before it fails (-1: no limit); each costs only its "
        "in-flight tasks, which are recomputed",
    )
    reducers: int | None = Field(
        None, ge=1,
        description="sync: actors that sum fixed groups of a step's slices before the parameter server sums their "
        "partials; None = one per node (placed on it). The server takes in one buffer per reducer per step, whatever "
        "the worker count. A run's bits depend on `slices` and `reducers`, never on which worker computed what",
    )
    slice_timeout_s: float | None = Field(
        None, gt=0,
        description="a slice (sync) or step (async) not back after this long is handed to another worker, its worker "
        "replaced and its late result ignored; None = 10 × the slowest slice seen so far, and at least 60 s",
    )
    slice_retries: int = Field(
        3, ge=0,
        description="times one slice is retried on a fresh worker after its worker raised (CUDA out of memory, an I/O "
        "error) before the run fails with that error",
    )
    server_restarts: int = Field(
        3, ge=0,
        description="times a lost parameter server is restarted within the run from its last checkpoint (the steps "
        "since are recomputed: a synchronous run ends bit-identical) before the run fails",
    )
    start_timeout_s: float = Field(
        300.0, gt=0,
        description="how long to wait for min_workers (or, later, for any worker) to be placed before failing: a "
        "cluster that cannot fit them fails with the resources it lacks, not a hang",
    )

    @model_validator(mode="after")
    def _known(self) -> "DistributedConfig":
        if self.min_workers is not None and self.min_workers > max(self.workers, 1):
            raise ValueError(f"min_workers = {self.min_workers} exceeds workers = {self.workers}")
        return self

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_or_fraction(cls, gpus: float | None) -> float | None:
        if gpus is not None and gpus > 1 and gpus != int(gpus):
            raise ValueError("a worker owns a fraction of one GPU or whole GPUs")
        return gpus

    def staleness_bound(self) -> int:
        """S: max_staleness, or workers - 1."""
        return self.max_staleness if self.max_staleness is not None else max(self.workers - 1, 0)

    @property
    def slice_count(self) -> int:
        return self.slices or max(self.workers, 1)


class JobConfig(StrictModel):
    """One meta-training job: everything `metadist train` needs, printed into every run and checkpoint."""

    name: str = Field("omniglot-5way-1shot", description="job name (run name, output directory)")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "JobConfig":
        metric = self.algorithm.is_metric
        if self.algorithm.transductive_steps and self.algorithm.name != "protonet":
            raise ValueError(f"algorithm.transductive_steps refines ProtoNet's prototypes; {self.algorithm.name!r} has "
                             "none (set it to 0, or algorithm.name to 'protonet')")
        if self.algorithm.eval_relabelings > 1:
            if self.algorithm.name != "snail":
                raise ValueError(f"algorithm.eval_relabelings relabels SNAIL's support sequence; {self.algorithm.name!r} "
                                 "reads no sequence (set it to 1, or algorithm.name to 'snail')")
            if self.algorithm.eval_relabelings > self.data.test_episode.ways:
                raise ValueError(f"algorithm.eval_relabelings {self.algorithm.eval_relabelings}: a "
                                 f"{self.data.test_episode.ways}-way task has {self.data.test_episode.ways} distinct "
                                 "relabelings (data.test_episode.ways)")
        if self.data.kind == "regression":
            if metric:
                raise ValueError(f"algorithm.name {self.algorithm.name!r} is a classifier; regression needs a weight-adapting algorithm")
            if self.model.name != "mlp":
                raise ValueError("model.name must be 'mlp' for regression (data.regression is set)")
            if self.pretrain.epochs:
                raise ValueError("pretrain.epochs must be 0 for regression: pre-training classifies the training classes")
            if self.algorithm.prototype_head:
                raise ValueError("algorithm.prototype_head must be false for regression: there are no classes to make "
                                 "prototypes of")
            if self.algorithm.eval_shift:
                raise ValueError("algorithm.eval_shift must be 0 for regression: it moves images")
        else:
            if self.model.name == "mlp":
                raise ValueError("model.name 'mlp' is for regression; image classification takes 'conv4', 'resnet12' or 'wrn'")
            train_ways, test_ways = self.data.episode.ways, self.data.test_episode.ways
            prototype_shots, train_shots = self.algorithm.prototype_shots, self.data.episode.shots
            if prototype_shots is not None and prototype_shots > train_shots:
                raise ValueError(f"algorithm.prototype_shots = {prototype_shots} exceeds data.episode.shots = "
                                 f"{train_shots}: the head is made of some of each class's training shots")
            if self.algorithm.name == "snail" and test_ways != train_ways:
                raise ValueError(
                    f"data.test_episode.ways = {test_ways} differs from data.episode.ways = {train_ways}: snail's output "
                    "layer has one logit per training way, so it is tested on tasks of as many ways"
                )
            variable = self.data.episode.variable
            if variable is not None and variable.min_ways < train_ways and self.algorithm.name not in VARIABLE_WAYS_ALGORITHMS:
                raise ValueError(
                    f"data.episode.variable.min_ways = {variable.min_ways} < ways: {self.algorithm.name} cannot learn "
                    f"from episodes of varying ways; those that can: {', '.join(VARIABLE_WAYS_ALGORITHMS)}"
                )
            if variable is not None and variable.imbalanced_shots and self.algorithm.name not in VARIABLE_SHOTS_ALGORITHMS:
                raise ValueError(
                    f"data.episode.variable.imbalanced_shots: {self.algorithm.name} needs equal shots per class; those "
                    f"that take unequal shots: {', '.join(VARIABLE_SHOTS_ALGORITHMS)}"
                )
            if not metric and test_ways > train_ways:
                raise ValueError(
                    f"data.test_episode.ways = {test_ways} exceeds data.episode.ways = {train_ways}: "
                    f"a {self.algorithm.name} model's head has one output per training way"
                )
        d = self.distributed
        device = self.train.device
        if d.workers and device.startswith("cuda:") and int(device.split(":")[1]) >= max(1, int(d.gpus_per_worker or 1)):
            raise ValueError(
                f"train.device = {device!r} with distributed.workers = {d.workers}: a worker sees only the GPUs Ray gave "
                f"it, as cuda:0 .. cuda:{max(1, int(d.gpus_per_worker or 1)) - 1}; use 'cuda' (or 'auto')"
            )
        if d.workers and device.startswith("cuda") and d.gpus_per_worker == 0:
            raise ValueError(f"train.device = {device!r} with distributed.gpus_per_worker = 0: a worker without a GPU cannot use CUDA")
        if d.workers and d.mode == "sync" and d.slice_count > self.train.meta_batch:
            raise ValueError(
                f"distributed.slices = {d.slice_count} (or workers) exceeds train.meta_batch = {self.train.meta_batch}: "
                "a slice would hold no task"
            )
        return self

    def retains_freed_memory(self) -> bool:
        """train.retain_freed_memory, or its default for this job's model (metadist.runtime)."""
        if self.train.retain_freed_memory is not None:
            return self.train.retain_freed_memory
        return self.model.name not in FRAGMENTING_MODELS

    def checkpoint_dir(self) -> str:
        """Where this job's checkpoints go: checkpoint.uri, else the default folder named after the job."""
        return self.checkpoint.uri or DEFAULT_CHECKPOINT_DIR.format(name=self.name)

    def flat(self) -> dict[str, str]:
        """Dotted key → value for every setting (MLflow params); a list of sections is numbered (data.train.0.uri)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for i, v in enumerate(value):  # a list of sections (data.train's sources): data.train.0.uri ...
                    walk(f"{prefix}.{i}", v)
            else:
                out[prefix] = "null" if value is None else str(value)

        walk("", self.model_dump(mode="json"))
        return out
