"""The learners' maths against independent references, on tiny models (float64 for tight tolerances)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from metadist.algorithms import LEARNERS
from metadist.algorithms.base import MetaLearner
from metadist.api import Episodes
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


@pytest.mark.parametrize("name", ["reptile", "model_averaging"])
def test_reptile_paper_inner_loop_is_adam_with_beta1_zero_over_class_balanced_minibatches(name, small1_uri):
    """Reptile's recipe: each inner step on the next minibatch of the support set (every class in each), with Adam
    (β1 = 0), against torch.optim.Adam stepping a module by hand on the same minibatches. From the initial (zero)
    moment for the first task; the outer step keeps the task's moment, so the next task continues from it, as one
    torch.optim.Adam carried across tasks does (the paper's code)."""
    from metadist.algorithms.outer import MetaOptimizer
    from metadist.config import OptimizerConfig

    torch.manual_seed(5)
    model = Conv4(1, 3, hidden=4, image_size=7)
    reptile = LEARNERS[name](model, "classification", inner_lr=0.01, inner_steps=4, eval_inner_steps=4,
                             inner_optimizer="adam", inner_batch=4)
    theta = reptile.init_meta_params()
    names = [k for k, _ in model.named_parameters()]
    assert set(theta) - set(names) == {"inner_adam.t"} | {f"inner_adam.v.{k}" for k in names}
    batch = classification_batch(small1_uri, tasks=2, ways=3, shots=4, queries=1)
    order = torch.arange(12).view(3, 4).t().reshape(-1)  # class by class (0 0 0 0 1 1 1 1 2 2 2 2) → shot by shot
    params = {k: torch.nn.Parameter(theta[k].clone()) for k in names}
    adam = torch.optim.Adam(params.values(), lr=0.01, betas=(0.0, 0.999), eps=1e-8)
    outer = MetaOptimizer(theta, OptimizerConfig(name="sgd", lr=1.0, clip_norm=None), total_steps=2,
                          running_prefixes=reptile.running_prefixes)
    for t in range(len(batch)):  # one task per outer step, outer step 1: θ becomes the task's θ'
        x, y = batch.support_x[t], batch.support_y[t]
        meta = outer.meta_params()
        for step in range(4):
            rows = order[(torch.arange(4) + 4 * step) % 12]
            assert len(set(y[rows].tolist())) == 3 or step % 3 == 2  # every class in a batch but the wrap-around
            adam.zero_grad()
            reptile.loss(functional_call(model, params, (x[rows],)), y[rows]).backward()
            adam.step()
        update = reptile.compute_update(meta, task_slice(batch, t))
        for k in names:
            # atol: conv biases before batch norm have gradients of rounding noise only, which Adam scales up
            torch.testing.assert_close(update.tensors[k], params[k].detach() - meta[k], rtol=1e-6, atol=1e-8)
            moment = adam.state[params[k]]["exp_avg_sq"]
            torch.testing.assert_close(update.tensors[f"inner_adam.v.{k}"] + meta[f"inner_adam.v.{k}"], moment, rtol=1e-6, atol=1e-12)
        assert float(update.tensors["inner_adam.t"]) == 4.0
        outer.apply(update)
        assert float(outer.params["inner_adam.t"].detach()) == 4.0 * (t + 1)
    # Adam's per-coordinate scaling makes the delta differ from SGD's on the same minibatches
    sgd = LEARNERS[name](model, "classification", inner_lr=0.01, inner_steps=4, eval_inner_steps=4, inner_batch=4)
    assert set(sgd.init_meta_params()) == set(names)
    assert not torch.allclose(sgd.compute_update(sgd.init_meta_params(), batch).tensors["head.weight"],
                              reptile.compute_update(theta, batch).tensors["head.weight"])


@pytest.mark.parametrize("name, prototype_shots", [("reptile", None), ("model_averaging", None), ("reptile", 2)])
def test_reptile_with_a_prototype_head_adapts_each_task_from_its_prototypes(name, prototype_shots, small1_uri):
    """algorithm.prototype_head for Reptile: each task's inner loop (Adam, β1 = 0, minibatches) starts from the head
    made of its support set's prototypes (with prototype_shots, of each class's first shots only, while the inner
    steps train on all), against torch.optim.Adam stepping a module by hand from that head; the body's delta is
    θ' − θ, the head's is zero (its meta-parameters are never a task's start); before any inner step the logits are
    ProtoNet's up to a per-query constant. At test the head is made of the whole support set."""
    from metadist.algorithms.protonet import prototypes, squared_distance_logits

    torch.manual_seed(11)
    model = Conv4(1, 3, hidden=4, image_size=7)
    reptile = LEARNERS[name](model, "classification", inner_lr=0.01, inner_steps=3, eval_inner_steps=3,
                             inner_optimizer="adam", inner_batch=4, prototype_head=True, prototype_shots=prototype_shots)
    theta = reptile.init_meta_params()
    names = [k for k, _ in model.named_parameters()]
    batch = classification_batch(small1_uri, tasks=2, ways=3, shots=4, queries=2)
    update = reptile.compute_update(theta, batch)
    order = torch.arange(12).view(3, 4).t().reshape(-1)
    expected = {k: torch.zeros_like(theta[k]) for k in names}
    for t in range(len(batch)):
        x, y = batch.support_x[t], batch.support_y[t]
        head_rows = torch.arange(12) if prototype_shots is None else (torch.arange(3) * 4).repeat_interleave(2) + torch.arange(2).repeat(3)
        z = functional_call(model, {k: theta[k] for k in names}, (x[head_rows],), {"embed_only": True})
        centres = prototypes(z, y[head_rows], 3)
        start = {k: theta[k].clone() for k in names} | {"head.weight": 2 * centres, "head.bias": -(centres**2).sum(-1)}
        params = {k: torch.nn.Parameter(v.clone()) for k, v in start.items()}
        adam = torch.optim.Adam(params.values(), lr=0.01, betas=(0.0, 0.999), eps=1e-8)
        for step in range(3):
            rows = order[(torch.arange(4) + 4 * step) % 12]
            adam.zero_grad()
            reptile.loss(functional_call(model, params, (x[rows],)), y[rows]).backward()
            adam.step()
        for k in names:
            if k not in Conv4.HEAD:
                expected[k] += params[k].detach() - theta[k]
        # no inner step: ProtoNet's logits, up to ‖z‖² per query
        logits = functional_call(model, start, (batch.query_x[t],))
        reference = squared_distance_logits(functional_call(model, start, (batch.query_x[t],), {"embed_only": True}), centres)
        offset = logits - reference
        torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), rtol=1e-6, atol=1e-8)
    for k in names:
        # atol 1e-7 against Adam steps of ~1e-3: Adam divides near-zero gradients by their own size, so thread
        # count alone moves an element that should be 0 by ~2e-8 (seen with OMP_NUM_THREADS=1)
        torch.testing.assert_close(update.tensors[k], expected[k], rtol=1e-6, atol=1e-7)
    assert float(update.tensors["features.0.weight"].abs().max()) > 0
    # adaptation at test starts from the prototypes too: with no inner step it classifies as ProtoNet
    before = reptile.evaluate(theta, batch, 0)
    torch.testing.assert_close(before["accuracy_before"], before["accuracy_after"])


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_zero_head_starts_every_task_from_a_zero_head(name, small1_uri):
    """The zeroing trick: each task adapts from a zero head, so the meta-gradient is the one of a model whose head
    is zero (second order: through the inner loop from it), the head's own meta-gradient is zero, and the
    un-adapted model scores every class alike."""
    torch.manual_seed(6)
    model = Conv4(1, 3, hidden=4, image_size=7)
    maml = LEARNERS[name](model, "classification", inner_lr=0.4, inner_steps=2, eval_inner_steps=2, zero_head=True)
    theta = maml.init_meta_params()
    batch = classification_batch(small1_uri, tasks=2, ways=3)
    update = maml.compute_update(theta, batch)
    zeroed = {k: (torch.zeros_like(v) if k in Conv4.HEAD else v) for k, v in theta.items()}
    plain = LEARNERS[name](model, "classification", inner_lr=0.4, inner_steps=2, eval_inner_steps=2)
    reference = plain.compute_update(zeroed, batch)
    for k in theta:
        expected = torch.zeros_like(theta[k]) if k in Conv4.HEAD else reference.tensors[k]
        torch.testing.assert_close(update.tensors[k], expected, rtol=1e-9, atol=1e-12)
    metrics = maml.evaluate(theta, batch)
    torch.testing.assert_close(metrics["loss_before"], torch.full((2,), math.log(3)))
    torch.testing.assert_close(metrics["accuracy_after"], plain.evaluate(zeroed, batch)["accuracy_after"])
    # Learners without a head that tasks adapt ignore it: the embedded default sets it, and a user may switch learners.
    from metadist.algorithms import build_learner
    from metadist.config import AlgorithmConfig

    for other in ("reptile", "protonet", "meta_lstm"):
        learner = build_learner(AlgorithmConfig(name=other, zero_head=True), model, "classification", ways=3, shots=1)
        assert not getattr(learner, "zero_head", False)
        learner = build_learner(AlgorithmConfig(name=other, prototype_head=True), model, "classification", ways=3, shots=1)
        # Reptile's inner loop adapts a head, so it may start from the prototypes; the others have none to start
        assert getattr(learner, "prototype_head", False) == (other == "reptile")
    with pytest.raises(ValueError, match="zero_head and algorithm.prototype_head are two starts for the head"):
        AlgorithmConfig(zero_head=True, prototype_head=True)


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil"])
def test_prototype_head_starts_every_task_at_protonet_s_logits(name, small1_uri):
    """Proto-MAML: before any inner step each task's logits are −‖z − c_k‖² up to a per-query constant (so it
    classifies as ProtoNet does); the meta-gradient reaches the body through the prototypes, never the head's own
    parameters; the task-batched route and vmap's give the same update."""
    from metadist.algorithms.protonet import prototypes, squared_distance_logits

    torch.manual_seed(7)
    model = Conv4(1, 3, hidden=4, image_size=7)
    learner = LEARNERS[name](model, "classification", inner_lr=0.4, inner_steps=2, eval_inner_steps=0, prototype_head=True)
    theta = learner.init_meta_params()
    batch = classification_batch(small1_uri, tasks=2, ways=3, shots=2)
    adapted = learner.adapt(theta, batch.support_x, batch.support_y, steps=0)
    logits = learner.predict(theta, adapted, batch.query_x)
    for t in range(2):
        embed = lambda x: functional_call(model, theta, (x,), {"embed_only": True})  # noqa: E731
        reference = squared_distance_logits(embed(batch.query_x[t]), prototypes(embed(batch.support_x[t]), batch.support_y[t], 3))
        offset = logits[t] - reference  # ‖z‖²: the same for every class of a query
        torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), rtol=1e-5, atol=1e-5)
    # "before adaptation" is each task's prototype head, with no inner step
    torch.testing.assert_close(learner.evaluate(theta, batch, 0)["accuracy_before"], learner.evaluate(theta, batch, 0)["accuracy_after"])
    update = learner.compute_update(theta, batch)
    assert all(float(update.tensors[k].abs().max()) == 0 for k in Conv4.HEAD)
    assert float(update.tensors["features.0.weight"].abs().max()) > 0
    learner.task_forward = lambda tasks: None  # vmap's route: one task at a time through functional_call
    by_vmap = learner.compute_update(theta, batch)
    for k in theta:
        torch.testing.assert_close(update.tensors[k], by_vmap.tensors[k], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="two different head starts"):
        LEARNERS[name](model, "classification", inner_lr=0.4, inner_steps=1, eval_inner_steps=1, zero_head=True,
                       prototype_head=True)


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_prototype_head_meta_gradient_is_protonet_s_when_the_inner_step_is_negligible(name, small1_uri):
    """With an inner rate of ~0, θ' = θ and the head is the prototypes' own: the query loss is ProtoNet's (logits
    differ by ‖z‖², the same for every class), so the meta-gradient must be ProtoNet's. For first order, that holds
    only if the gradient follows the query loss through the prototypes back into the body."""
    torch.manual_seed(8)
    model = Conv4(1, 3, hidden=4, image_size=7)
    learner = LEARNERS[name](model, "classification", inner_lr=1e-30, inner_steps=1, eval_inner_steps=1, prototype_head=True)
    theta = learner.init_meta_params()
    embedder = Conv4(1, None, hidden=4, image_size=7)
    protonet = LEARNERS["protonet"](embedder, "classification", inner_lr=0.1, inner_steps=1, eval_inner_steps=1)
    body = {k: v for k, v in theta.items() if k not in Conv4.HEAD}
    assert set(body) == set(protonet.init_meta_params())
    batch = classification_batch(small1_uri, tasks=2, ways=3, shots=2)
    expected = protonet.compute_update(body, batch)
    got = learner.compute_update(theta, batch)
    for k in body:
        torch.testing.assert_close(got.tensors[k], expected.tensors[k], rtol=1e-4, atol=1e-6)
    learner.task_forward = lambda tasks: None  # and through vmap's route
    for k in body:
        torch.testing.assert_close(learner.compute_update(theta, batch).tensors[k], expected.tensors[k], rtol=1e-4, atol=1e-6)


def test_test_time_shifts_adapt_on_every_copy_and_average_the_queries_outputs(small1_uri):
    """algorithm.eval_shift = s: the support set and its copies moved by each offset in [−s, s]², and the mean of
    the outputs over each query's copies; ProtoNet's prototypes are then the means over all copies, and its
    probabilities those of the mean of the copies' distances (it measures the distance of the copies' mean embedding,
    which differs by a constant per query)."""
    from metadist.algorithms.base import shifted_copies
    from metadist.algorithms.protonet import prototypes, squared_distance_logits
    from metadist.data.sampler import shift_examples

    batch = classification_batch(small1_uri, tasks=2, ways=3, shots=2)
    copies = shifted_copies(batch.support_x, 1)
    assert copies.shape == (9, *batch.support_x.shape)
    assert torch.equal(copies[4], batch.support_x)  # the centre of the grid is the image itself
    one = shift_examples(batch.support_x[0], torch.tensor([[1, -1]]).expand(6, 2), 1)  # (dy, dx) = (1, −1): copy 6
    assert torch.equal(copies[6, 0], one) and float(copies[6, 0, :, :, 0].abs().max()) == 0  # zero fill
    torch.manual_seed(9)
    model = Conv4(1, None, hidden=4, image_size=7)
    learner = LEARNERS["protonet"](model, "classification", inner_lr=0.1, inner_steps=1, eval_inner_steps=1)
    theta = learner.init_meta_params()
    plain = learner.predict(theta, learner.adapt(theta, batch.support_x, batch.support_y), batch.query_x)
    torch.testing.assert_close(learner.predict_at_test(theta, learner.adapt_at_test(theta, batch.support_x, batch.support_y),
                                                       batch.query_x), plain)  # eval_shift 0: adapt and predict
    learner.eval_shift = 1
    logits = learner.predict_at_test(theta, learner.adapt_at_test(theta, batch.support_x, batch.support_y), batch.query_x)
    embed = lambda x: functional_call(model, theta, (x,))  # noqa: E731
    for t in range(2):
        every = torch.cat(list(copies[:, t]))  # the 9 copies of the support set, one after the other
        protos = prototypes(embed(every), batch.support_y[t].repeat(9), 3)
        expected = torch.stack([squared_distance_logits(embed(q[t]), protos) for q in shifted_copies(batch.query_x, 1)]).mean(0)
        torch.testing.assert_close(logits[t].log_softmax(-1), expected.log_softmax(-1), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(logits[t], expected)  # the constant: the copies are not all alike
    adapted = learner.adapt_at_test(theta, batch.support_x, batch.support_y)
    assert torch.equal(adapted["counts"], torch.full((2, 3), 2.0))  # the examples', not their 9 copies'
    generic = MetaLearner.predict_at_test(learner, theta, adapted, batch.query_x)  # the mean of the copies' logits
    torch.testing.assert_close(logits.log_softmax(-1), generic.log_softmax(-1), rtol=1e-5, atol=1e-5)
    assert learner.evaluate(theta, batch)["accuracy_after"].shape == (2,)


def _refined_by_hand(protos: list[float], counts: list[float], queries: list[float], steps: int) -> list[float]:
    """Soft k-means over 1-D queries, number by number: weights exp(−(q − p_k)²) normalised over k."""
    sums = [p * c for p, c in zip(protos, counts)]
    for _ in range(steps):
        weights = []
        for q in queries:
            e = [math.exp(-((q - p) ** 2)) for p in protos]
            weights.append([v / sum(e) for v in e])
        protos = [(sums[k] + sum(w[k] * q for w, q in zip(weights, queries))) / (counts[k] + sum(w[k] for w in weights))
                  for k in range(len(protos))]
    return protos


def test_refined_prototypes_equal_a_hand_computation():
    from metadist.algorithms.protonet import refine_prototypes

    protos, counts, queries = [0.0, 4.0, 1.5], [1.0, 2.0, 1.0], [1.0, 3.0, 3.5, 0.2]
    for steps in (0, 1, 3):
        got = refine_prototypes(torch.tensor(protos, dtype=torch.float64)[:, None], torch.tensor(counts),
                                torch.tensor(queries, dtype=torch.float64)[:, None], steps)
        torch.testing.assert_close(got[:, 0], torch.tensor(_refined_by_hand(protos, counts, queries, steps), dtype=torch.float64))
    two_d = refine_prototypes(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([1.0, 1.0]),
                              torch.tensor([[0.0, 1.0], [3.0, 3.0]]), 1)  # each coordinate weighted alike
    w = [[math.exp(-d) for d in (1.0, 18.0)], [math.exp(-d) for d in (18.0, 1.0)]]
    w = [[v / sum(row) for v in row] for row in w]
    first = [(w[0][0] * 0 + w[1][0] * 3) / (1 + w[0][0] + w[1][0]), (w[0][0] * 1 + w[1][0] * 3) / (1 + w[0][0] + w[1][0])]
    torch.testing.assert_close(two_d[0], torch.tensor(first))


def test_transductive_steps_let_the_queries_a_class_owns_claim_an_ambiguous_one():
    """1-D embeddings (the images themselves, through a network with no parameters): class 0's support at 0 and its
    confident queries at 3 pull its prototype towards 3, so the ambiguous query at 5.2 (nearer 10 than 0) joins it."""
    learner = LEARNERS["protonet"](torch.nn.Flatten(), "classification", inner_lr=0.1, inner_steps=1, eval_inner_steps=1)
    as_images = lambda values: torch.tensor(values)[..., None, None, None]  # noqa: E731  [T, M, 1, 1, 1]
    batch = Episodes(as_images([[0.0, 10.0], [10.0, 0.0]]), torch.tensor([[0, 1], [0, 1]]),
                     as_images([[3.0, 3.0, 3.0, 5.2, 10.0], [0.0, 7.0, 7.0, 7.0, 4.8]]), torch.tensor([[0, 0, 0, 0, 1], [1, 0, 0, 0, 0]]))
    assert learner.evaluate({}, batch)["accuracy_after"].tolist() == [0.8, 0.8]
    learner.transductive_steps = 1
    metrics = learner.evaluate({}, batch)
    assert metrics["accuracy_after"].tolist() == [1.0, 1.0]
    for t in range(2):  # each task refined over its own queries only: vmap equals a per-task loop
        one = learner.evaluate({}, task_slice(batch, t))
        torch.testing.assert_close(one["loss_after"], metrics["loss_after"][t : t + 1])


def _preprocess_by_hand(x, p=10.0):
    """Andrychowicz et al.'s gradient preprocessing, element by element."""
    out = []
    for v in x.reshape(-1).tolist():
        out.append((math.log(abs(v)) / p, math.copysign(1.0, v) if v != 0 else 0.0) if abs(v) >= math.exp(-p) else (-1.0, math.exp(p) * v))
    return torch.tensor(out, dtype=x.dtype)


def test_meta_lstm_update_and_meta_gradient_match_a_hand_unrolled_lstm(small1_uri):
    """The Meta-Learner LSTM against a hand computation: torch.nn.LSTMCell as the first layer, the gates and the
    cell-state update written out, plain autograd through the unrolled steps with the support gradient and loss
    as constants (the paper's choice), summed over tasks."""
    torch.manual_seed(7)
    model = Conv4(1, 3, hidden=2, image_size=7)
    learner_ = LEARNERS["meta_lstm"](model, "classification", inner_lr=0.1, inner_steps=2, eval_inner_steps=2)
    theta = learner_.init_meta_params()
    batch = classification_batch(small1_uri, tasks=2, ways=3)
    update = learner_.compute_update(theta, batch)
    names = [k for k, _ in model.named_parameters()]
    hidden = 20

    leaves = leaf(theta)
    first = torch.nn.LSTMCell(4, hidden).double()
    with torch.no_grad():
        first.bias_hh.zero_()
    total = 0.0
    for t in range(len(batch)):
        x, y = batch.support_x[t], batch.support_y[t]
        flat = torch.cat([leaves[n].reshape(-1) for n in names])
        sizes = [leaves[n].numel() for n in names]
        unflat = lambda f: {n: part.view(leaves[n].shape) for n, part in zip(names, f.split(sizes))}  # noqa: E731
        h = c1 = torch.zeros(flat.numel(), hidden, dtype=torch.float64)
        i_prev = f_prev = torch.zeros_like(flat)
        for _ in range(2):
            probe = flat.detach().requires_grad_()
            loss = learner_.loss(functional_call(model, unflat(probe), (x,)), y)
            g = torch.autograd.grad(loss, probe)[0]
            inputs = torch.cat([_preprocess_by_hand(g), _preprocess_by_hand(loss.detach().reshape(1)).expand(flat.numel(), 2)], 1)
            # the first layer is torch's own LSTM cell, with the learner's weights
            h, c1 = torch._VF.lstm_cell(inputs, (h, c1), leaves["metalstm.lstm.weight_ih"], leaves["metalstm.lstm.weight_hh"],
                                        leaves["metalstm.lstm.bias"], first.bias_hh)
            i_t = torch.sigmoid(torch.cat([h, flat[:, None], i_prev[:, None]], 1) @ leaves["metalstm.input_gate.weight"] + leaves["metalstm.input_gate.bias"])
            f_t = torch.sigmoid(torch.cat([h, flat[:, None], f_prev[:, None]], 1) @ leaves["metalstm.forget_gate.weight"] + leaves["metalstm.forget_gate.bias"])
            flat = f_t * flat - i_t * g
            i_prev, f_prev = i_t, f_t
        total = total + learner_.loss(functional_call(model, unflat(flat), (batch.query_x[t],)), batch.query_y[t])
    expected = dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()))))
    for k in theta:
        torch.testing.assert_close(update.tensors[k], expected[k], rtol=1e-7, atol=1e-10, msg=k)
    assert float(update.tensors["metalstm.input_gate.bias"].abs()) > 0  # the learned rate gets a gradient
    # the input gate starts at inner_lr: the first step is SGD at 0.1 with the forget gate's shrinkage σ(5)
    assert float(torch.sigmoid(theta["metalstm.input_gate.bias"])) == pytest.approx(0.1)


def test_running_statistics_become_the_tasks_mean_whatever_the_outer_step():
    """Reptile's inner Adam moment is a running statistic: the outer step sets it to the tasks' mean, outside the
    optimizer's learning rate, schedule and clipping, while the parameters take the optimizer's step."""
    from metadist.algorithms.base import Update
    from metadist.algorithms.outer import MetaOptimizer
    from metadist.config import OptimizerConfig

    theta = {"w": torch.zeros(3), "stats.w": torch.ones(3)}
    outer = MetaOptimizer(theta, OptimizerConfig(name="adam", lr=0.1, clip_norm=1e-3, schedule="linear"), total_steps=4,
                          running_prefixes=("stats.",))
    update = Update("delta", {"w": torch.tensor([2.0, 0.0, 0.0]), "stats.w": torch.tensor([4.0, 8.0, -2.0])}, num_tasks=2)
    result = outer.apply(update)
    torch.testing.assert_close(outer.params["stats.w"].detach(), torch.tensor([3.0, 5.0, 0.0]))
    assert result.update_norm == pytest.approx(1.0)  # the parameters' mean delta alone: the statistic is not clipped
    assert float(outer.params["w"][0].detach()) == pytest.approx(0.1, rel=1e-4)  # Adam's first step: about lr, towards the delta
    assert "stats.w" not in {id(p) for g in outer.optimizer.param_groups for p in g["params"]}
    assert len(outer.optimizer.param_groups[0]["params"]) == 1


def test_reptile_recipe_settings_are_refused_for_learners_that_differentiate_their_inner_loop():
    from metadist.config import AlgorithmConfig

    with pytest.raises(ValueError, match="inner_optimizer 'adam': only for reptile and model_averaging"):
        AlgorithmConfig(name="maml", inner_optimizer="adam")
    with pytest.raises(ValueError, match="inner_batch: only for reptile and model_averaging"):
        AlgorithmConfig(name="fomaml", inner_batch=10)
    with pytest.raises(ValueError, match="prototype_shots: only for reptile and model_averaging with algorithm.prototype_head"):
        AlgorithmConfig(name="reptile", prototype_shots=1)
    with pytest.raises(ValueError, match="prototype_shots: only for reptile and model_averaging"):
        AlgorithmConfig(name="maml", prototype_head=True, prototype_shots=1)
    from pathlib import Path

    from metadist.config import apply_overrides, load_job
    from metadist.errors import ConfigError

    job = load_job(Path(__file__).resolve().parents[1] / "jobs" / "omniglot-5way-1shot-reptile.yaml")
    with pytest.raises(ConfigError, match="algorithm.prototype_shots = 11 exceeds data.episode.shots = 10"):
        apply_overrides(job, ["algorithm.prototype_head=true", "algorithm.prototype_shots=11"])


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


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd", "meta_lstm", "reptile", "protonet"])
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




@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd", "protonet", "matching", "siamese"])
def test_one_task_passes_by_autograd_equal_the_vmapped_update(small1_uri, name):
    """A model without forward_tasks (ResNet-12) and one task per pass: plain autograd, no torch.func transform (it
    holds a fraction of vmap's memory); the same update and metrics as vmap over the whole batch, prototype head
    included for the MAML family."""
    from metadist.models import ResNet12

    torch.manual_seed(9)
    metric = name in ("protonet", "matching", "siamese")
    model = ResNet12(1, None if metric else 3, channels=(3, 4))
    batch = classification_batch(small1_uri, tasks=3)
    heads = [False] if metric or name == "metasgd" else [False, True]
    for prototype_head in heads:
        settings = {"prototype_head": prototype_head} if not metric else {}
        by_task = LEARNERS[name](model, "classification", inner_lr=0.3, inner_steps=2, eval_inner_steps=2, **settings)
        by_task.tasks_per_pass = 1  # algorithm.tasks_per_pass
        whole = LEARNERS[name](model, "classification", inner_lr=0.3, inner_steps=2, eval_inner_steps=2, **settings)
        theta = whole.init_meta_params()
        expected, got = whole.compute_update(theta, batch), by_task.compute_update(theta, batch)
        assert got.num_tasks == expected.num_tasks == 3
        for k in theta:
            torch.testing.assert_close(got.tensors[k], expected.tensors[k], rtol=1e-8, atol=1e-10)
        for k in expected.metrics:
            assert got.metrics[k] == pytest.approx(expected.metrics[k], rel=1e-8)
