"""train.precision: bf16 autocast in training, evaluation and serving, fp32 master weights, bf16 updates in transit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metadist.algorithms.base import Update
from metadist.core import checkpoint as ckpt_io
from metadist.distributed.flat import FlatUpdate, ParamLayout, sum_in_order
from metadist.training import LocalTrainer
from tests.helpers import tiny_job


@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_bf16_training_follows_fp32_within_bf16_rounding(algorithm, small1_uri, small2_uri, tmp_path):
    """Six steps under bf16 autocast stay within a stated tolerance of fp32 (bf16 keeps 8 bits of mantissa: relative
    errors of 0.4% per operation): meta-losses within 3%, parameters within 2 · lr · steps of each other (see below),
    held-out accuracy within 10 points on 8 episodes. The meta-parameters and the optimizer's state stay fp32."""
    runs = {}
    for precision in ("fp32", "bf16"):
        job = tiny_job(small1_uri, small2_uri, tmp_path / precision, f"algorithm.name={algorithm}",
                       f"train.precision={precision}", "train.log_every=1")
        trainer = LocalTrainer(job, progress=False)
        runs[precision] = (trainer, trainer.run())
    (fp32, a), (bf16, b) = runs["fp32"], runs["bf16"]
    for x, y in zip(a.history, b.history, strict=True):
        assert y["loss_after"] == pytest.approx(x["loss_after"], rel=0.03), (x["step"], x["loss_after"], y["loss_after"])
    params = ckpt_io.load(b.checkpoint_uri).meta_params
    assert all(v.dtype == torch.float32 for v in params.values())
    assert all(v.dtype == torch.float32 for s in bf16.optimizer.state().optimizer["state"].values() for v in s.values()
               if isinstance(v, torch.Tensor) and v.dim())
    reference = ckpt_io.load(a.checkpoint_uri).meta_params
    a_job = fp32.job
    # Adam moves a coordinate by about lr per step whatever its gradient, so where the two runs' gradients differ in
    # sign (the conv biases before batch norm, whose true gradient is 0) they part by at most 2 · lr · steps.
    bound = 2 * a_job.optimizer.lr * a.steps
    for k in reference:
        torch.testing.assert_close(params[k], reference[k], rtol=0, atol=bound, msg=k)
    assert b.test["accuracy_after"].mean == pytest.approx(a.test["accuracy_after"].mean, abs=0.1)


def test_bf16_updates_travel_in_half_the_bytes_and_are_summed_in_fp32():
    tensors = {"w": torch.randn(3, 4), "b": torch.randn(5)}
    layout = ParamLayout.of(tensors)
    full = FlatUpdate.of(Update("gradient", tensors, 2, {}), layout)
    half = FlatUpdate.of(Update("gradient", tensors, 2, {}), layout, "bf16")
    assert half.nbytes * 2 == full.nbytes and half.buffer.dtype == np.uint16
    widened = half.to_update(layout).tensors
    for k, v in tensors.items():
        assert torch.equal(widened[k], v.to(torch.bfloat16).float()), k  # exactly the bf16 rounding, nothing else
    total = sum_in_order([half, full, half])
    assert total.buffer.dtype == np.float32 and total.num_tasks == 6
    expected = {k: (widened[k] + tensors[k]) + widened[k] for k in tensors}
    for k, v in total.to_update(layout).tensors.items():
        assert torch.equal(v, expected[k]), k


def test_a_bf16_checkpoint_is_evaluated_and_served_under_bf16(small1_uri, small2_uri, tmp_path):
    from metadist.inference import FewShotClassifier

    job = tiny_job(small1_uri, small2_uri, tmp_path, "algorithm.name=protonet", "train.precision=bf16", "train.steps=2")
    result = LocalTrainer(job, progress=False).run()
    classifier = FewShotClassifier(ckpt_io.load(result.checkpoint_uri))
    seen = []
    original = classifier.learner.predict_at_test  # what the classifier (and so the server) calls

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return original(*args, **kwargs)

    classifier.learner.predict_at_test = spy
    images = [np.full((28, 28), 40 * i, np.uint8) for i in range(3)]
    predictions = classifier.predict(images, ["a", "b", "c"], images)
    assert [p.label for p in predictions] == ["a", "b", "c"] and seen == [True]
