"""The search space: a YAML mapping from dotted job settings (the names `--set` takes) to distributions.

    algorithm.inner_lr: {loguniform: [0.05, 1.0]}
    algorithm.inner_steps: {choice: [1, 2, 3]}
    optimizer.lr: {loguniform: [1.0e-4, 3.0e-3]}
    model.hidden: {randint: [32, 64]}           # integers, both ends included
    train.seed: {grid: [0, 1]}                  # every value, each with --trials samples of the rest

Every key is checked against the job model when the file is read, by applying the ends of its range (or each of
its values) to the job, so a misspelt setting or an impossible value fails at once with one line naming the file
and the key, not in the middle of a search.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from metadist.config import JobConfig, apply_overrides, read_mapping
from metadist.errors import ConfigError

KINDS = ("uniform", "loguniform", "randint", "choice", "grid")
_RANGES = ("uniform", "loguniform", "randint")
_PRIMITIVE = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Distribution:
    """One setting's distribution: a range [low, high] (uniform, loguniform, randint: both ends included) or a list of
    values (choice: sampled; grid: each one tried)."""

    kind: str
    values: tuple[Any, ...]

    @property
    def encoded(self) -> bool:
        """Values that are not scalars (a list of groups ...) travel through the searcher as their JSON text: Optuna
        only samples among scalars."""
        return self.kind in ("choice", "grid") and not all(isinstance(v, _PRIMITIVE) for v in self.values)

    def options(self) -> list[Any]:
        """The values a searcher chooses among (choice, grid), encoded as it sees them."""
        return [json.dumps(v) for v in self.values] if self.encoded else list(self.values)

    def decode(self, sampled: Any) -> Any:
        """The setting's value from what the searcher sampled."""
        return json.loads(sampled) if self.encoded else sampled

    def ends(self) -> list[Any]:
        """Values that bound what this distribution can give: a range's two ends, or every listed value."""
        return list(self.values)


@dataclass(frozen=True)
class SearchSpace:
    """The settings searched over, in file order, and where they were read from (for messages)."""

    params: dict[str, Distribution]
    where: str = "the search space"

    def overrides(self, sampled: dict[str, Any]) -> list[str]:
        """`--set`-style KEY=VALUE items of one trial's sampled values (JSON values: valid YAML)."""
        return [f"{key}={json.dumps(dist.decode(sampled[key]))}" for key, dist in self.params.items()]

    def settings(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """key → the setting's value, decoded, for reports."""
        return {key: dist.decode(sampled[key]) for key, dist in self.params.items() if key in sampled}

    def to_dict(self) -> dict[str, dict[str, list]]:
        return {key: {d.kind: list(d.values)} for key, d in self.params.items()}

    @property
    def has_grid(self) -> bool:
        return any(d.kind == "grid" for d in self.params.values())


def load_space(path: str, job: JobConfig) -> SearchSpace:
    """The search space in `path` (YAML, any fsspec URI), each key validated against `job`."""
    return parse_space(read_mapping(path, "search space file"), job, path)


def parse_space(raw: dict[str, Any], job: JobConfig, where: str = "the search space") -> SearchSpace:
    """A search space from its mapping; ConfigError naming `where` and the key at fault."""
    if not raw:
        raise ConfigError(f"{where}: the search space is empty; map dotted settings to distributions, e.g. "
                          "optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}")
    params = {}
    for key, value in raw.items():
        dist = _distribution(str(key), value, where)
        _check_against_job(str(key), dist, job, where)
        params[str(key)] = dist
    return SearchSpace(params, where)


def _distribution(key: str, value: Any, where: str) -> Distribution:
    at = f"{where}: {key}"
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError(f"{at}: expected one distribution, e.g. {{uniform: [0.1, 0.5]}}; one of {', '.join(KINDS)} "
                          f"(got {value!r})")
    ((kind, args),) = value.items()
    if kind not in KINDS:
        raise ConfigError(f"{at}: unknown distribution {kind!r}; one of {', '.join(KINDS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{at}: {kind} takes a list ({'[low, high]' if kind in _RANGES else '[value, ...]'}), got {args!r}")
    if kind in _RANGES:
        numeric = int if kind == "randint" else (int, float)
        if len(args) != 2 or not all(isinstance(a, numeric) and not isinstance(a, bool) for a in args):
            what = "two integers" if kind == "randint" else "two numbers"
            raise ConfigError(f"{at}: {kind} takes [low, high], {what}, got {args!r}")
        low, high = args
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ConfigError(f"{at}: {kind} needs low < high, got [{low}, {high}]")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{at}: loguniform needs low > 0, got {low}")
    return Distribution(kind, tuple(args))


def _check_against_job(key: str, dist: Distribution, job: JobConfig, where: str) -> None:
    for value in dist.ends():
        try:
            apply_overrides(job, [f"{key}={json.dumps(value)}"])
        except ConfigError as exc:
            message = str(exc).removeprefix("--set: ")
            raise ConfigError(f"{where}: {key} = {value!r} does not make a valid job: {message}") from None
