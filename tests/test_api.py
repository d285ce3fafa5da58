"""The Python API: a learn2learn-style loop over a module equals the command line's job for the same settings, and
`metadist.fit` runs a job as `metadist train` does."""

from __future__ import annotations

import doctest
import functools

import pytest
import torch
import yaml

import metadist
from metadist.cli import main
from metadist.core import build, make_sampler, model_spec, task_indices
from metadist.core import checkpoint as ckpt_io
from metadist.training import LocalTrainer
from tests.helpers import tiny_job

API_LEARNERS = {
    "maml": metadist.MAML,
    "fomaml": functools.partial(metadist.MAML, first_order=True),
    "anil": metadist.ANIL,
    "metasgd": metadist.MetaSGD,
    "reptile": metadist.Reptile,
    "protonet": metadist.ProtoNet,
    # Reptile's paper recipe: Adam's moment is a running statistic (a buffer, set by backward), not a parameter
    "reptile-adam": functools.partial(metadist.Reptile, inner_optimizer="adam", inner_batch=2),
}
JOB_SETTINGS = {"reptile-adam": ["algorithm.name=reptile", "algorithm.inner_optimizer=adam", "algorithm.inner_batch=2",
                                 "algorithm.inner_lr=0.01"]}


def test_the_docstring_example_runs():
    import metadist.api.learners

    result = doctest.testmod(metadist.api.learners, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0


@pytest.mark.parametrize("algorithm", sorted(API_LEARNERS))
def test_a_learn2learn_style_loop_equals_the_trainer(algorithm, small1_uri, small2_uri, tmp_path):
    job = tiny_job(small1_uri, small2_uri, tmp_path, *JOB_SETTINGS.get(algorithm, [f"algorithm.name={algorithm}"]),
                   "train.steps=3", "optimizer.clip_norm=null", "checkpoint.every=0")
    trained = ckpt_io.load(LocalTrainer(job, progress=False).run().checkpoint_uri).meta_params

    sampler = make_sampler(job, "train", progress=False)
    module, _ = build(job, model_spec(job, sampler))  # the same initial weights: they depend on the seed only
    a = job.algorithm
    settings = {} if algorithm == "protonet" else {"tasks_per_pass": a.tasks_per_pass}  # MAML's family's own
    learner = API_LEARNERS[algorithm](module, inner_lr=a.inner_lr, inner_steps=a.inner_steps,
                                      eval_inner_steps=a.eval_inner_steps, **settings)
    outer = torch.optim.Adam(learner.parameters(), lr=job.optimizer.lr)
    for step in range(job.train.steps):
        episodes = sampler.sample(step, task_indices(job.train.meta_batch))
        outer.zero_grad()
        learner.compute_update(episodes.support_x, episodes.support_y, episodes.query_x, episodes.query_y).backward()
        outer.step()

    mine = learner.meta_params()
    assert set(mine) == set(trained)
    if algorithm == "reptile-adam":
        assert not any(n.startswith("inner_adam.") for n, _ in learner.named_parameters())
        assert float(mine["inner_adam.t"]) == job.train.steps * job.algorithm.inner_steps
    for name, value in trained.items():
        torch.testing.assert_close(mine[name], value, rtol=1e-5, atol=1e-6, msg=f"{algorithm}: {name}")


def test_adapt_predict_and_evaluate_take_plain_tensors(small1_uri):
    from tests.helpers import classification_batch

    batch = classification_batch(small1_uri, tasks=2, ways=3)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(49, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    maml = metadist.MAML(net, inner_lr=0.5, inner_steps=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    adapted = maml.adapt(batch.support_x, batch.support_y)
    assert adapted["1.weight"].shape == (2, 8, 49)  # one adapted copy per task
    logits = maml.predict(adapted, batch.query_x)
    assert logits.shape == (2, 6, 3)
    torch.testing.assert_close(maml(batch.support_x, batch.support_y, batch.query_x), logits)
    metrics = maml.evaluate(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    assert set(metrics) == {"loss_after", "accuracy_after", "loss_before", "accuracy_before"}
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "adaptation never writes into the module"
    with pytest.raises(ValueError, match="task must be one of"):
        metadist.MAML(net, task="ranking")


def test_fit_runs_a_job_as_the_command_line_does(small1_uri, small2_uri, tmp_path, capsys):
    job = tiny_job(small1_uri, small2_uri, tmp_path / "fit", "train.steps=3", "checkpoint.every=0")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    from_python = metadist.fit(str(job_file), overrides=[f"checkpoint.uri={tmp_path / 'py'}"], progress=False)
    assert main(["train", str(job_file), "--no-progress", "--set", f"checkpoint.uri={tmp_path / 'cli'}"]) == 0
    from_cli = capsys.readouterr().out.split("checkpoint: ")[1].split()[0]
    python_params, cli_params = ckpt_io.load(from_python.checkpoint_uri).meta_params, ckpt_io.load(from_cli).meta_params
    assert all(torch.equal(python_params[k], cli_params[k]) for k in cli_params)
    assert from_python.steps == 3 and "accuracy_after" in from_python.test
    # A mapping and a JobConfig are jobs too; a bad setting is the same one-line error as on the command line.
    assert metadist.fit(job, overrides=[f"checkpoint.uri={tmp_path / 'cfg'}"], progress=False).steps == 3
    from metadist.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.steps"):
        metadist.fit({"train": {"steps": 0}}, progress=False)
