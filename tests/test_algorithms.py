"""The learners' maths against independent references, on tiny models (float64 for tight tolerances)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from metadist.algorithms import LEARNERS
from metadist.data import RegressionSampler
from metadist.models import MLP, Conv4
from tests.helpers import classification_batch, task_slice


@pytest.fixture(autouse=True, scope="module")
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def regression_batch(tasks=4):
    b = RegressionSampler("sinusoid", shots=5, queries=6, seed=0).sample(0, range(tasks))
    return type(b)(**{k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in vars(b).items()})


def learner(name, model, kind, inner_lr=0.1, steps=2):
    return LEARNERS[name](model, kind, inner_lr=inner_lr, inner_steps=steps, eval_inner_steps=steps)


def reference_adapt(model, params, x, y, loss, lr, steps, create_graph, names=None):
    """Plain autograd, one task: the textbook inner loop."""
    names = list(params) if names is None else names
    for _ in range(steps):
        out = functional_call(model, params, (x,))
        grads = torch.autograd.grad(loss(out, y), [params[n] for n in names], create_graph=create_graph)
        lrs = lr if isinstance(lr, dict) else {n: lr for n in names}
        params = {**params, **{n: params[n] - lrs[n] * g for n, g in zip(names, grads)}}
    return params


def leaf(params):
    return {k: v.detach().clone().requires_grad_() for k, v in params.items()}


def test_maml_second_order_gradient_equals_explicit_double_backward():
    torch.manual_seed(0)
    model = MLP(1, (8, 8), 1)
    maml = learner("maml", model, "regression")
    theta = maml.init_meta_params()
    batch = regression_batch()
    update = maml.compute_update(theta, batch)
    expected = {k: torch.zeros_like(v) for k, v in theta.items()}
    for t in range(len(batch)):
        p = leaf(theta)
        adapted = reference_adapt(model, p, batch.support_x[t], batch.support_y[t], maml.loss, 0.1, 2, create_graph=True)
        q = maml.loss(functional_call(model, adapted, (batch.query_x[t],)), batch.query_y[t])
        for k, g in zip(p, torch.autograd.grad(q, list(p.values()))):
            expected[k] += g
    for k in theta:
        torch.testing.assert_close(update.tensors[k], expected[k], rtol=1e-9, atol=1e-10)
    # and the second-order term matters: first-order MAML differs
    fo = learner("fomaml", model, "regression").compute_update(theta, batch)
    assert any(not torch.allclose(fo.tensors[k], expected[k], atol=1e-6) for k in theta)


def test_maml_gradient_matches_finite_differences():
    torch.manual_seed(1)
    model = MLP(1, (4,), 1)
    maml = learner("maml", model, "regression", steps=1)
    theta = maml.init_meta_params()
    batch = regression_batch(tasks=2)
    update = maml.compute_update(theta, batch)

    def meta_loss(params):
        total = 0.0
        for t in range(len(batch)):
            adapted = reference_adapt(model, leaf(params), batch.support_x[t], batch.support_y[t], maml.loss, 0.1, 1, False)
            total += float(maml.loss(functional_call(model, adapted, (batch.query_x[t],)), batch.query_y[t]).detach())
        return total

    eps = 1e-6
    for name, index in [("body.0.weight", (0, 0)), ("body.0.bias", (2,)), ("head.weight", (0, 1))]:
        plus = {k: v.clone() for k, v in theta.items()}
        minus = {k: v.clone() for k, v in theta.items()}
        plus[name][index] += eps
        minus[name][index] -= eps
        numeric = (meta_loss(plus) - meta_loss(minus)) / (2 * eps)
        assert abs(float(update.tensors[name][index]) - numeric) < 1e-6 * max(1.0, abs(numeric))


def test_first_order_maml_is_the_query_gradient_at_the_adapted_parameters():
    torch.manual_seed(2)
    model = MLP(1, (8,), 1)
    fomaml = learner("fomaml", model, "regression")
    theta = fomaml.init_meta_params()
    batch = regression_batch()
    update = fomaml.compute_update(theta, batch)
    for k in theta:
        expected = torch.zeros_like(theta[k])
        for t in range(len(batch)):
            adapted = leaf(reference_adapt(model, leaf(theta), batch.support_x[t], batch.support_y[t], fomaml.loss, 0.1, 2, False))
            q = fomaml.loss(functional_call(model, adapted, (batch.query_x[t],)), batch.query_y[t])
            expected += torch.autograd.grad(q, adapted[k])[0]
        torch.testing.assert_close(update.tensors[k], expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["reptile", "model_averaging"])
def test_reptile_delta_is_the_k_step_sgd_difference(name):
    torch.manual_seed(3)
    model = MLP(1, (8,), 1)
    reptile = learner(name, model, "regression", steps=3)
    theta = reptile.init_meta_params()
    batch = regression_batch()
    update = reptile.compute_update(theta, batch)
    assert update.kind == "delta"
    for k in theta:
        expected = sum(
            reference_adapt(model, leaf(theta), batch.support_x[t], batch.support_y[t], reptile.loss, 0.1, 3, False)[k].detach() - theta[k]
            for t in range(len(batch))
        )
        torch.testing.assert_close(update.tensors[k], expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(update.as_gradient()[k], -expected / len(batch))


def test_anil_adapts_only_the_head_but_meta_learns_the_body(small1_uri):
    torch.manual_seed(4)
    model = Conv4(1, 3, hidden=4, image_size=7)
    anil = learner("anil", model, "classification")
    theta = anil.init_meta_params()
    batch = classification_batch(small1_uri)
    adapted = anil.adapt(theta, batch.support_x, batch.support_y)
    for k, v in theta.items():
        moved = not torch.allclose(adapted[k][0], v)
        assert moved == (k in Conv4.HEAD), k
    update = anil.compute_update(theta, batch)
    assert float(update.tensors["features.0.weight"].abs().sum()) > 0


def test_metasgd_learns_per_parameter_rates_with_exact_gradients():
    torch.manual_seed(5)
    model = MLP(1, (6,), 1)
    metasgd = learner("metasgd", model, "regression", steps=1)
    meta = metasgd.init_meta_params()
    assert {k for k in meta if k.startswith("lr.")} == {f"lr.{k}" for k, _ in model.named_parameters()}
    meta = {k: (v * torch.rand_like(v) * 2 if k.startswith("lr.") else v) for k, v in meta.items()}
    batch = regression_batch(tasks=2)
    update = metasgd.compute_update(meta, batch)
    p = leaf(meta)
    total = 0
    for t in range(2):
        rates = {k[3:]: v for k, v in p.items() if k.startswith("lr.")}
        weights = {k: v for k, v in p.items() if not k.startswith("lr.")}
        adapted = reference_adapt(model, weights, batch.support_x[t], batch.support_y[t], metasgd.loss, rates, 1, True)
        total = total + metasgd.loss(functional_call(model, adapted, (batch.query_x[t],)), batch.query_y[t])
    for k, g in zip(p, torch.autograd.grad(total, list(p.values()))):
        torch.testing.assert_close(update.tensors[k], g, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd", "reptile", "protonet"])
def test_vmapped_update_equals_a_per_task_loop(small1_uri, name):
    torch.manual_seed(6)
    model = Conv4(1, None if name == "protonet" else 3, hidden=4, image_size=7)
    algo = learner(name, model, "classification", steps=1)
    theta = algo.init_meta_params()
    batch = classification_batch(small1_uri, tasks=3)
    whole = algo.compute_update(theta, batch)
    parts = [algo.compute_update(theta, task_slice(batch, t)) for t in range(3)]
    total = parts[0] + parts[1] + parts[2]
    assert total.num_tasks == whole.num_tasks == 3
    for k in theta:
        torch.testing.assert_close(whole.tensors[k], total.tensors[k], rtol=1e-8, atol=1e-10)
    for k in whole.metrics:
        assert abs(whole.metrics[k] - total.metrics[k]) < 1e-8


def test_protonet_logits_equal_a_hand_computation(small1_uri):
    torch.manual_seed(7)
    model = Conv4(1, None, hidden=4, image_size=7)
    proto = learner("protonet", model, "classification")
    theta = proto.init_meta_params()
    batch = classification_batch(small1_uri, tasks=2, ways=3)
    logits = proto.predict(theta, proto.adapt(theta, batch.support_x, batch.support_y), batch.query_x)
    for t in range(2):
        support = functional_call(model, theta, (batch.support_x[t],))
        query = functional_call(model, theta, (batch.query_x[t],))
        for n in range(3):
            prototype = support[batch.support_y[t] == n].mean(0)
            for q in range(query.shape[0]):
                expected = -float(((query[q] - prototype) ** 2).sum())
                assert abs(float(logits[t, q, n]) - expected) < 1e-9


def test_evaluate_reports_before_and_after_adaptation(small1_uri):
    model = Conv4(1, 3, hidden=4, image_size=7)
    maml = learner("maml", model, "classification")
    metrics = maml.evaluate(maml.init_meta_params(), classification_batch(small1_uri, tasks=4))
    assert set(metrics) == {"loss_before", "loss_after", "accuracy_before", "accuracy_after"}
    assert all(v.shape == (4,) for v in metrics.values())


