import pytest, torch
from torch.func import functional_call, vmap
from metadist.algorithms import LEARNERS
from metadist.config import EpisodeConfig
from metadist.data import EpisodeSampler, ShardSet, ensure_bundled
from metadist.models import Conv4
from metadist.models.twice_differentiable import BatchNorm, GroupedConv2d


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype(); torch.set_default_dtype(torch.float64); yield; torch.set_default_dtype(old)


def test_task_batched_ops_are_twice_differentiable():
    x, w, b = (torch.randn(2, 6, 5, 5, requires_grad=True), torch.rand(6, requires_grad=True), torch.randn(6, requires_grad=True))
    assert torch.autograd.gradgradcheck(lambda x, w, b: BatchNorm.apply(x, w, b, 1e-5), (x, w, b))
    cw, cb = torch.randn(8, 3, 3, 3, requires_grad=True), torch.randn(8, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w, b: GroupedConv2d.apply(x, w, b, (2, 2), (1, 1), 2), (x, cw, cb))


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


@pytest.mark.parametrize("seed", range(4))
def test_task_batched_gradients_match_a_per_task_float64_reference_at_realistic_sizes(seed):
    """float32 at the sizes training uses (8 tasks, 25 images, 32 filters, 28×28): a layout or kernel bug shows up
    only here, not at toy sizes (PyTorch 2.13's channels-last grouped-convolution backward did, for some seeds)."""
    torch.manual_seed(seed)
    tasks, images, ways = 8, 25, 5
    model = Conv4(1, ways, hidden=32, image_size=28).float()
    theta = {k: v.detach().float() for k, v in model.named_parameters()}
    x, y = torch.rand(tasks, images, 1, 28, 28, dtype=torch.float32), torch.arange(ways).repeat(images // ways)
    per_task = {k: v.unsqueeze(0).repeat(tasks, *[1] * v.dim()).requires_grad_() for k, v in theta.items()}
    loss = torch.nn.functional.cross_entropy(model.forward_tasks(per_task, x).flatten(0, 1), y.repeat(tasks), reduction="sum")
    grads = dict(zip(per_task, torch.autograd.grad(loss, list(per_task.values()))))
    reference = Conv4(1, ways, hidden=32, image_size=28)  # float64 (the module's autouse fixture)
    for t in range(tasks):
        params = {k: v.double().requires_grad_() for k, v in theta.items()}
        task_loss = torch.nn.functional.cross_entropy(functional_call(reference, params, (x[t].double(),)), y, reduction="sum")
        for k, g in zip(params, torch.autograd.grad(task_loss, list(params.values()))):
            torch.testing.assert_close(grads[k][t].double(), g, rtol=1e-4, atol=1e-5, msg=lambda m: f"task {t}, {k}: {m}")
