"""EpisodeSampler: shapes, labels, determinism, splits, rotations, cache budget; several weighted training sources."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from metadist.config import EpisodeConfig, SplitConfig
from metadist.data import SMALL2_NEW_ALPHABETS, EpisodeSampler, ShardSet
from metadist.data import rng


@pytest.fixture(scope="module")
def shards(small1_uri):
    return ShardSet(small1_uri)


def test_rng_choose_distinct_is_distinct_in_range_and_covers_population():
    u = rng.uniform(7, 3, np.arange(2000), stream=1, shape=(10,))
    chosen = rng.choose_distinct(u, 12)
    assert chosen.shape == (2000, 5)
    assert ((chosen >= 0) & (chosen < 12)).all()
    assert all(len(set(row)) == 5 for row in chosen)
    # uniform over the population and over positions (Floyd's set order is shuffled by the second half of u)
    counts = np.bincount(chosen.ravel(), minlength=12)
    assert counts.min() > 0.8 * counts.mean()
    first = np.bincount(chosen[:, 0], minlength=12)
    assert first.min() > 0.6 * first.mean()


def test_rng_is_a_pure_function_of_its_counters():
    a = rng.uniform(1, 2, np.array([5, 9]), stream=3, shape=(4,))
    b = rng.uniform(1, 2, np.array([9]), stream=3, shape=(4,))
    assert np.array_equal(a[1], b[0])
    assert not np.array_equal(a, rng.uniform(1, 3, np.array([5, 9]), stream=3, shape=(4,)))
    assert not np.array_equal(a, rng.uniform(1, 2, np.array([5, 9]), stream=4, shape=(4,)))


@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 5), (20, 1, 5), (5, 5, 3)])
def test_batch_shapes_and_labels(shards, ways, shots, queries):
    sampler = EpisodeSampler(shards, EpisodeConfig(ways=ways, shots=shots, queries=queries), seed=0)
    batch = sampler.sample(step=0, task_indices=range(4))
    assert batch.support_x.shape == (4, ways * shots, 1, 28, 28)
    assert batch.query_x.shape == (4, ways * queries, 1, 28, 28)
    assert batch.support_x.dtype == torch.float32 and 0 <= batch.support_x.min() and batch.support_x.max() <= 1
    assert torch.equal(batch.support_y[0], torch.arange(ways).repeat_interleave(shots))
    assert torch.equal(batch.query_y[0], torch.arange(ways).repeat_interleave(queries))
    assert batch.class_index.shape == batch.quarter_turns.shape == (4, ways)
    assert all(len(set(row.tolist())) == ways for row in batch.class_index)
    assert (batch.quarter_turns == 0).all()
    assert len(batch) == 4


def test_episode_examples_match_their_class_and_support_query_are_disjoint(shards):
    episode = EpisodeConfig(ways=5, shots=2, queries=3)
    sampler = EpisodeSampler(shards, episode, seed=3)
    batch = sampler.sample(step=1, task_indices=[0])
    for label, class_index in enumerate(batch.class_index[0].tolist()):
        stored = torch.from_numpy(shards.read_class(class_index).astype(np.float32) / 255)
        support = batch.support_x[0][batch.support_y[0] == label]
        query = batch.query_x[0][batch.query_y[0] == label]
        rows = [int(torch.nonzero((stored == img).flatten(1).all(1))[0]) for img in torch.cat([support, query])]
        assert len(set(rows)) == len(rows), "an example was drawn twice within one class"


def test_episode_is_the_same_whoever_asks_and_in_whatever_order(shards, small1_uri):
    episode = EpisodeConfig(ways=5, shots=1, queries=5, rotations=True)
    a = EpisodeSampler(shards, episode, seed=11).sample(step=7, task_indices=range(8))
    # another process: its own ShardSet and a tiny cache; tasks asked for one by one, in reverse order
    b_sampler = EpisodeSampler(ShardSet(small1_uri), episode, seed=11, cache_mb=0.1)
    for t in reversed(range(8)):
        b = b_sampler.sample(step=7, task_indices=[t])
        assert torch.equal(a.support_x[t], b.support_x[0]) and torch.equal(a.query_x[t], b.query_x[0])
        assert torch.equal(a.class_index[t], b.class_index[0]) and torch.equal(a.quarter_turns[t], b.quarter_turns[0])


def test_steps_tasks_and_seeds_give_different_episodes(shards):
    sampler = EpisodeSampler(shards, EpisodeConfig(), seed=0)
    base = sampler.sample(0, [0]).class_index
    assert not torch.equal(base, sampler.sample(1, [0]).class_index)
    assert not torch.equal(base, sampler.sample(0, [1]).class_index)
    assert not torch.equal(base, EpisodeSampler(shards, EpisodeConfig(), seed=1).sample(0, [0]).class_index)


def test_rotation_classes_are_rotated_copies(shards):
    sampler = EpisodeSampler(shards, EpisodeConfig(ways=20, shots=1, queries=1, rotations=True), seed=5)
    batch = sampler.sample(0, range(4))
    assert set(batch.quarter_turns.flatten().tolist()) == {0, 1, 2, 3}
    for t in range(4):
        for label in range(20):
            stored = torch.from_numpy(shards.read_class(int(batch.class_index[t, label])).astype(np.float32) / 255)
            rotated = torch.rot90(stored, int(batch.quarter_turns[t, label]), dims=(-2, -1))
            img = batch.support_x[t, label]
            assert (rotated == img).flatten(1).all(1).any(), "support image is not a rotation of its class"


def test_reflection_classes_are_mirrored_then_rotated_copies(shards):
    episode = EpisodeConfig(ways=40, shots=1, queries=2, rotations=True, reflections=True)
    sampler = EpisodeSampler(shards, episode, seed=5)
    assert sampler.pool == 8 * len(sampler.classes)
    batch = sampler.sample(0, range(4))
    seen = {(int(m), int(r)) for m, r in zip(batch.mirrored.flatten(), batch.quarter_turns.flatten())}
    assert seen == {(m, r) for m in (0, 1) for r in range(4)}, "all 8 symmetries of the square are drawn"
    for t in range(4):
        for label in range(40):
            stored = torch.from_numpy(shards.read_class(int(batch.class_index[t, label])).astype(np.float32) / 255)
            if batch.mirrored[t, label]:
                stored = torch.flip(stored, dims=(-1,))
            expected = torch.rot90(stored, int(batch.quarter_turns[t, label]), dims=(-2, -1))
            for img in torch.cat([batch.support_x[t, batch.support_y[t] == label], batch.query_x[t, batch.query_y[t] == label]]):
                assert (expected == img).flatten(1).all(1).any(), "an example is not its class mirrored, then turned"
    # (class, mirrored, turns) names a class: one episode never holds the same one twice
    for t in range(4):
        keys = set(zip(batch.class_index[t].tolist(), batch.mirrored[t].tolist(), batch.quarter_turns[t].tolist()))
        assert len(keys) == 40


def test_reflections_alone_double_the_classes_and_leave_rotation_only_episodes_unchanged(shards):
    mirrored = EpisodeSampler(shards, EpisodeConfig(ways=20, reflections=True), seed=2)
    assert mirrored.pool == 2 * len(mirrored.classes)
    batch = mirrored.sample(0, range(4))
    assert (batch.quarter_turns == 0).all() and batch.mirrored.any() and not batch.mirrored.all()
    # Without reflections the virtual ids are numbered as before: the same seed draws the same rotated episodes.
    rotated = EpisodeSampler(shards, EpisodeConfig(ways=5, rotations=True), seed=2).sample(3, range(2))
    assert not rotated.mirrored.any()
    virtual, _ = EpisodeSampler(shards, EpisodeConfig(ways=5, rotations=True), seed=2).plan(3, range(2))
    assert torch.equal(rotated.quarter_turns, torch.from_numpy(virtual % 4))


def test_development_protocol_split_draws_only_new_alphabets(small2_uri):
    shards = ShardSet(small2_uri)
    split = SplitConfig(groups=list(SMALL2_NEW_ALPHABETS))
    sampler = EpisodeSampler(shards, EpisodeConfig(ways=20), split=split, seed=0)
    assert len(sampler.classes) == 106
    ids = sampler.sample(0, range(50)).class_index.flatten().tolist()
    assert {shards.manifest.classes[i].group for i in ids} <= set(SMALL2_NEW_ALPHABETS)


def test_class_and_exclude_splits(shards):
    names = [c.name for c in shards.manifest.classes if c.group == "Greek"][:6]
    sampler = EpisodeSampler(shards, EpisodeConfig(ways=5), split=SplitConfig(classes=names), seed=0)
    assert sorted(shards.manifest.classes[i].name for i in sampler.classes) == sorted(names)
    excluded = EpisodeSampler(shards, EpisodeConfig(), split=SplitConfig(exclude_groups=["Korean"]), seed=0)
    assert all(shards.manifest.classes[i].group != "Korean" for i in excluded.classes)


def test_cache_respects_its_budget_and_evicts(small1_uri):
    shards = ShardSet(small1_uri)
    class_bytes = 20 * 28 * 28
    sampler = EpisodeSampler(shards, EpisodeConfig(ways=5), seed=0, cache_mb=12 * class_bytes / 2**20)
    assert sampler.cache.slots == 12
    assert sampler.cache.arena.numel() == 12 * class_bytes
    full = EpisodeSampler(ShardSet(small1_uri), EpisodeConfig(ways=5), seed=0)
    for step in range(20):
        a, b = sampler.sample(step, range(2)), full.sample(step, range(2))
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert sampler.cache.loads > 12  # it had to evict and reload


def test_batch_with_more_classes_than_cache_slots_is_gathered_task_by_task(small1_uri):
    shards = ShardSet(small1_uri)
    tight = EpisodeSampler(shards, EpisodeConfig(ways=5), seed=2, cache_mb=6 * 20 * 784 / 2**20)
    roomy = EpisodeSampler(shards, EpisodeConfig(ways=5), seed=2)
    assert torch.equal(tight.sample(0, range(16)).query_x, roomy.sample(0, range(16)).query_x)


def test_class_frequencies_are_uniform(shards):
    sampler = EpisodeSampler(shards, EpisodeConfig(ways=5), seed=0)
    virtual, _ = sampler.plan(0, np.arange(20000))
    counts = np.bincount(virtual.ravel(), minlength=sampler.pool)
    expected = 20000 * 5 / sampler.pool
    assert abs(counts.mean() - expected) < 1e-9 and counts.min() > 0.75 * expected and counts.max() < 1.25 * expected


def test_shift_augmentation_moves_each_example_deterministically_with_zero_fill(shards, small1_uri):
    plain = EpisodeSampler(shards, EpisodeConfig(ways=5, shots=1, queries=5, rotations=True), seed=3)
    shifted = EpisodeSampler(shards, EpisodeConfig(ways=5, shots=1, queries=5, rotations=True, shift=2), seed=3)
    a, b = plain.sample(step=4, task_indices=range(6)), shifted.sample(step=4, task_indices=range(6))
    assert torch.equal(a.class_index, b.class_index) and torch.equal(a.support_y, b.support_y)  # same episode
    moved = 0
    for before, after in zip(torch.cat([a.support_x, a.query_x], 1).flatten(0, 1), torch.cat([b.support_x, b.query_x], 1).flatten(0, 1)):
        # exactly one offset in [-2, 2]² reproduces the shifted image from the original with zeros shifted in
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                padded = torch.nn.functional.pad(before, (2, 2, 2, 2))
                if torch.equal(padded[:, 2 - dy : 30 - dy, 2 - dx : 30 - dx], after):
                    matches.append((dy, dx))
        assert matches, "a shifted example is not a shifted copy of the original"
        moved += (0, 0) not in matches
    assert moved > 30  # of 60 examples, most are moved (24 of the 25 offsets move them)
    # whoever asks, alone or in a batch: the same shifts
    alone = EpisodeSampler(ShardSet(small1_uri), shifted.episode, seed=3).sample(step=4, task_indices=[5])
    assert torch.equal(alone.support_x[0], b.support_x[5]) and torch.equal(alone.query_x[0], b.query_x[5])


def _ink_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Total ink and its centroid (x, y) in affine_grid's normalized coordinates, per image of [M, 1, H, W]."""
    h, w = x.shape[-2:]
    ys, xs = (torch.arange(h, dtype=torch.float64) * 2 + 1) / h - 1, (torch.arange(w, dtype=torch.float64) * 2 + 1) / w - 1
    img = x[:, 0].double()
    mass = img.sum((-2, -1))
    centroid = torch.stack([(img * xs[None, None, :]).sum((-2, -1)), (img * ys[None, :, None]).sum((-2, -1))], -1) / mass[:, None]
    return mass, centroid


def test_affine_augmentation_warps_each_example_by_its_own_drawn_rotation_scale_and_shear(shards, small1_uri):
    from metadist.config import AffineJitterConfig
    from metadist.data import rng

    jitter = AffineJitterConfig(degrees=20, scale=0.2, shear=15)
    plain = EpisodeSampler(shards, EpisodeConfig(ways=5, shots=1, queries=5, rotations=True), seed=3)
    warped = EpisodeSampler(shards, EpisodeConfig(ways=5, shots=1, queries=5, rotations=True, affine=jitter), seed=3)
    a, b = plain.sample(step=4, task_indices=range(6)), warped.sample(step=4, task_indices=range(6))
    assert torch.equal(a.class_index, b.class_index) and torch.equal(a.query_y, b.query_y)  # same episode
    before, after = torch.cat([a.support_x, a.query_x], 1).flatten(0, 1), torch.cat([b.support_x, b.query_x], 1).flatten(0, 1)
    assert after.min() >= 0 and after.max() <= 1 and not torch.equal(before, after)

    # An independent account of the warp each example should get: the same draws, as a matrix built by hand.
    u = 2 * rng.uniform(3, 4, np.arange(6), rng.STREAM_AFFINE, (30, 3)).reshape(-1, 3) - 1
    expected_mass, expected_centroid = [], []
    mass, centroid = _ink_moments(before)
    for i, (r, s, k) in enumerate(u):
        angle, shear, scale = np.deg2rad(r * 20), np.deg2rad(k * 15), 1 + s * 0.2
        matrix = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.array([[1, np.tan(shear)], [0, 1]])
        expected_mass.append(mass[i].item() * np.linalg.det(matrix))  # area, and so ink, scales by the determinant
        expected_centroid.append(matrix @ centroid[i].numpy())  # a linear map moves the centroid with it
    got_mass, got_centroid = _ink_moments(after)
    # Bilinear resampling blurs this a little, and a stroke pushed past the border is cut off (those examples
    # miss); a wrong sign, axis or inverse would miss on nearly all (a 20° turn moves a centroid 0.3 out by ~0.1).
    mass_ok = np.abs(got_mass.numpy() / np.array(expected_mass) - 1) < 0.02
    centroid_ok = np.abs(got_centroid.numpy() - np.array(expected_centroid)).max(1) < 0.01
    assert (mass_ok & centroid_ok).mean() > 0.8, (mass_ok.mean(), centroid_ok.mean())

    # whoever asks, alone or in a batch: the same warps
    alone = EpisodeSampler(ShardSet(small1_uri), warped.episode, seed=3).sample(step=4, task_indices=[5])
    assert torch.allclose(alone.support_x[0], b.support_x[5]) and torch.allclose(alone.query_x[0], b.query_x[5])


def test_held_out_episodes_refuse_augmentation():
    from pydantic import ValidationError

    from metadist.config import DataConfig

    with pytest.raises(ValidationError, match="test_episode.shift"):
        DataConfig(test_episode=EpisodeConfig(shift=1))
    with pytest.raises(ValidationError, match="test_episode.affine"):
        DataConfig(test_episode=EpisodeConfig(affine={"degrees": 5}))


# -- several weighted training sources -------------------------------------------------------------------------------
def _two_sources(small1_uri, *extra: str):
    """A job whose data.train is small1 split by alphabet into two sources, weighted 3 : 1."""
    from tests.helpers import tiny_job

    sources = (f"data.train=[{{uri: '{small1_uri}', weight: 3, split: {{groups: [Korean, Latin]}}}}, "
               f"{{uri: '{small1_uri}', split: {{groups: [Balinese, Greek]}}}}]")
    return tiny_job(small1_uri, small1_uri, Path("unused"), sources, *extra)


def test_data_train_takes_one_source_or_a_weighted_list(small1_uri):
    from metadist.config import JobConfig, TaskSourceConfig, WeightedSourceConfig, apply_overrides
    from metadist.errors import ConfigError
    from metadist.tracking.environment import run_tags

    one = JobConfig()
    assert isinstance(one.data.train, TaskSourceConfig) and one.data.train_sources == [(one.data.train, 1.0)]
    two = _two_sources(small1_uri)
    assert [w for _, w in two.data.train_sources] == [3.0, 1.0] and isinstance(two.data.train[1], WeightedSourceConfig)
    # Numbered keys: in MLflow params, and for --set into one source.
    assert two.flat()["data.train.0.weight"] == "3.0" and two.flat()["data.train.1.split.groups"] == "['Balinese', 'Greek']"
    assert apply_overrides(two, ["data.train.1.weight=2"]).data.train_sources[1][1] == 2.0
    assert run_tags(two)["metadist.dataset"] == f"{small1_uri} (weight 3); {small1_uri} (weight 1)"
    for bad, expected in [
        ("data.train.0.weight=0", "data.train.0.weight: Input should be greater than 0"),
        ("data.train.0.weight=.inf", "data.train.0.weight: Input should be a finite number"),
        ("data.train=[]", "train is an empty list"),
        ("data.train.5.weight=1", "data.train is a list of 2; '5' is not one of its indices"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            apply_overrides(two, [bad])
    with pytest.raises(ConfigError, match=re.escape("data.train.weight: Extra inputs are not permitted")):
        apply_overrides(one, ["data.train.weight=2"])  # a weight belongs to a source of a list


def test_multi_source_episodes_are_the_same_however_the_tasks_are_sliced(small1_uri):
    from metadist.core import make_sampler
    from metadist.data import MultiSourceSampler

    sampler = make_sampler(_two_sources(small1_uri), "train", progress=False)
    assert isinstance(sampler, MultiSourceSampler)
    whole = sampler.sample(3, range(16))
    assert set(whole.source_index.tolist()) == {0, 1}  # this batch mixes the sources: both are stacked into one
    halves = [sampler.sample(3, range(0, 8)), sampler.sample(3, range(8, 16))]
    fresh = make_sampler(_two_sources(small1_uri), "train", progress=False)  # another process, another worker
    backwards = [fresh.sample(3, [t]) for t in reversed(range(16))][::-1]
    for name in ("support_x", "support_y", "query_x", "query_y", "class_index", "quarter_turns", "mirrored",
                 "task_indices", "source_index"):
        assert torch.equal(getattr(whole, name), torch.cat([getattr(h, name) for h in halves])), name
        assert torch.equal(getattr(whole, name), torch.cat([getattr(b, name) for b in backwards])), name
    # An episode from source i is exactly source i's own episode for (seed, step, task), and from its classes.
    groups = [{"Korean", "Latin"}, {"Balinese", "Greek"}]
    manifest = sampler.shards.manifest
    for t in range(16):
        i = int(whole.source_index[t])
        alone = sampler.samplers[i].sample(3, [t])
        assert torch.equal(alone.support_x[0], whole.support_x[t]) and torch.equal(alone.query_x[0], whole.query_x[t])
        assert {manifest.classes[c].group for c in whole.class_index[t].tolist()} <= groups[i]


def test_multi_source_episodes_mix_sources_in_the_weights_proportions(small1_uri):
    from metadist.core import make_sampler

    sampler = make_sampler(_two_sources(small1_uri), "train", progress=False)
    n, p = 2000, 0.75  # weights 3 : 1
    # The draw alone (no pixels), and through sample() for a few steps: the batch says the same.
    drawn = np.concatenate([sampler.sources(step, range(100)) for step in range(n // 100)])
    assert np.array_equal(drawn[:32], sampler.sample(0, range(32)).source_index.numpy())
    # Within 4 binomial standard deviations of n·p (sqrt(2000 · 0.75 · 0.25) = 19.4 episodes): a false alarm is a
    # 1-in-15,000 event, and the draw is deterministic, so this test never flickers.
    bound = 4 * np.sqrt(n * p * (1 - p))
    assert abs(int((drawn == 0).sum()) - n * p) < bound
    assert abs(int((drawn == 1).sum()) - n * (1 - p)) < bound


def test_a_single_source_in_a_list_is_the_single_source(small1_uri):
    from metadist.core import make_sampler
    from metadist.data import EpisodeSampler
    from tests.helpers import tiny_job

    plain = make_sampler(tiny_job(small1_uri, small1_uri, Path("unused")), "train", progress=False)
    listed = make_sampler(tiny_job(small1_uri, small1_uri, Path("unused"), f"data.train=[{{uri: '{small1_uri}', weight: 7}}]"),
                          "train", progress=False)
    assert isinstance(listed, EpisodeSampler)
    a, b = plain.sample(0, range(4)), listed.sample(0, range(4))
    assert torch.equal(a.support_x, b.support_x) and (b.source_index == 0).all()


def test_sources_of_different_example_shapes_are_refused_naming_both(small1_uri, tmp_path):
    from metadist.core import make_sampler, model_spec
    from metadist.data import ShardSetWriter
    from metadist.errors import EpisodeError

    rgb = str(tmp_path / "rgb")
    with ShardSetWriter(rgb, dataset={"name": "toy"}, preprocessing={"mode": "RGB", "size": [8, 8], "resample": "box",
                        "invert": False}, example_shape=(3, 8, 8)) as writer:
        for c in range(6):
            writer.add_class(f"g/c{c}", "g", [np.full((3, 8, 8), c, np.uint8)] * 8, ["x"] * 8)
    job = _two_sources(small1_uri, f"data.train=[{{uri: '{small1_uri}'}}, {{uri: '{rgb}'}}]")
    expected = f"data.train[0] ({small1_uri}) has example shape [1, 28, 28] but data.train[1] ({rgb}) has [3, 8, 8]"
    with pytest.raises(EpisodeError, match=re.escape(expected)):
        make_sampler(job, "train", progress=False)
    with pytest.raises(EpisodeError, match=re.escape(expected)):
        model_spec(job)


def test_training_from_two_sources(small1_uri, tmp_path, capsys):
    from metadist.cli import main
    from metadist.core import checkpoint as ckpt_io
    from metadist.training import LocalTrainer
    from tests.helpers import assert_one_line_error, tiny_job

    sources = (f"data.train=[{{uri: '{small1_uri}', weight: 3, split: {{groups: [Korean, Latin]}}}}, "
               f"{{uri: '{small1_uri}', split: {{groups: [Balinese, Greek]}}}}]")
    job = tiny_job(small1_uri, small1_uri, tmp_path, sources, "data.test=null", "train.steps=2", "checkpoint.every=0")
    result = LocalTrainer(job, progress=False).run()
    saved = ckpt_io.load(result.checkpoint_uri)
    assert saved.step == 2 and saved.job == job and saved.model_spec.input_shape == (1, 28, 28)
    assert all(torch.isfinite(v).all() for v in saved.meta_params.values())
    # Without a test set, `eval` cannot guess which of the training sources to measure on; --data tells it.
    capsys.readouterr()
    assert_one_line_error(main(["eval", "--checkpoint", result.checkpoint_uri, "--groups", "Early_Aramaic"]),
                          capsys.readouterr().err, "data.train has 2 sources", "--data")
    assert main(["eval", "--checkpoint", result.checkpoint_uri, "--data", small1_uri, "--groups", "Early_Aramaic",
                 "--episodes", "4", "--json"]) == 0


# -- Meta-Dataset's variable way and shot ----------------------------------------------------------------------------
VARIABLE = EpisodeConfig(ways=12, shots=6, queries=3, variable={"min_ways": 4})


def test_variable_shapes_follow_meta_datasets_rules_and_depend_on_seed_and_step_alone(shards):
    from metadist.data.shapes import episode_shape

    shapes = [episode_shape(VARIABLE, 5, step, 20) for step in range(400)]
    assert shapes == [episode_shape(VARIABLE, 5, step, 20) for step in range(400)]  # no state between draws
    assert episode_shape(VARIABLE, 6, 0, 20) != shapes[0]
    ways = np.array([s.ways for s in shapes])
    assert ways.min() == 4 and ways.max() == 12  # uniform over [min_ways, ways]: each of the 9 values ~44 times
    assert np.bincount(ways, minlength=13)[4:].min() > 20
    for s in shapes:
        assert all(1 <= k <= 6 for k in s.shots) and s.queries == 3
        # Meta-Dataset's rule: k_c = ⌊R_c (|S| − N)⌋ + 1 with |S| ≤ N · shots, so the support never exceeds the budget
        assert s.support_size <= s.ways * 6
    assert sum(len(set(s.shots)) > 1 for s in shapes) > 300  # unequal shots within most episodes
    # A class of 8 examples leaves 5 after its 3 queries: no class gets more than 5 shots.
    assert max(s.most_shots for s in (episode_shape(VARIABLE, 5, step, 8) for step in range(400))) == 5
    # The support budget binds: at most max_support examples (each class still gets one).
    small = EpisodeConfig(ways=12, shots=6, queries=3, variable={"min_ways": 12, "max_support": 15})
    assert max(episode_shape(small, 5, step, 20).support_size for step in range(200)) <= 15 + 12
    # Equal shots: every class gets `shots`, the ways still vary.
    equal = EpisodeConfig(ways=12, shots=2, queries=3, variable={"min_ways": 4, "imbalanced_shots": False})
    assert {k for step in range(50) for k in episode_shape(equal, 5, step, 20).shots} == {2}
    # Without `variable`, the configured shape.
    assert episode_shape(EpisodeConfig(ways=5, shots=2), 5, 3, 20).shots == (2,) * 5


def test_variable_episodes_hold_each_class_s_shots_and_are_the_same_whoever_asks(shards, small1_uri):
    sampler = EpisodeSampler(shards, VARIABLE, seed=4)
    for step in range(3):
        shape = sampler.shape(step)
        batch = sampler.sample(step, range(6))
        assert batch.support_x.shape[:2] == (6, shape.support_size) and batch.query_x.shape[:2] == (6, shape.ways * 3)
        assert batch.class_index.shape == (6, shape.ways)
        assert np.array_equal(np.bincount(batch.support_y[0].numpy(), minlength=shape.ways), shape.shots)
        assert np.array_equal(np.bincount(batch.query_y[0].numpy(), minlength=shape.ways), [3] * shape.ways)
        for label, class_index in enumerate(batch.class_index[0].tolist()):  # each example is its class's, once
            stored = torch.from_numpy(shards.read_class(class_index).astype(np.float32) / 255)
            examples = torch.cat([batch.support_x[0][batch.support_y[0] == label], batch.query_x[0][batch.query_y[0] == label]])
            rows = [torch.nonzero((stored == img).flatten(1).all(1)) for img in examples]
            assert all(len(r) for r in rows), "an example that is not its class's"
            assert len({int(r[0]) for r in rows}) == len(rows), "an example drawn twice within one class"
        other = EpisodeSampler(ShardSet(small1_uri), VARIABLE, seed=4, cache_mb=0.3)  # another worker, one task
        alone = other.sample(step, [5])
        assert torch.equal(alone.support_x[0], batch.support_x[5]) and torch.equal(alone.query_y[0], batch.query_y[5])
    assert len({sampler.shape(step) for step in range(3)}) > 1


def test_variable_episodes_from_several_sources_share_the_step_s_shape(small1_uri):
    from metadist.config import apply_overrides
    from metadist.core import make_sampler

    job = apply_overrides(_two_sources(small1_uri), ["data.episode.ways=8", "data.episode.shots=4",
                                                     "data.episode.variable={min_ways: 3}", "algorithm.name=protonet"])
    sampler = make_sampler(job, "train", progress=False)
    batch = sampler.sample(2, range(16))
    assert set(batch.source_index.tolist()) == {0, 1}
    shape = sampler.shape(2)
    assert batch.support_x.shape[1] == shape.support_size and batch.class_index.shape[1] == shape.ways


def test_variable_episodes_are_refused_where_they_cannot_work(small1_uri):
    from metadist.config import JobConfig, apply_overrides
    from metadist.errors import ConfigError

    variable = "data.episode.variable={min_ways: 3}"
    for name in ("maml", "reptile", "snail"):
        with pytest.raises(ConfigError, match=r"data.episode.variable.min_ways = 3 < ways: " + name):
            apply_overrides(JobConfig(), [f"algorithm.name={name}", variable])
    with pytest.raises(ConfigError, match=r"imbalanced_shots: reptile needs equal shots per class"):
        apply_overrides(JobConfig(), ["algorithm.name=reptile", "data.episode.variable={min_ways: 5}"])
    apply_overrides(JobConfig(), ["algorithm.name=maml", "data.episode.variable={min_ways: 5}"])  # unequal shots only
    with pytest.raises(ConfigError, match=r"test_episode.variable must be unset"):
        apply_overrides(JobConfig(), ["algorithm.name=protonet", "data.test_episode.variable={min_ways: 3}"])
    with pytest.raises(ConfigError, match=r"min_ways = 9 exceeds ways = 5"):
        apply_overrides(JobConfig(), ["algorithm.name=protonet", "data.episode.variable={min_ways: 9}"])
    with pytest.raises(ConfigError, match=r"leave nothing variable"):
        apply_overrides(JobConfig(), ["algorithm.name=protonet", "data.episode.variable={min_ways: 5, imbalanced_shots: false}"])
