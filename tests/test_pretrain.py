"""Supervised pre-training before meta-training (metadist.training.pretrain, `pretrain:`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metadist.config import apply_overrides
from metadist.config import JobConfig
from metadist.core import build, make_sampler, model_spec
from metadist.errors import ConfigError
from metadist.training import LocalTrainer
from metadist.training.evaluation import evaluate
from metadist.training.pretrain import LabelledExamples, pretrain
from tests.helpers import tiny_job


def test_pretraining_labels_are_the_episode_samplers_virtual_classes(small1_uri, small2_uri, tmp_path):
    """Each (example, rotation, mirror) the classifier sees has the pixels and the class id the episode sampler gives
    the same example in an episode: pre-training and meta-training agree on what a class is."""
    job = tiny_job(small1_uri, small2_uri, tmp_path, "data.episode.reflections=true", "data.episode.ways=20")
    sampler = make_sampler(job, "train", progress=False)
    data = LabelledExamples.of(sampler)
    assert data.variants == 8 and data.labels == 8 * len(sampler.classes)
    assert len(data.classes) == int(sampler.counts.sum())
    first_example = np.concatenate([[0], np.cumsum(sampler.counts)[:-1]])  # of each class, in data.pixels
    virtual, rows = sampler.plan(3, range(4))
    batch = sampler.sample(3, range(4))
    shots = job.data.episode.shots
    base, variant = virtual // data.variants, virtual % data.variants
    example = first_example[base] + rows[..., 0]  # each class's first (support) example: [T, N]
    pixels, labels = data.batch(torch.from_numpy(example * data.variants + variant).reshape(-1))
    assert torch.equal(labels, torch.from_numpy(virtual).reshape(-1))
    assert set(variant.reshape(-1).tolist()) - {0, 1, 2, 3} and set(variant.reshape(-1).tolist()) & {1, 2, 3}
    support = batch.support_x.reshape(-1, shots, *batch.support_x.shape[2:])[:, 0]  # [T·N, C, H, W], 1 shot each
    assert torch.equal(pixels.float().div(255), support)


def test_pretraining_lifts_step_zero_and_training_starts_from_it(small1_uri, small2_uri, tmp_path):
    job = tiny_job(small1_uri, small2_uri, tmp_path, "model.hidden=32", "algorithm.zero_head=true",
                   "pretrain.epochs=2", "tracking.enabled=true", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                   "tracking.log_model=false", "tracking.log_checkpoints=false", "train.steps=1")
    spec = model_spec(job)
    _, learner = build(job, spec)
    initial = learner.init_meta_params()
    trained = pretrain(job, spec, initial, make_sampler(job, "train", progress=False), device=torch.device("cpu"), progress=False)
    assert trained.keys() == initial.keys()
    assert torch.equal(trained["head.weight"], initial["head.weight"])  # the learner's own head
    assert not torch.equal(trained["features.0.weight"], initial["features.0.weight"])
    test = make_sampler(job, "test", progress=False)
    before = evaluate(learner, initial, test, episodes=60)["accuracy_after"].mean
    after = evaluate(learner, trained, test, episodes=60)["accuracy_after"].mean
    assert after > before + 0.1, (before, after)

    trainer = LocalTrainer(job, progress=False)
    result = trainer.run()
    # The run's one step was taken from the pre-trained weights: the same pre-training, so the same weights.
    first = result.history[0]
    assert first["accuracy_before"] == pytest.approx(0.2)  # zero head at every task start: chance before adapting
    assert result.test["accuracy_after"].mean > before + 0.1

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    history = client.get_metric_history(result.run_id, "pretrain/loss")
    assert [m.step for m in history] == [1, 2] and history[1].value < history[0].value
    assert len(client.get_metric_history(result.run_id, "pretrain/accuracy")) == 2


def test_a_resumed_pretrained_run_is_not_pretrained_again(small1_uri, small2_uri, tmp_path):
    straight_job = tiny_job(small1_uri, small2_uri, tmp_path / "a", "pretrain.epochs=1")
    straight = LocalTrainer(straight_job, progress=False)
    straight.run()

    first = tiny_job(small1_uri, small2_uri, tmp_path / "b", "pretrain.epochs=1")
    interrupted = LocalTrainer(first, progress=False)
    interrupted.job = first.model_copy(update={"train": first.train.model_copy(update={"time_budget_s": 1e-9})})
    interrupted.run()
    assert interrupted.step == 1  # pre-training counts as training time: the budget ends the run after one step
    resumed = LocalTrainer(first, resume=True, progress=False)
    resumed.run()
    a, b = straight.optimizer.state(), resumed.optimizer.state()
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k


def test_pretraining_is_refused_where_it_cannot_work():
    with pytest.raises(ConfigError, match=r"pretrain\.epochs must be 0 for regression"):
        apply_overrides(JobConfig(), ["data.regression={family: sinusoid}", "data.train=null", "data.test=null",
                                      "model.name=mlp", "pretrain.epochs=1"])
    with pytest.raises(ConfigError, match=r"algorithm\.prototype_head must be false for regression"):
        apply_overrides(JobConfig(), ["data.regression={family: sinusoid}", "data.train=null", "data.test=null",
                                      "model.name=mlp", "algorithm.prototype_head=true"])
    with pytest.raises(ConfigError, match=r"pretrain\.batch_size"):
        apply_overrides(JobConfig(), ["pretrain.batch_size=1"])


def test_a_training_split_too_large_for_memory_is_refused_before_reading(small1_uri, small2_uri, tmp_path, monkeypatch):
    from metadist.training import pretrain as pretrain_module

    job = tiny_job(small1_uri, small2_uri, tmp_path, "pretrain.epochs=1")
    monkeypatch.setattr(pretrain_module, "physical_memory_bytes", lambda: 4 * 2**20)  # a 4 MiB machine
    sampler = make_sampler(job, "train", progress=False)
    with pytest.raises(ConfigError, match=rf"pretrain\.epochs: .* GiB of {small1_uri}, more than 50% of this machine's"):
        LabelledExamples.of(sampler)
