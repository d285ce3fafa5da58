"""N-way K-shot Q-query episodes from a shard set, or from several weighted ones, deterministic in (seed, step, task index).

>>> sampler = EpisodeSampler(ShardSet(uri), EpisodeConfig(ways=5, shots=1, queries=5), seed=0)
>>> batch = sampler.sample(step=0, task_indices=range(32))   # ClassificationBatch, T = 32
>>> mixed = MultiSourceSampler([sampler, other], weights=[3, 1], seed=0)   # 3 episodes in 4 from `sampler`

The same (seed, step, task index) gives the same episode whichever process asks, in whatever order, alone or
in a batch: the basis of reproducible distributed runs (the trainer assigns task indices, not workers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import torch

from metadist.config import DEFAULT_CACHE_MB, EpisodeConfig, SplitConfig
from metadist.data import rng
from metadist.data.cache import ClassCache
from metadist.data.episodes import ClassificationBatch
from metadist.data.shapes import EpisodeShape, episode_shape
from metadist.data.shardset import ShardSet
from metadist.data.splits import select_classes
from metadist.errors import EpisodeError

ROTATIONS = 4  # quarter turns: with rotation augmentation each class becomes four
REFLECTIONS = 2  # as drawn and mirrored: with reflection augmentation each class becomes two


class EpisodeSampler:
    def __init__(
        self,
        shards: ShardSet,
        episode: EpisodeConfig,
        *,
        split: SplitConfig | None = None,
        seed: int,
        cache_mb: float = DEFAULT_CACHE_MB,
    ) -> None:
        self.shards = shards
        self.episode = episode
        self.seed = int(seed)
        manifest = shards.manifest
        self.classes = select_classes(manifest, split or SplitConfig(), where=shards.uri)
        # Unequal shots give a class what it can spare after its queries (1 at least); fixed shots need them all.
        least_shots = 1 if episode.variable is not None and episode.variable.imbalanced_shots else episode.shots
        for index in self.classes:
            info = manifest.classes[index]
            if info.count < least_shots + episode.queries:
                raise EpisodeError(
                    f"{shards.uri}: class {info.name!r} has {info.count} examples, fewer than "
                    f"shots + queries = {least_shots} + {episode.queries}"
                )
        _, height, width = manifest.example_shape
        if episode.rotations and height != width:
            raise EpisodeError(f"{shards.uri}: episode.rotations needs square examples, these are {height}×{width}")
        # Each class is `variants` virtual classes: virtual id = class position × variants + variant, and a variant
        # is a quarter-turn count plus ROTATIONS × mirrored (so rotations alone number them as they always have).
        self.variants = (ROTATIONS if episode.rotations else 1) * (REFLECTIONS if episode.reflections else 1)
        self.pool = len(self.classes) * self.variants
        if episode.ways > self.pool:
            augmented = [name for name in ("rotations", "reflections") if getattr(episode, name)]
            raise EpisodeError(
                f"{shards.uri}: episode.ways = {episode.ways} but the split has only {self.pool} classes"
                + (f" ({' and '.join(augmented)} included)" if augmented else "")
            )
        self.counts = np.array([manifest.classes[i].count for i in self.classes], dtype=np.int64)
        self.smallest_class = int(self.counts.min())
        self.cache = ClassCache(shards, self.classes, cache_mb)
        if self.cache.slots < min(episode.ways, len(self.classes)):
            raise EpisodeError(
                f"{shards.uri}: cache_mb={cache_mb} holds {self.cache.slots} class(es) but one episode may need "
                f"{min(episode.ways, len(self.classes))} (episode.ways); raise cache_mb"
            )

    def shape(self, step: int) -> EpisodeShape:
        """Step `step`'s episode shape: the configured one, or Meta-Dataset's drawn one (episode.variable)."""
        return episode_shape(self.episode, self.seed, step, self.smallest_class)

    def plan(self, step: int, task_indices, shape: EpisodeShape | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The episode choices without any pixels: virtual class ids [T, N] and example rows [T, N, K_max+Q] (class
        c's support is its first shots[c] rows, its queries the Q after them)."""
        tasks = np.asarray(task_indices, dtype=np.int64).reshape(-1)
        shape = shape or self.shape(step)
        n, per_class = shape.ways, shape.most_shots + shape.queries
        virtual = rng.choose(self.seed, step, tasks, rng.STREAM_CLASSES, self.pool, n)  # [T, N]
        base = virtual // self.variants
        rows = rng.choose(self.seed, step, tasks, rng.STREAM_EXAMPLES, self.counts[base], per_class, lead=(n,))  # [T, N, K+Q]
        return virtual, rows

    def sample(self, step: int, task_indices, shape: EpisodeShape | None = None) -> ClassificationBatch:
        """Tasks `task_indices` of step `step`; `shape` (a MultiSourceSampler's, shared by its sources) or the
        step's own."""
        tasks = np.asarray(task_indices, dtype=np.int64).reshape(-1)
        shape = shape or self.shape(step)
        virtual, rows = self.plan(step, tasks, shape)
        base, variant = virtual // self.variants, virtual % self.variants
        quarter_turns, mirrored = variant_transforms(variant, self.episode.rotations)
        class_index = self.classes[base]  # manifest indices [T, N]
        slots = self.cache.slot_of[class_index]
        if (slots >= 0).all():  # the common case once the cache is warm: no bookkeeping beyond a timestamp
            self.cache.touch(slots)
            pixels = self._gather(slots, rows, shape)
        elif len(np.unique(class_index)) <= self.cache.slots:
            unique, inverse = self._unique(class_index)
            pixels = self._gather(self.cache.ensure(unique)[inverse], rows, shape)
        else:  # more distinct classes than the cache holds at once: gather task by task
            pixels = torch.cat([
                self._gather(self.cache.ensure(u)[i], rows[t : t + 1], shape)
                for t in range(len(tasks))
                for u, i in [self._unique(class_index[t : t + 1])]
            ])
        t, support = len(tasks), shape.support_size
        # Mirror, then rotate, the uint8 pixels (a quarter of the bytes of float32), grouped by transform.
        array = pixels.numpy()
        if self.episode.reflections:
            where = np.nonzero(self._per_example(mirrored, shape) == 1)
            if len(where[0]):
                array[where] = np.flip(array[where], axis=-1)
        if self.episode.rotations:
            turns = self._per_example(quarter_turns, shape)
            for turn in range(1, ROTATIONS):
                where = np.nonzero(turns == turn)
                if len(where[0]):
                    array[where] = np.rot90(array[where], turn, axes=(-2, -1))
        if self.episode.shift:
            pixels = self._shifted(pixels, step, tasks)
        x = pixels.to(torch.float32).div_(255)  # x / 255, as the manifest documents
        if self.episode.affine.enabled:
            x = self._warped(x, step, tasks)
        support_y, query_y = shape.labels
        return ClassificationBatch(
            support_x=x[:, :support],
            support_y=support_y.expand(t, -1).clone(),
            query_x=x[:, support:],
            query_y=query_y.expand(t, -1).clone(),
            class_index=torch.from_numpy(class_index),
            quarter_turns=torch.from_numpy(quarter_turns),
            mirrored=torch.from_numpy(mirrored.astype(bool)),
            task_indices=torch.from_numpy(tasks),
            source_index=torch.zeros(t, dtype=torch.int64),
            step=int(step),
        )

    @staticmethod
    def _per_example(per_class: np.ndarray, shape: EpisodeShape) -> np.ndarray:
        """[T, N] per label → [T, Σk_c + N·Q] per example, in _gather's layout (all supports, then all queries)."""
        return np.concatenate([per_class[:, shape.support_slots[0]], per_class[:, shape.query_slots[0]]], axis=1)

    def _gather(self, slots: np.ndarray, rows: np.ndarray, shape: EpisodeShape) -> torch.Tensor:
        """uint8 [T, Σk_c + N·Q, C, H, W]: all support examples (class by class), then all queries.

        One index_select over the flattened arena, straight into the final layout: no float copies to slice.
        """
        arena = self.cache.arena
        flat = slots[..., None] * arena.shape[1] + rows  # [T, N, K_max+Q] rows of arena.view(-1, C, H, W)
        (sc, sp), (qc, qp) = shape.support_slots, shape.query_slots
        order = np.concatenate([flat[:, sc, sp], flat[:, qc, qp]], axis=1)
        picked = arena.view(-1, *arena.shape[2:]).index_select(0, torch.from_numpy(order.reshape(-1)))
        return picked.view(len(slots), order.shape[1], *arena.shape[2:])

    def _shifted(self, pixels: torch.Tensor, step: int, tasks: np.ndarray) -> torch.Tensor:
        """Each example moved by its own (dy, dx) in [-shift, shift]², drawn from (seed, step, task, example):
        the content moves, the border fills with zeros (Omniglot's background; ink is bright after import)."""
        s = self.episode.shift
        t, m, c, h, w = pixels.shape
        u = rng.uniform(self.seed, step, tasks, rng.STREAM_SHIFTS, (m, 2))  # [T, M, 2]
        offsets = torch.from_numpy(np.floor(u * (2 * s + 1)).astype(np.int64) - s).view(t * m, 2)
        return shift_examples(pixels.view(t * m, c, h, w), offsets, s).view(t, m, c, h, w)

    def _warped(self, x: torch.Tensor, step: int, tasks: np.ndarray) -> torch.Tensor:
        """Each example warped by its own rotation, scale and shear about the image centre, drawn from
        (seed, step, task, example); bilinear, zeros outside the image."""
        jitter = self.episode.affine
        t, m, c, h, w = x.shape
        u = torch.from_numpy(2 * rng.uniform(self.seed, step, tasks, rng.STREAM_AFFINE, (m, 3)) - 1).view(t * m, 3)
        angle, shear = torch.deg2rad(u[:, 0] * jitter.degrees), torch.deg2rad(u[:, 2] * jitter.shear)
        scale = 1 + u[:, 1] * jitter.scale
        cos, sin, zero, one = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
        rotate = torch.stack([cos, -sin, sin, cos], -1).view(-1, 2, 2)
        skew = torch.stack([one, torch.tan(shear), zero, one], -1).view(-1, 2, 2)
        forward = rotate @ skew * scale[:, None, None]  # where the content goes, in normalized (x, y) coordinates
        # affine_grid maps each output position to the input position it samples: the inverse warp, no translation.
        theta = torch.cat([torch.linalg.inv(forward), torch.zeros(t * m, 2, 1, dtype=forward.dtype)], -1).float()
        flat = x.view(t * m, c, h, w)
        grid = torch.nn.functional.affine_grid(theta, list(flat.shape), align_corners=False)
        warped = torch.nn.functional.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return warped.view(t, m, c, h, w)

    @staticmethod
    def _unique(class_index: np.ndarray):
        unique, inverse = np.unique(class_index, return_inverse=True)
        return unique, inverse.reshape(class_index.shape)


def variant_transforms(variant, rotations: bool):
    """A virtual class's variant (numpy or torch integers) as (quarter turns, mirrored): a quarter-turn count plus
    ROTATIONS × mirrored when rotations make classes, else the mirror flag alone."""
    if rotations:
        return variant % ROTATIONS, variant // ROTATIONS
    return variant * 0, variant


def shift_examples(pixels: torch.Tensor, offsets: torch.Tensor, shift: int) -> torch.Tensor:
    """Examples [M, C, H, W] each moved by its (dy, dx) = offsets[i] (int64 [M, 2], each within ±shift): the content
    moves, the border fills with zeros (Omniglot's background; ink is bright after import)."""
    m, c, h, w = pixels.shape
    s = shift
    padded = torch.nn.functional.pad(pixels, (s, s, s, s))  # zeros around
    rows = torch.arange(h)[None, :] + (s - offsets[:, :1])  # out[y] = in[y - dy] = padded[y - dy + s]
    cols = torch.arange(w)[None, :] + (s - offsets[:, 1:])
    return padded[torch.arange(m)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def check_same_examples(shards: Sequence[ShardSet], names: Sequence[str]) -> None:
    """Refuse sources whose examples differ in shape or preprocessing: one model is built for one input.

    `names` says where each source is configured (e.g. "data.train[1]"); the error names both sources and shapes.
    """
    first = shards[0].manifest
    for name, other in zip(names[1:], shards[1:]):
        m = other.manifest
        if m.example_shape != first.example_shape or m.preprocessing != first.preprocessing:
            what, a, b = (
                ("shape", list(first.example_shape), list(m.example_shape)) if m.example_shape != first.example_shape
                else ("preprocessing", first.preprocessing, m.preprocessing)
            )
            raise EpisodeError(
                f"{names[0]} ({shards[0].uri}) has example {what} {a} but {name} ({other.uri}) has {b}: all training "
                "sources must share the example shape and preprocessing (the model is built for one input)"
            )


class MultiSourceSampler:
    """Episodes from several sources (one EpisodeSampler each), every episode from one source drawn by weight.

    Task t of step s comes from source i with probability weights[i] / sum(weights), drawn from (seed, s, t) alone
    (rng.STREAM_SOURCE), and is then exactly the episode source i's sampler gives for (s, t): so the episode is the
    same whatever the batch, slice or worker that asks for it. All sources share one EpisodeConfig and one example
    shape, so a batch that mixes sources stacks into the same [T, ...] tensors; `source_index` says which is which.
    """

    def __init__(self, samplers: Sequence[EpisodeSampler], weights: Sequence[float], *, seed: int,
                 names: Sequence[str] | None = None) -> None:
        if not samplers or len(samplers) != len(weights):
            raise ValueError(f"{len(samplers)} sampler(s) and {len(weights)} weight(s): one weight per source, at least one source")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"source weights must be positive and finite, got {list(weights)}")
        names = list(names) if names is not None else [f"source {i}" for i in range(len(samplers))]
        episode = samplers[0].episode
        for name, sampler in zip(names, samplers):
            if sampler.episode != episode:
                raise ValueError(f"{name}: every source samples the same episode shape, got {sampler.episode} and {episode}")
        check_same_examples([s.shards for s in samplers], names)
        self.samplers = list(samplers)
        self.names = names
        self.episode = episode
        self.seed = int(seed)
        self.weights = np.asarray(weights, dtype=np.float64)
        self._cumulative = np.cumsum(self.weights)  # source i holds [cumulative[i-1], cumulative[i]) of [0, total)

    @property
    def shards(self) -> ShardSet:
        """The first source's shard set: its example shape and preprocessing are every source's."""
        return self.samplers[0].shards

    def shape(self, step: int) -> EpisodeShape:
        """Step `step`'s episode shape, the same for every source (class sizes: the smallest class of any source)."""
        return episode_shape(self.episode, self.seed, step, min(s.smallest_class for s in self.samplers))

    def sources(self, step: int, task_indices) -> np.ndarray:
        """Each task's source [T], from (seed, step, task) alone: P(source i) = weights[i] / sum(weights)."""
        tasks = np.asarray(task_indices, dtype=np.int64).reshape(-1)
        u = rng.uniform(self.seed, step, tasks, rng.STREAM_SOURCE, ()) * self._cumulative[-1]  # [T] in [0, total)
        return np.minimum(np.searchsorted(self._cumulative, u, side="right"), len(self.samplers) - 1)

    def sample(self, step: int, task_indices) -> ClassificationBatch:
        tasks = np.asarray(task_indices, dtype=np.int64).reshape(-1)
        which = self.sources(step, tasks)
        parts = [(torch.from_numpy(np.flatnonzero(which == i)), sampler) for i, sampler in enumerate(self.samplers)]
        # Each source samples its own tasks in one call, all in the step's one shape; the episodes are then put back in
        # task order.
        shape = self.shape(step)
        batches = [(where, sampler.sample(step, tasks[where.numpy()], shape)) for where, sampler in parts if len(where)]
        merged: dict[str, object] = {"step": int(step)}
        for f in fields(ClassificationBatch):
            if f.name == "step":
                continue
            first = getattr(batches[0][1], f.name)
            out = first.new_empty((len(tasks), *first.shape[1:]))
            for where, batch in batches:
                out[where] = getattr(batch, f.name)
            merged[f.name] = out
        merged["source_index"] = torch.from_numpy(which.astype(np.int64))
        return ClassificationBatch(**merged)  # type: ignore[arg-type]
