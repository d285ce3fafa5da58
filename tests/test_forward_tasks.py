import pytest, torch
from torch.func import functional_call, vmap
from metadist.algorithms import LEARNERS
from metadist.config import EpisodeConfig
from metadist.data import EpisodeSampler, ShardSet, ensure_bundled
from metadist.models import Conv4
from metadist.models.conv4 import _BatchNorm, _GroupedConv2d


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype(); torch.set_default_dtype(torch.float64); yield; torch.set_default_dtype(old)


def test_task_batched_ops_are_twice_differentiable():
    x, w, b = (torch.randn(2, 6, 5, 5, requires_grad=True), torch.rand(6, requires_grad=True), torch.randn(6, requires_grad=True))
    assert torch.autograd.gradgradcheck(lambda x, w, b: _BatchNorm.apply(x, w, b, 1e-5), (x, w, b))
    cw, cb = torch.randn(8, 3, 3, 3, requires_grad=True), torch.randn(8, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w, b: _GroupedConv2d.apply(x, w, b, (2, 2), (1, 1), 2), (x, cw, cb))


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd"])
def test_conv4_task_batched_update_equals_the_vmapped_one(name):
    torch.manual_seed(0)
    model = Conv4(1, 3, hidden=6, image_size=7)
    learner = LEARNERS[name](model, "classification", inner_lr=0.4, inner_steps=2, eval_inner_steps=2)
    theta = {k: v + 0.1 * torch.randn_like(v) for k, v in learner.init_meta_params().items()}
    b = EpisodeSampler(ShardSet(ensure_bundled("omniglot-small1", progress=False)), EpisodeConfig(ways=3, shots=2, queries=2), seed=0).sample(0, range(4))
    b.support_x, b.query_x = b.support_x.double()[..., ::4, ::4], b.query_x.double()[..., ::4, ::4]
    fast = learner.compute_update(theta, b)
    model.forward_tasks = None  # the vmap path
    slow = learner.compute_update(theta, b)
    for k in theta:
        torch.testing.assert_close(fast.tensors[k], slow.tensors[k], rtol=1e-9, atol=1e-11)
