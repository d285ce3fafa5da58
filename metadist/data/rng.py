"""Counter-based randomness: every random number is a pure function of (seed, step, task index, stream, i).

That is what makes an episode the same whatever the number of workers or the order they ask in: no
generator state is carried from one episode to the next, and a batch of T tasks is drawn in a few vectorized
numpy operations (SplitMix64's mixing function over uint64 counters) rather than T generator objects.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# One stream per kind of draw, so adding a draw never shifts the others.
STREAM_CLASSES = 1
STREAM_EXAMPLES = 3
STREAM_REGRESSION_TASK = 5
STREAM_REGRESSION_X = 6
STREAM_SHIFTS = 7
STREAM_AFFINE = 8
STREAM_SOURCE = 9  # which training source an episode comes from (several weighted sources)
STREAM_EPISODE_SHAPE = 10  # a step's episode shape (variable way and shot): from (seed, step) alone, task index 0


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer (wrapping uint64 arithmetic)."""
    z = z.copy()
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


_MASK = 0xFFFFFFFFFFFFFFFF


def _mix_int(z: int) -> int:
    """The same finalizer on a Python int: the per-call key costs no numpy calls."""
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _MASK
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def task_keys(seed: int, step: int, task_indices: np.ndarray, stream: int) -> np.ndarray:
    """One uint64 key per task: [T]."""
    head = _mix_int((seed + 0x9E3779B97F4A7C15) & _MASK)
    head = _mix_int(head ^ (step & _MASK))
    head = _mix_int((head + stream * 0x9E3779B97F4A7C15) & _MASK)
    tasks = np.asarray(task_indices, dtype=np.uint64)
    return _mix(np.uint64(head) ^ _mix(tasks + _GOLDEN))


def uniform(seed: int, step: int, task_indices: np.ndarray, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform floats in [0, 1), shape [T, *shape]; element i of a task depends only on (seed, step, task, stream, i)."""
    keys = task_keys(seed, step, task_indices, stream)
    count = int(np.prod(shape)) if shape else 1
    counters = (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)[None, :]
    bits = _mix(keys[:, None] + counters)
    floats = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
    return floats.reshape((len(keys), *shape))


SORT_LIMIT = 2048  # populations up to this size are chosen by sorting random keys; larger ones by Floyd's algorithm


def choose(seed: int, step: int, tasks: np.ndarray, stream: int, population: np.ndarray | int, m: int, lead: tuple[int, ...] = ()) -> np.ndarray:
    """m distinct integers in [0, population) per task (and per `lead` index), in random order: [T, *lead, m].

    `population` is an int or an array of shape [T, *lead]. Small populations take one random key per element
    and keep the m smallest (a handful of vectorized calls); large ones use Floyd's algorithm (2m keys).
    """
    n_max = int(np.max(population))
    if n_max <= SORT_LIMIT:
        keys = uniform(seed, step, tasks, stream, (*lead, n_max))
        if not np.isscalar(population):
            keys[np.arange(n_max) >= np.asarray(population)[..., None]] = 2.0  # never chosen: beyond this class's count
        chosen = np.argpartition(keys, m - 1, axis=-1)[..., :m] if m < n_max else np.broadcast_to(np.arange(n_max), keys.shape).copy()
        order = np.argsort(np.take_along_axis(keys, chosen, axis=-1), axis=-1)
        return np.take_along_axis(chosen, order, axis=-1)
    return choose_distinct(uniform(seed, step, tasks, stream, (*lead, 2 * m)), population)


def choose_distinct(u: np.ndarray, population: np.ndarray | int) -> np.ndarray:
    """Distinct integers in [0, population), one row per leading index, in random order.

    u: uniforms [..., 2m] (the first m pick the set, the last m its order); population: broadcastable to u[..., 0].
    Floyd's algorithm picks the set in m vectorized steps, whatever the population size, so choosing 5 of a
    million classes costs what choosing 5 of 20 does.
    """
    m = u.shape[-1] // 2
    n = np.broadcast_to(np.asarray(population, dtype=np.int64), u.shape[:-1])
    out = np.empty(u.shape[:-1] + (m,), dtype=np.int64)
    for i in range(m):
        j = n - m + i
        t = np.minimum((u[..., i] * (j + 1)).astype(np.int64), j)
        taken = (out[..., :i] == t[..., None]).any(-1) if i else np.zeros(t.shape, bool)
        out[..., i] = np.where(taken, j, t)
    order = np.argsort(u[..., m:], axis=-1, kind="stable")
    return np.take_along_axis(out, order, axis=-1)
