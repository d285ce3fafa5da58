"""Supervised pre-training (`pretrain:`): one classifier over every training class, whose network meta-training then
starts from.

Every class of the training split, and each of its rotations and mirror images when data.episode makes those
classes of their own, is one label (the episode sampler's virtual classes, across all training sources). The job's
network is built with a head of that many outputs and trained with Adam on a one-cycle schedule, examples moved by
up to data.episode.shift pixels as in episodes. Meta-training then starts from every meta-parameter that the
classifier shares by name and shape, except the head: the learner's own head (its initial one, or zeros with
algorithm.zero_head) and parameters the classifier lacks (Meta-SGD's learning rates, SNAIL's attention ...) keep
their initial values.

The examples are held in memory as the shards store them (uint8, each class once: rotations and mirrors are made per
batch), so a training split must fit in memory once (a split larger than half the machine's memory is refused
before anything is read); pre-training runs in the process that drives the run (the driver of a distributed run), on
train.device; every batch is drawn from a generator seeded by train.seed,
so the same job pre-trains to the same weights.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from metadist.algorithms.functional import Params
from metadist.config import JobConfig
from metadist.core import ModelSpec, autocast
from metadist.core.tasks import TaskSampler
from metadist.data import EpisodeSampler, MultiSourceSampler
from metadist.data.sampler import ROTATIONS, shift_examples, variant_transforms
from metadist.errors import ConfigError
from metadist.models import build_model

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict[str, float]], None]
# Pre-training refuses a training split whose examples would take more than this share of the machine's memory.
MEMORY_SHARE = 0.5


def physical_memory_bytes() -> int | None:
    """This machine's memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class LabelledExamples:
    """Every training example once (uint8 [E, C, H, W]) with its class, and how many variants each class has."""

    pixels: torch.Tensor
    classes: torch.Tensor  # int64 [E]: class position across all sources
    num_classes: int  # before variants
    variants: int  # 1, 4 (rotations), 2 (mirrors) or 8
    rotations: bool
    reflections: bool

    @classmethod
    def of(cls, sampler: EpisodeSampler | MultiSourceSampler, progress: bool = False) -> "LabelledExamples":
        samplers = sampler.samplers if isinstance(sampler, MultiSourceSampler) else [sampler]
        needed = sum(int(s.counts.sum()) * int(np.prod(s.shards.manifest.example_shape)) for s in samplers)
        available = physical_memory_bytes()
        if available and needed > MEMORY_SHARE * available:
            raise ConfigError(
                f"pretrain.epochs: pre-training holds the training split's examples in memory, "
                f"{needed / 2**30:.1f} GiB of {', '.join(s.shards.uri for s in samplers)}, more than "
                f"{MEMORY_SHARE:.0%} of this machine's {available / 2**30:.1f} GiB; pre-train on fewer classes "
                "(data.train's split) or set pretrain.epochs to 0"
            )
        pixels, classes, offset = [], [], 0
        total = sum(len(s.classes) for s in samplers)
        with tqdm(total=total, desc="reading training classes", unit="class", disable=not progress, leave=False) as bar:
            for source in samplers:
                for position, index in enumerate(source.classes):
                    examples = source.shards.read_class(int(index))
                    pixels.append(torch.from_numpy(np.array(examples)))  # a copy: the shard's pages are read-only
                    classes.append(torch.full((len(examples),), offset + position, dtype=torch.int64))
                    bar.update()
                offset += len(source.classes)
        episode = samplers[0].episode
        return cls(torch.cat(pixels), torch.cat(classes), offset, samplers[0].variants, episode.rotations, episode.reflections)

    @property
    def labels(self) -> int:
        return self.num_classes * self.variants

    def batch(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items are example × variants + variant; (uint8 pixels, label) with each item's rotation and mirror made,
        numbered as the episode sampler numbers its virtual classes (class × variants + variant)."""
        example, variant = items // self.variants, items % self.variants
        pixels = self.pixels[example].clone()
        turns, mirrored = variant_transforms(variant, self.rotations)
        if self.reflections:
            where = mirrored == 1
            pixels[where] = pixels[where].flip(-1)
        for turn in range(1, ROTATIONS if self.rotations else 1):
            where = turns == turn
            pixels[where] = torch.rot90(pixels[where], turn, dims=(-2, -1))
        return pixels, self.classes[example] * self.variants + variant


def pretrain(job: JobConfig, spec: ModelSpec, meta_params: Params, sampler: TaskSampler, *,
             device: torch.device, progress: bool = True, on_epoch: EpochHook | None = None) -> Params:
    """`meta_params` with every parameter the pre-trained classifier shares (but its head) taken from it.

    on_epoch(epoch, metrics) is called after each epoch with loss, accuracy (on the epoch's training batches) and
    seconds.
    """
    if not isinstance(sampler, (EpisodeSampler, MultiSourceSampler)):
        raise TypeError(f"pre-training classifies images; {type(sampler).__name__} samples no classes")
    config, shift = job.pretrain, job.data.episode.shift
    data = LabelledExamples.of(sampler, progress)
    torch.manual_seed(job.train.seed)
    net = build_model(job.model, input_shape=spec.input_shape, outputs=data.labels).to(device)
    head = set(getattr(net, "HEAD", ()))
    shared = {k: v for k, v in meta_params.items() if k not in head}
    # Start from the learner's own initial weights, so that a job pre-trained for 0 steps would be the job as it is.
    net.load_state_dict({k: v for k, v in shared.items() if k in net.state_dict()}, strict=False)
    items = len(data.classes) * data.variants
    per_epoch = max(items // config.batch_size, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.epochs * per_epoch)
    generator = torch.Generator().manual_seed(job.train.seed)
    log.info("pre-training on %d classes (%d examples × %d variants), %d epochs of %d batches",
             data.labels, len(data.classes), data.variants, config.epochs, per_epoch)
    net.train()
    bar = tqdm(total=config.epochs * per_epoch, desc="pre-training", unit="batch", disable=not progress, leave=False)
    for epoch in range(config.epochs):
        started, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        order = torch.randperm(items, generator=generator)
        for b in range(per_epoch):
            pixels, labels = data.batch(order[b * config.batch_size : (b + 1) * config.batch_size])
            if shift:
                offsets = torch.randint(-shift, shift + 1, (len(pixels), 2), generator=generator)
                pixels = shift_examples(pixels, offsets, shift)
            x, y = pixels.to(device=device, dtype=torch.float32).div_(255), labels.to(device)
            with autocast(job.train.precision, device):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update()
        metrics = {"loss": loss_sum / seen, "accuracy": correct / seen, "epoch_s": time.perf_counter() - started}
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.3f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)
    bar.close()
    trained = {k: v.detach() for k, v in net.state_dict().items()}
    return {k: trained[k].to(v.device, v.dtype).clone() if k in trained and k not in head and trained[k].shape == v.shape
            else v for k, v in meta_params.items()}
