"""ResNet-12 and wide ResNets: their sizes, DropBlock's train/eval behaviour, and every learner training on each, in
this process and on Ray task workers with the same parameters."""

from __future__ import annotations

import pytest
import torch

from metadist.core import checkpoint as ckpt_io
from metadist.models import ResNet12, WideResNet
from metadist.models.resnets import DropBlock
from metadist.training import LocalTrainer
from tests.helpers import starts, tiny_job
from tests.local_ray import local_ray

# Small enough for two steps in a second or two on 28×28 Omniglot: ResNet-12 of 8-20-40-80 filters, WRN-10-1.
BACKBONES = {
    "resnet12": ("model.name=resnet12", "model.hidden=8"),
    "wrn": ("model.name=wrn", "model.depth=10", "model.widen=1"),
}
LEARNERS = ("maml", "fomaml", "anil", "metasgd", "meta_lstm", "reptile", "protonet", "matching", "siamese", "snail")


def test_the_standard_sizes():
    with torch.device("meta"):  # 49 M parameters, allocated nowhere
        assert sum(p.numel() for p in ResNet12(3, 5).parameters()) == 12_427_525
        assert sum(p.numel() for p in WideResNet(3, 5).parameters()) == 36_475_989
        assert ResNet12(3, None).embedding_dim == WideResNet(3, None).embedding_dim == 640
    out = ResNet12(3, 5, channels=(8, 8, 8, 8))(torch.rand(2, 3, 84, 84))
    assert out.shape == (2, 5)
    with pytest.raises(ValueError, match="depth must be 6n"):
        WideResNet(depth=27)


def test_dropblock_drops_while_training_only():
    torch.manual_seed(0)
    drop = DropBlock(0.3, block_size=3)
    x = torch.ones(4, 2, 10, 10)
    dropped = drop(x)
    zeros = (dropped == 0).float().mean().item()
    assert 0.1 < zeros < 0.6 and dropped.mean().item() == pytest.approx(1.0, rel=1e-5)  # the kept values rescaled
    drop.eval()
    assert torch.equal(drop(x), x)
    with pytest.raises(ValueError, match="drop_rate"):
        DropBlock(1.0)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("learner", LEARNERS)
def test_every_learner_trains_on_each_backbone(backbone, learner, small1_uri, small2_uri, tmp_path):
    job = tiny_job(small1_uri, small2_uri, tmp_path, *BACKBONES[backbone], f"algorithm.name={learner}", "train.steps=2",
                   "train.meta_batch=2", "train.final_eval_episodes=2", "checkpoint.every=0")
    trainer = LocalTrainer(job, progress=False)
    initial = trainer.meta_params()
    result = trainer.run()
    trained = ckpt_io.load(result.checkpoint_uri).meta_params
    assert result.applied_steps == 2
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert any(not torch.equal(trained[k], initial[k].cpu()) for k in trained), "nothing learned"


def test_dropblock_under_maml_draws_per_task_and_evaluates_deterministically(small1_uri, small2_uri, tmp_path):
    job = tiny_job(small1_uri, small2_uri, tmp_path, *BACKBONES["resnet12"], "model.drop_rate=0.1", "train.steps=2",
                   "train.meta_batch=2", "checkpoint.every=0")
    trainer = LocalTrainer(job, progress=False)
    trainer.run()  # vmap with DropBlock inside: random draws per task (randomness="different")
    first, second = trainer.evaluate(4), trainer.evaluate(4)
    assert first == second  # eval mode: DropBlock off, nothing random
    assert trainer.learner.model.training, "evaluation puts the model back in training mode"


# -- on Ray: the same parameters -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
@starts("cluster")
def ray_connection():
    with local_ray(num_cpus=2) as connection:
        yield connection


@pytest.mark.cluster
@pytest.mark.parametrize("backbone, learner, extra", [
    ("resnet12", "maml", ()), ("wrn", "protonet", ()),  # each backbone, each family
    ("resnet12", "meta_lstm", ()),  # a learned inner loop with meta-parameters of its own
    # Reptile's inner Adam: a running statistic the parameter server sets to the tasks' mean
    ("wrn", "reptile", ("algorithm.inner_optimizer=adam", "algorithm.inner_batch=2", "algorithm.inner_lr=0.01")),
    # the Reptile job files' recipe: a prototype head made of each class's first shot while meta-training
    ("resnet12", "model_averaging", ("algorithm.inner_optimizer=adam", "algorithm.inner_batch=2", "algorithm.inner_lr=0.01",
                                     "algorithm.prototype_head=true", "algorithm.prototype_shots=1", "data.episode.shots=2")),
])
def test_task_workers_give_the_local_trainers_parameters(ray_connection, backbone, learner, extra, small1_uri, small2_uri,
                                                         tmp_path):
    from metadist.distributed import DistributedTrainer

    sets = (*BACKBONES[backbone], f"algorithm.name={learner}", *extra, "train.steps=2", "train.meta_batch=2",
            "checkpoint.every=0", "train.final_eval_episodes=2")
    local = LocalTrainer(tiny_job(small1_uri, small2_uri, tmp_path / "local", *sets), progress=False).run()
    # One slice: the worker runs the same call on the same tasks as the local trainer, so the same bits.
    distributed = DistributedTrainer(tiny_job(small1_uri, small2_uri, tmp_path / "ray", *sets, "distributed.workers=2",
                                              "distributed.slices=1"), progress=False).run()
    a, b = ckpt_io.load(local.checkpoint_uri).meta_params, ckpt_io.load(distributed.checkpoint_uri).meta_params
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
