"""Matching Networks and Siamese networks against hand computations, on tiny conv nets and real Omniglot (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metadist.algorithms import LEARNERS, MatchingNetworks, SiameseNetwork, build_learner
from metadist.algorithms.matching import lstm_cell, support_context
from metadist.config import AlgorithmConfig
from metadist.models import Conv4
from tests.helpers import classification_batch, task_slice

WAYS = 3


@pytest.fixture(autouse=True, scope="module")
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def tiny_model() -> Conv4:
    return Conv4(1, None, hidden=4, image_size=7)


def matching(fce: bool = False, **settings) -> MatchingNetworks:
    return MatchingNetworks(tiny_model(), "classification", inner_lr=0.1, inner_steps=1, eval_inner_steps=1, fce=fce, **settings)


def siamese() -> SiameseNetwork:
    return SiameseNetwork(tiny_model(), "classification", inner_lr=0.1, inner_steps=1, eval_inner_steps=1)


def embed(learner, theta, x):
    return functional_call(learner.model, learner.model_params(theta), (x,))


# -- Matching Networks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [None, 10.0], ids=["paper-plain-cosine", "learned-scale"])
def test_matching_log_probabilities_equal_a_hand_computation(small1_uri, scale):
    torch.manual_seed(0)
    algo = matching(scale=scale)
    theta = algo.init_meta_params()
    if scale is None:
        assert "matching.scale" not in theta
    else:
        theta["matching.scale"] = torch.tensor(3.7)  # any value: the learned one is used
    s = 1.0 if scale is None else 3.7
    batch = classification_batch(small1_uri, tasks=2, ways=WAYS)
    log_probs = algo.predict(theta, algo.adapt(theta, batch.support_x, batch.support_y), batch.query_x)
    assert log_probs.shape == (2, batch.query_x.shape[1], WAYS)
    for t in range(2):
        support, query = embed(algo, theta, batch.support_x[t]), embed(algo, theta, batch.query_x[t])
        for q in range(query.shape[0]):
            weights = [math.exp(s * float(F.cosine_similarity(query[q], z, dim=0))) for z in support]
            for n in range(WAYS):
                in_class = sum(w for w, y in zip(weights, batch.support_y[t].tolist()) if y == n)
                assert abs(float(log_probs[t, q, n]) - math.log(in_class / sum(weights))) < 1e-10
    # the training loss is the NLL of those probabilities
    update = algo.compute_update(theta, batch)
    nll = -sum(float(log_probs[t, q, y]) for t in range(2) for q, y in enumerate(batch.query_y[t].tolist())) / batch.query_y.shape[1]
    assert abs(update.metrics["loss_after"] - nll) < 1e-9


def test_lstm_cell_equals_torch_lstm_cell():
    torch.manual_seed(1)
    reference = torch.nn.LSTMCell(3, 5)
    x, h, c = torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 5)
    expected_h, expected_c = reference(x, (h, c))
    got_h, got_c = lstm_cell(reference.weight_ih, reference.weight_hh, reference.bias_ih + reference.bias_hh, x, h, c)
    torch.testing.assert_close(got_h, expected_h)
    torch.testing.assert_close(got_c, expected_c)


def test_fce_support_embeddings_are_a_bidirectional_lstm_plus_the_skip():
    torch.manual_seed(2)
    size, examples = 4, 6
    reference = torch.nn.LSTM(size, size, bidirectional=True)
    params = {}
    for direction, suffix in (("support_fw", ""), ("support_bw", "_reverse")):
        params[f"fce.{direction}.w_ih"] = getattr(reference, f"weight_ih_l0{suffix}")
        params[f"fce.{direction}.w_hh"] = getattr(reference, f"weight_hh_l0{suffix}")
        params[f"fce.{direction}.bias"] = getattr(reference, f"bias_ih_l0{suffix}") + getattr(reference, f"bias_hh_l0{suffix}")
    g_prime = torch.randn(examples, size)
    out, _ = reference(g_prime[:, None, :])  # [S, 1, 2D]: forward states then backward states
    torch.testing.assert_close(support_context(params, g_prime), out[:, 0, :size] + out[:, 0, size:] + g_prime)


def test_fce_shapes_gradients_and_vmap_equals_a_per_task_loop(small1_uri):
    torch.manual_seed(3)
    algo = matching(fce=True)
    theta = algo.init_meta_params()
    size = algo.model.embedding_dim
    assert theta["matching.scale"].shape == ()
    fce = {k: v.shape for k, v in theta.items() if k.startswith("fce.")}
    assert fce == {
        **{f"fce.{d}.w_ih": (4 * size, size) for d in ("support_fw", "support_bw", "query")},
        **{f"fce.{d}.w_hh": (4 * size, size) for d in ("support_fw", "support_bw")},
        "fce.query.w_hh": (4 * size, 2 * size),  # the attention LSTM's recurrent input is [h, r]
        **{f"fce.{d}.bias": (4 * size,) for d in ("support_fw", "support_bw", "query")},
    }
    assert set(algo.model_params(theta)) == {k for k, _ in algo.model.named_parameters()}
    batch = classification_batch(small1_uri, tasks=3, ways=WAYS)
    adapted = algo.adapt(theta, batch.support_x, batch.support_y)
    assert adapted["support_z"].shape == (3, batch.support_x.shape[1], size)
    assert algo.predict(theta, adapted, batch.query_x).shape == (3, batch.query_x.shape[1], WAYS)

    whole = algo.compute_update(theta, batch)
    for k in [*fce, "matching.scale"]:
        assert float(whole.tensors[k].abs().sum()) > 0, k
    _assert_vmap_equals_loop(algo, theta, batch, whole)


def test_fce_changes_the_embeddings_and_comes_from_the_config():
    torch.manual_seed(4)
    plain = build_learner(AlgorithmConfig(name="matching"), tiny_model(), "classification")
    full = build_learner(AlgorithmConfig(name="matching", matching_fce=True), tiny_model(), "classification")
    assert isinstance(full, MatchingNetworks) and full.fce and not plain.fce
    assert not any(k.startswith("fce.") for k in plain.init_meta_params())
    # the extra weights are drawn once, with the model: initialisation depends only on the seed
    first, second = full.init_meta_params(), full.init_meta_params()
    assert all(torch.equal(first[k], second[k]) for k in first)


# -- Siamese networks ---------------------------------------------------------------------------------------------
def test_siamese_verification_logits_and_loss_equal_a_hand_computation(small1_uri):
    torch.manual_seed(5)
    algo = siamese()
    theta = algo.init_meta_params()
    assert set(theta) - set(algo.model_params(theta)) == {"siamese.weight", "siamese.bias"}
    batch = classification_batch(small1_uri, tasks=2, ways=WAYS)
    scores = algo.predict(theta, algo.adapt(theta, batch.support_x, batch.support_y), batch.query_x)
    w, b = theta["siamese.weight"], float(theta["siamese.bias"])
    total_loss = 0.0
    for t in range(2):
        support, query = embed(algo, theta, batch.support_x[t]), embed(algo, theta, batch.query_x[t])
        sy, qy = batch.support_y[t].tolist(), batch.query_y[t].tolist()
        positives, negatives = [], []
        for q in range(query.shape[0]):
            pair = [sum(float(w[d]) * abs(float(query[q, d] - s[d])) for d in range(len(w))) + b for s in support]
            for n in range(WAYS):
                assert abs(float(scores[t, q, n]) - max(v for v, y in zip(pair, sy) if y == n)) < 1e-10
            for v, y in zip(pair, sy):
                p = 1 / (1 + math.exp(-v))
                (positives if y == qy[q] else negatives).append(-math.log(p if y == qy[q] else 1 - p))
        total_loss += 0.5 * sum(positives) / len(positives) + 0.5 * sum(negatives) / len(negatives)
    assert abs(algo.compute_update(theta, batch).metrics["loss_after"] - total_loss) < 1e-9


def test_siamese_predicts_the_class_of_the_nearest_support_example(small1_uri):
    torch.manual_seed(6)
    algo = siamese()
    theta = algo.init_meta_params()
    theta["siamese.weight"] = -torch.rand_like(theta["siamese.weight"]) - 0.1  # closer ⇒ more likely the same
    batch = classification_batch(small1_uri, tasks=2, ways=WAYS)
    # queries that are the support images themselves (same batch, so the same batch-norm statistics): the nearest
    # support example of each is itself, at distance 0, so every query gets its own label
    adapted = algo.adapt(theta, batch.support_x, batch.support_y)
    assert torch.equal(algo.predict(theta, adapted, batch.support_x).argmax(-1), batch.support_y)
    # and on real queries, the predicted class is that of the support example at the least weighted L1 distance
    predicted = algo.predict(theta, adapted, batch.query_x).argmax(-1)
    w = -theta["siamese.weight"]
    for t in range(2):
        support, query = embed(algo, theta, batch.support_x[t]), embed(algo, theta, batch.query_x[t])
        for q in range(query.shape[0]):
            distances = [float((w * (query[q] - s).abs()).sum()) for s in support]
            assert int(predicted[t, q]) == int(batch.support_y[t, distances.index(min(distances))])


def test_siamese_vmap_equals_a_per_task_loop(small1_uri):
    torch.manual_seed(7)
    algo = siamese()
    theta = algo.init_meta_params()
    batch = classification_batch(small1_uri, tasks=3, ways=WAYS)
    _assert_vmap_equals_loop(algo, theta, batch, algo.compute_update(theta, batch))


# -- both -------------------------------------------------------------------------------------------------------------
LEARNER_CASES = [("matching", False), ("matching", True), ("siamese", False), ("snail", False)]
# SGD steps that descend smoothly on these tiny nets: the scaled cosine starts overconfident and needs a small one
SGD_LR = {"matching": 0.02, "siamese": 0.1, "snail": 0.5}


def _build(name: str, fce: bool):
    # classification_batch's episodes: WAYS ways, 2 shots (SNAIL's output layer and sequence length follow them)
    return build_learner(AlgorithmConfig(name=name, matching_fce=fce), tiny_model(), "classification", ways=WAYS, shots=2)


@pytest.mark.parametrize(("name", "fce"), LEARNER_CASES)
def test_update_is_finite_for_every_meta_parameter_and_sgd_lowers_the_loss(small1_uri, name, fce):
    torch.manual_seed(8)
    algo = _build(name, fce)
    theta = algo.init_meta_params()
    batch = classification_batch(small1_uri, tasks=4, ways=WAYS)
    update = algo.compute_update(theta, batch)
    assert update.kind == "gradient" and set(update.tensors) == set(theta)
    for k, g in update.tensors.items():
        assert g.shape == theta[k].shape and bool(torch.isfinite(g).all()), k
    # plain SGD on one fixed batch: the loss must fall (by 5%; these runs fall 8% (Siamese) to 75% in 10 steps)
    losses = [update.metrics["loss_after"]]
    for _ in range(10):
        gradient = update.as_gradient()
        theta = {k: v - SGD_LR[name] * gradient[k] for k, v in theta.items()}
        update = algo.compute_update(theta, batch)
        losses.append(update.metrics["loss_after"])
    assert losses[-1] < 0.95 * losses[0], losses


@pytest.mark.parametrize(("name", "fce"), LEARNER_CASES)
def test_evaluate_reports_accuracy_after_per_task(small1_uri, name, fce):
    torch.manual_seed(9)
    algo = _build(name, fce)
    assert not algo.adapts_weights and isinstance(algo, LEARNERS[name])
    theta = algo.init_meta_params()
    batch = classification_batch(small1_uri, tasks=4, ways=WAYS)
    metrics = algo.evaluate(theta, batch)
    assert set(metrics) == {"loss_after", "accuracy_after"}
    assert all(v.shape == (4,) for v in metrics.values())
    # evaluation scores the same queries as training: same per-task losses and accuracies
    update = algo.compute_update(theta, batch)
    assert abs(float(metrics["loss_after"].sum()) - update.metrics["loss_after"]) < 1e-9
    assert abs(float(metrics["accuracy_after"].sum()) - update.metrics["accuracy_after"]) < 1e-9
    predicted = algo.predict(theta, algo.adapt(theta, batch.support_x, batch.support_y), batch.query_x).argmax(-1)
    torch.testing.assert_close(metrics["accuracy_after"], (predicted == batch.query_y).double().mean(-1))


def _assert_vmap_equals_loop(algo, theta, batch, whole):
    parts = [algo.compute_update(theta, task_slice(batch, t)) for t in range(len(batch))]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    assert total.num_tasks == whole.num_tasks == len(batch)
    for k in theta:
        torch.testing.assert_close(whole.tensors[k], total.tensors[k], rtol=1e-8, atol=1e-10)
    for k in whole.metrics:
        assert abs(whole.metrics[k] - total.metrics[k]) < 1e-8


# -- SNAIL ----------------------------------------------------------------------------------------------------------
def _snail_by_hand(head: dict, sequence: torch.Tensor, length: int) -> torch.Tensor:
    """The paper's head, position by position: causal dilated convolutions of kernel 2 with gated activations, and
    causal scaled dot-product attention, each appending to the features; the last position's logits."""
    from metadist.algorithms.snail import ARCHITECTURE

    xs = [row for row in sequence]  # T vectors
    index = 0
    for kind, size in ARCHITECTURE:
        levels = [None] if kind == "attention" else range(math.ceil(math.log2(length)))
        for level in levels:
            name = f"blocks.{index}"
            index += 1
            if kind == "attention":
                q = [head[f"{name}.query.weight"] @ x + head[f"{name}.query.bias"] for x in xs]
                k = [head[f"{name}.key.weight"] @ x + head[f"{name}.key.bias"] for x in xs]
                v = [head[f"{name}.value.weight"] @ x + head[f"{name}.value.bias"] for x in xs]
                reads = []
                for t in range(len(xs)):
                    w = torch.softmax(torch.stack([q[t] @ k[j] for j in range(t + 1)]) / math.sqrt(size[0]), 0)
                    reads.append(sum(w[j] * v[j] for j in range(t + 1)))
            else:
                d = 2**level
                weight, bias = head[f"{name}.conv.weight"], head[f"{name}.conv.bias"]  # [2F, C, 2]
                reads = []
                for t in range(len(xs)):
                    past = xs[t - d] if t >= d else torch.zeros_like(xs[t])
                    out = weight[:, :, 0] @ past + weight[:, :, 1] @ xs[t] + bias
                    value, gate = out.chunk(2)
                    reads.append(torch.tanh(value) * torch.sigmoid(gate))
            xs = [torch.cat([x, r]) for x, r in zip(xs, reads)]
    return head["output.weight"] @ xs[-1] + head["output.bias"]


def test_snail_logits_and_loss_equal_a_hand_computation(small1_uri):
    """Each query is read as the sequence [support (embedding ⊕ one-hot label) ..., query (embedding ⊕ 0)]; its
    logits are the head's output at the last position."""
    torch.manual_seed(10)
    algo = _build("snail", False)
    theta = algo.init_meta_params()
    batch = classification_batch(small1_uri, tasks=2, ways=WAYS)
    head = {k[len("snail."):]: v for k, v in theta.items() if k.startswith("snail.")}
    logits = algo.predict(theta, algo.adapt(theta, batch.support_x, batch.support_y), batch.query_x)
    total = 0.0
    for t in range(2):
        support_z, query_z = embed(algo, theta, batch.support_x[t]), embed(algo, theta, batch.query_x[t])
        labels = F.one_hot(batch.support_y[t], WAYS).double()
        for q in range(query_z.shape[0]):
            sequence = torch.cat([torch.cat([support_z, labels], 1), torch.cat([query_z[q], torch.zeros(WAYS)])[None]])
            expected = _snail_by_hand(head, sequence, length=WAYS * 2 + 1)
            torch.testing.assert_close(logits[t, q], expected, rtol=1e-9, atol=1e-10)
            total += float(F.cross_entropy(expected[None], batch.query_y[t, q][None]))
    update = algo.compute_update(theta, batch)
    assert update.metrics["loss_after"] == pytest.approx(total / query_z.shape[0], rel=1e-9)
    with pytest.raises(ValueError, match="trained on 3-way tasks"):
        algo.adapt(theta, batch.support_x[:, :4], torch.tensor([[0, 0, 1, 1]] * 2))


def test_snail_test_time_shifts_average_each_examples_embedding_and_keep_the_sequence(small1_uri):
    """With eval_shift, SNAIL reads the sequence it was trained on: each support example's embedding is the mean over
    its (2s + 1)² shifted copies (all embedded as one batch), each query's the mean over its copies (each copy of the
    queries one batch), rather than a support sequence (2s + 1)² times as long."""
    from metadist.algorithms.base import shifted_copies

    torch.manual_seed(11)
    algo = _build("snail", False)
    theta = algo.init_meta_params()
    batch = classification_batch(small1_uri, tasks=2, ways=WAYS)
    plain = algo.predict(theta, algo.adapt(theta, batch.support_x, batch.support_y), batch.query_x)
    torch.testing.assert_close(algo.predict_at_test(theta, algo.adapt_at_test(theta, batch.support_x, batch.support_y),
                                                    batch.query_x), plain)  # eval_shift 0: adapt and predict
    algo.eval_shift = 1
    adapted = algo.adapt_at_test(theta, batch.support_x, batch.support_y)
    assert adapted["support_z"].shape[:2] == batch.support_x.shape[:2]  # N·K positions, as in training
    logits = algo.predict_at_test(theta, adapted, batch.query_x)
    support_copies, query_copies = shifted_copies(batch.support_x, 1), shifted_copies(batch.query_x, 1)
    for t in range(2):
        every = embed(algo, theta, torch.cat(list(support_copies[:, t])))  # the 9 copies of the support set, one batch
        support_z = every.reshape(9, -1, every.shape[-1]).mean(0)
        query_z = torch.stack([embed(algo, theta, copy[t]) for copy in query_copies]).mean(0)
        expected = algo._logits(theta, support_z, F.one_hot(batch.support_y[t], WAYS).double(), query_z)
        torch.testing.assert_close(logits[t], expected, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(logits, plain)


def test_snail_relabelings_average_the_probabilities_of_sequences_relabeled_by_hand(small1_uri):
    """eval_relabelings R: relabeling r gives class c the label (c + r) mod N and reads the support set ordered by
    the new label; the query's class probabilities are the mean over r = 0..R−1, each mapped back to the task's own
    labels. With R = N the answer no longer depends on the labelling drawn: relabeling the task relabels the output."""
    torch.manual_seed(12)
    algo = build_learner(AlgorithmConfig(name="snail", eval_relabelings=WAYS), tiny_model(), "classification",
                         ways=WAYS, shots=2)
    assert algo.eval_relabelings == WAYS
    theta = algo.init_meta_params()
    batch = classification_batch(small1_uri, tasks=2, ways=WAYS)  # support ordered by label: 0, 0, 1, 1, 2, 2
    log_probabilities = algo.predict_at_test(theta, algo.adapt_at_test(theta, batch.support_x, batch.support_y),
                                             batch.query_x)
    for t in range(2):
        support_z, query_z = embed(algo, theta, batch.support_x[t]), embed(algo, theta, batch.query_x[t])
        mean = torch.zeros(query_z.shape[0], WAYS)
        for r in range(WAYS):
            # new label j holds class (j − r) mod N, that class's two examples in their order
            order = [i for j in range(WAYS) for i in range(len(batch.support_y[t])) if batch.support_y[t, i] == (j - r) % WAYS]
            labels = F.one_hot(torch.tensor([j for j in range(WAYS) for _ in range(2)]), WAYS).double()
            probabilities = torch.softmax(algo._logits(theta, support_z[order], labels, query_z), -1)
            mean += probabilities[:, [(c + r) % WAYS for c in range(WAYS)]] / WAYS  # class c answered as label c + r
        torch.testing.assert_close(log_probabilities[t], mean.log(), rtol=1e-9, atol=1e-10)

    def relabeled_answer(relabelings: int, shift: int) -> torch.Tensor:
        algo.eval_relabelings = relabelings
        support_y = (batch.support_y + shift) % WAYS  # the same task, labelled differently (and no longer in order)
        return algo.predict_at_test(theta, algo.adapt_at_test(theta, batch.support_x, support_y), batch.query_x)

    for relabelings, invariant in ((WAYS, True), (1, False)):
        own, other = relabeled_answer(relabelings, 0), relabeled_answer(relabelings, 1)
        same = torch.allclose(other.roll(-1, dims=-1), own.log_softmax(-1), rtol=1e-9, atol=1e-10)
        assert same is invariant
    # R = 1: the support read in label order whatever order the classes came in, as training presents it
    shuffled = torch.tensor([4, 5, 0, 1, 2, 3])  # classes 2, 0, 1; each class's examples in their order
    algo.eval_relabelings = 1
    torch.testing.assert_close(
        algo.predict_at_test(theta, algo.adapt_at_test(theta, batch.support_x[:, shuffled], batch.support_y[:, shuffled]),
                             batch.query_x),
        algo.predict(theta, algo.adapt(theta, batch.support_x, batch.support_y), batch.query_x),
    )


def test_snail_is_tested_on_as_many_ways_as_it_trains_on():
    from metadist.config import JobConfig, apply_overrides
    from metadist.errors import ConfigError

    with pytest.raises(ConfigError, match="snail's output layer has one logit per training way"):
        apply_overrides(JobConfig(), ["algorithm.name=snail", "data.episode.ways=20"])


@pytest.mark.parametrize("name", ["protonet", "snail"])
def test_tasks_per_pass_splits_the_batch_without_changing_the_update(small1_uri, name):
    """algorithm.tasks_per_pass bounds how many tasks are differentiated together (memory); the update is the same."""
    batch = classification_batch(small1_uri, tasks=3, ways=WAYS)
    torch.manual_seed(11)
    whole = build_learner(AlgorithmConfig(name=name), tiny_model(), "classification", ways=WAYS, shots=2)
    torch.manual_seed(11)
    split = build_learner(AlgorithmConfig(name=name, tasks_per_pass=1), tiny_model(), "classification", ways=WAYS, shots=2)
    assert split.tasks_per_pass == 1 and whole.tasks_per_pass is None
    theta = whole.init_meta_params()
    a, b = whole.compute_update(theta, batch), split.compute_update(theta, batch)
    assert a.num_tasks == b.num_tasks == 3 and a.metrics == pytest.approx(b.metrics)
    for k in theta:
        torch.testing.assert_close(a.tensors[k], b.tensors[k], rtol=1e-9, atol=1e-12)
