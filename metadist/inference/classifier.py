"""A meta-trained checkpoint applied to a user's own few-shot problem: adapt to a support set, classify queries.

>>> clf = FewShotClassifier.from_checkpoint("outputs/omniglot-5way-1shot/checkpoints")
>>> task = clf.adapt(support_images, support_labels)        # encoded image bytes (any size/format) or arrays
>>> [p.label for p in clf.classify(task, query_images)]

Images go through the preprocessing recorded in the checkpoint (the training shards'), so a photo of any size
becomes what the network was trained on. With batch norm in its transductive form (the MAML papers'), the
queries of one `classify` call are normalised together, as the query set of an episode is at training time.

Thread safety: torch.func.functional_call swaps the module's parameters while it runs, so two threads sharing
one model would compute with each other's weights. Calls on one classifier are therefore serialised by a lock;
for parallel work make one classifier per thread (the gRPC server keeps one per compute slot).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metadist.algorithms.functional import Params
from metadist.core import autocast, build
from metadist.core import checkpoint as ckpt_io
from metadist.data.images import MAX_IMAGE_PIXELS, ImagePreprocessing
from metadist.errors import DataImportError, PredictionError

ImageInput = bytes | np.ndarray


@dataclass(frozen=True)
class Prediction:
    label: str
    scores: dict[str, float]  # class → probability (softmax of the logits), summing to 1


@dataclass(frozen=True)
class AdaptedTask:
    """A support set turned into task state (adapted weights or prototypes): reusable for many queries."""

    labels: tuple[str, ...]  # class index → label
    state: Params  # the learner's adapted state, leading task dimension of 1
    shots: int  # support examples in total


class FewShotClassifier:
    def __init__(self, checkpoint: ckpt_io.Checkpoint, *, device: str | torch.device = "cpu", inner_steps: int | None = None,
                 where: str = "checkpoint", max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        spec = checkpoint.model_spec
        if spec.kind != "classification" or spec.preprocessing is None:
            raise PredictionError(f"{where}: holds a {spec.kind} model; few-shot image classification needs a classifier checkpoint")
        self.job = checkpoint.job
        self.spec = spec
        self.where = where
        self.device = torch.device(device)
        self.preprocessing = ImagePreprocessing.from_dict(spec.preprocessing)
        self.max_image_pixels = max_image_pixels  # larger images are refused from their header, never decoded
        self.model, self.learner = build(self.job, spec)
        self.model.to(self.device).eval()  # serving never trains: training-only layers (DropBlock) stay off
        expected = set(self.learner.init_meta_params())
        if set(checkpoint.meta_params) != expected:
            missing, extra = sorted(expected - set(checkpoint.meta_params)), sorted(set(checkpoint.meta_params) - expected)
            raise PredictionError(f"{where}: parameters do not fit {self.job.model.name}/{self.job.algorithm.name} (missing {missing}, unexpected {extra})")
        self.meta_params = {k: v.to(self.device) for k, v in checkpoint.meta_params.items()}
        self.inner_steps = self.job.algorithm.eval_inner_steps if inner_steps is None else inner_steps
        self.max_ways = spec.outputs  # the head's size for weight-adapting learners; None: any number of classes
        self._lock = threading.Lock()  # see "Thread safety" above

    @classmethod
    def from_checkpoint(cls, uri: str, *, device: str | torch.device = "cpu", inner_steps: int | None = None) -> "FewShotClassifier":
        return cls(ckpt_io.load(uri), device=device, inner_steps=inner_steps, where=uri)

    # -- inputs ------------------------------------------------------------------------------------------------------
    def load_image(self, image: ImageInput, source: str) -> np.ndarray:
        """Encoded bytes (decoded and resized) or a uint8 array of the model's input shape → uint8 [C, H, W]."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            try:
                return self.preprocessing.decode(bytes(image), source, self.max_image_pixels)
            except DataImportError as exc:
                raise PredictionError(str(exc)) from exc
        array = np.asarray(image)
        shape = self.preprocessing.shape
        if array.ndim == 2 and shape[0] == 1:
            array = array[None]
        if array.shape != shape or array.dtype != np.uint8:
            raise PredictionError(f"{source}: expected encoded image bytes or a uint8 array of shape {list(shape)}, got {array.dtype} {list(array.shape)}")
        return array

    def _tensor(self, images: Sequence[ImageInput], what: str) -> torch.Tensor:
        arrays = [self.load_image(image, f"{what}[{i}]" if not isinstance(image, _Named) else image.source) for i, image in enumerate(images)]
        return torch.from_numpy(np.stack(arrays)).to(self.device, torch.float32).div_(255.0)

    # -- adaptation and prediction -------------------------------------------------------------------------------------
    def adapt(self, support_images: Sequence[ImageInput], support_labels: Sequence[str]) -> AdaptedTask:
        if len(support_images) != len(support_labels):
            raise PredictionError(f"support: {len(support_images)} images but {len(support_labels)} labels")
        labels = tuple(sorted(set(map(str, support_labels))))
        if len(labels) < 2:
            raise PredictionError(f"support: a few-shot task needs at least 2 classes, got {len(labels)} ({list(labels)})")
        if self.max_ways is not None and len(labels) > self.max_ways:
            raise PredictionError(
                f"support: {len(labels)} classes, but this {self.job.algorithm.name} model was trained {self.max_ways}-way "
                f"and can tell apart at most {self.max_ways}"
            )
        index = {label: i for i, label in enumerate(labels)}
        x = self._tensor(support_images, "support")
        y = torch.tensor([index[str(label)] for label in support_labels], device=self.device)
        with self._lock, autocast(self.job.train.precision, self.device):
            state = self.learner.adapt_at_test(self.meta_params, x[None], y[None], self.inner_steps)
        return AdaptedTask(labels, {k: v.detach() for k, v in state.items()}, len(support_images))

    def classify(self, task: AdaptedTask, query_images: Sequence[ImageInput]) -> list[Prediction]:
        if not query_images:
            return []
        x = self._tensor(query_images, "query")
        with self._lock, torch.no_grad(), autocast(self.job.train.precision, self.device):
            logits = self.learner.predict_at_test(self.meta_params, task.state, x[None])[0]
        # A head wider than this task's classes (a 5-way model on 3 classes): the unused outputs are ignored.
        probs = torch.softmax(logits[:, : len(task.labels)].double(), dim=-1).cpu().numpy()
        return [
            Prediction(task.labels[int(row.argmax())], {label: float(p) for label, p in zip(task.labels, row)}) for row in probs
        ]

    def predict(self, support_images, support_labels, query_images) -> list[Prediction]:
        return self.classify(self.adapt(support_images, support_labels), query_images)


class _Named(bytes):
    """Image bytes that remember the file they came from, so errors name it."""

    source: str

    def __new__(cls, data: bytes, source: str) -> "_Named":
        obj = super().__new__(cls, data)
        obj.source = source
        return obj


def named(data: bytes, source: str) -> bytes:
    return _Named(data, source)
