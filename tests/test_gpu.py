"""CUDA: the hand-written twice-differentiable ops and the learners give on a GPU what they give on the CPU.

Not in the default run (pyproject's addopts deselect the `gpu` marker; CI has no GPU). On a machine with one:

    make test-gpu            # = python -m pytest -m gpu

A kernel that exists on CPU may behave differently on CUDA: PyTorch 2.11's CUDA batch-norm backward rejected an
absent weight that the CPU one accepts, and second-order MAML failed on GPUs until these tests were written.
"""

from __future__ import annotations

import pytest
import torch

from metadist.algorithms import LEARNERS, METRIC_LEARNERS
from metadist.config import EpisodeConfig
from metadist.data import EpisodeSampler, ShardSet
from metadist.models import Conv4
from metadist.models.twice_differentiable import BatchNorm, GroupedConv2d

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (`make test-gpu` on a machine with one)"),
]


def test_task_batched_ops_are_twice_differentiable_on_cuda():
    cuda = dict(device="cuda", dtype=torch.float64, requires_grad=True)
    x, w, b = torch.randn(2, 6, 5, 5, **cuda), torch.rand(6, **cuda), torch.randn(6, **cuda)
    assert torch.autograd.gradgradcheck(lambda x, w, b: BatchNorm.apply(x, w, b, 1e-5), (x, w, b))
    cw, cb = torch.randn(8, 3, 3, 3, **cuda), torch.randn(8, **cuda)
    assert torch.autograd.gradgradcheck(lambda x, w, b: GroupedConv2d.apply(x, w, b, (2, 2), (1, 1), 2), (x, cw, cb))


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "protonet", "matching"])
def test_update_on_cuda_equals_the_cpu_update(small1_uri, name, downsample):
    torch.manual_seed(0)
    model = Conv4(1, None if name in METRIC_LEARNERS else 5, hidden=16, image_size=28, downsample=downsample).double()
    learner = LEARNERS[name](model, "classification", inner_lr=0.4, inner_steps=2, eval_inner_steps=2)
    theta = {k: v.double() for k, v in learner.init_meta_params().items()}
    batch = EpisodeSampler(ShardSet(small1_uri), EpisodeConfig(ways=5, shots=1, queries=3), seed=0).sample(0, range(4))
    batch.support_x, batch.query_x = batch.support_x.double(), batch.query_x.double()
    on_cpu = learner.compute_update(theta, batch)
    model.cuda()
    on_gpu = learner.compute_update({k: v.cuda() for k, v in theta.items()}, batch.to("cuda"))
    for k in theta:
        assert on_gpu.tensors[k].is_cuda, k
        torch.testing.assert_close(on_gpu.tensors[k].cpu(), on_cpu.tensors[k], rtol=1e-7, atol=1e-9, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("name", ["maml", "protonet"])
def test_local_trainer_trains_on_cuda(tmp_path, small1_uri, small2_uri, name):
    from metadist.config import apply_overrides
    from metadist.config import JobConfig
    from metadist.training import LocalTrainer

    job = apply_overrides(JobConfig(), [
        f"algorithm.name={name}", "model.downsample=maxpool", "train.device=cuda", "train.steps=3", "train.meta_batch=4",
        "train.eval_every=0", "train.final_eval_episodes=8", "tracking.enabled=false", f"checkpoint.uri={tmp_path}/ckpt",
        f"data.train.uri={small1_uri}", f"data.test.uri={small2_uri}",
    ])
    result = LocalTrainer(job, progress=False).run()
    assert result.steps == 3
    assert 0.2 <= result.test["accuracy_after"].mean <= 1


@pytest.mark.parametrize("name", ["maml", "protonet"])
def test_bf16_on_cuda_follows_fp32(tmp_path, small1_uri, small2_uri, name):
    """train.precision bf16 on a GPU: the same steps, meta-losses within 3% of fp32's, fp32 parameters."""
    from tests.helpers import tiny_job
    from metadist.training import LocalTrainer

    losses = {}
    for precision in ("fp32", "bf16"):
        job = tiny_job(small1_uri, small2_uri, tmp_path / precision, f"algorithm.name={name}", "train.device=cuda",
                       f"train.precision={precision}", "train.log_every=1")
        result = LocalTrainer(job, progress=False).run()
        losses[precision] = [h["loss_after"] for h in result.history]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.03)
