"""Reading settings: a YAML mapping from any fsspec URI, `--set KEY=VALUE` overrides, validation with errors that
name the file and the field. Every command, test and benchmark loads jobs (and `metadist serve` its settings)
through these functions, so a setting reads and fails the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import fsspec
import yaml
from pydantic import BaseModel, ValidationError

from metadist.config.job import TRAIN_SOURCE_TAGS, JobConfig
from metadist.errors import ConfigError

Settings = TypeVar("Settings", bound=BaseModel)


def read_mapping(path: str, what: str = "job file") -> dict[str, Any]:
    """The YAML mapping in `path` (any fsspec URI); an empty file is an empty mapping."""
    try:
        with fsspec.open(path, "r") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such {what}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of settings, got {type(raw).__name__}")
    return raw


def set_dotted(raw: dict[str, Any], overrides: list[str], example: str = "train.steps=100") -> dict[str, Any]:
    """`raw` with each KEY=VALUE applied (dotted keys reach into sections; values are YAML). Changes `raw` in place."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. {example}")
        _set_key(raw, key, yaml.safe_load(value), f"--set {key}")
    return raw


def _set_key(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    """raw[a][b][c] = value for key 'a.b.c', making missing (or null) sections; a number indexes a list of sections
    (data.train.1.weight: the second training source's weight)."""
    node: Any = raw
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not (part.isdigit() and int(part) < len(node)):
                raise ConfigError(f"{where}: {'.'.join(parts[:depth])} is a list of {len(node)}; {part!r} is not one of its indices")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if last:
            node[part] = value
            return
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], (dict, list)):
            raise ConfigError(f"{where}: {part!r} is not a section")
        node = node[part]


def validation_message(exc: ValidationError) -> str:
    """'field.path: what is wrong (got VALUE)' for each problem pydantic found, joined by '; '."""

    def one(error) -> str:
        where = ".".join(map(str, _location(error["loc"]))) or "<top>"
        value = error.get("input")
        got = f" (got {value!r})" if value is not None and not isinstance(value, dict) and error["type"] != "missing" else ""
        return f"{where}: {error['msg']}{got}"

    return "; ".join(one(e) for e in exc.errors())


def _location(loc: tuple) -> tuple:
    """An error's field path without the tag pydantic adds for the form `data.train` took (one source or a list)."""
    return tuple(part for i, part in enumerate(loc) if not (part in TRAIN_SOURCE_TAGS and loc[i - 1 : i] == ("train",)))


def validate(model: type[Settings], raw: dict[str, Any], where: str) -> Settings:
    """`raw` as a `model`, or a ConfigError that starts with `where` (the file, or "--set") and names each field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {validation_message(exc)}") from exc


# `metadist train` with no job file: MAML from a pre-trained network on the bundled Omniglot (the file says why).
DEFAULT_JOB = Path(__file__).with_name("default_job.yaml")


def load_job(path: str | None) -> JobConfig:
    """The job in a YAML file (any fsspec URI), or the embedded default (DEFAULT_JOB) when path is None."""
    if path is None:
        path = str(DEFAULT_JOB)
    return validate(JobConfig, read_mapping(path), path)


def apply_overrides(job: JobConfig, overrides: list[str]) -> JobConfig:
    """KEY=VALUE settings (dotted keys, YAML values) on top of a job; validated like the job file."""
    if not overrides:
        return job
    return validate(JobConfig, set_dotted(job.model_dump(mode="json"), overrides), "--set")


def apply_flags(job: JobConfig, flags: dict[str, tuple[str, Any]]) -> JobConfig:
    """Command-line flags that stand for job settings, validated by the job model exactly as a job file or --set is.

    `flags` maps a flag to (dotted key, value), e.g. {"--shots": ("data.test_episode.shots", args.shots)}; flags
    whose value is None were not given and change nothing. An error names the flag, its value and its field.
    """
    given = {flag: (key, value) for flag, (key, value) in flags.items() if value is not None}
    if not given:
        return job
    raw = job.model_dump(mode="json")
    for flag, (key, value) in given.items():
        _set_key(raw, key, value, flag)
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_flag_message(exc, given)) from exc


def _flag_message(exc: ValidationError, given: dict[str, tuple[str, Any]]) -> str:
    """Each problem as '--flag VALUE (field.path): what is wrong'; one that no flag's field explains (a rule
    across fields) is led by every flag given."""

    def shown(value: Any) -> str:
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    everything = ", ".join(f"{flag} {shown(value)}" for flag, (_, value) in given.items())
    problems = []
    for error in exc.errors():
        where = ".".join(map(str, _location(error["loc"])))
        flag = next((f for f, (key, _) in given.items() if where == key or where.startswith(key + ".")), None)
        if flag is None:
            problems.append(f"{everything}: {where + ': ' if where else ''}{error['msg']}")
        else:
            problems.append(f"{flag} {shown(given[flag][1])} ({where}): {error['msg']}")
    return "; ".join(problems)


def load_job_with(path: str | None, overrides: list[str]) -> JobConfig:
    """What `metadist train JOB --set ...` runs: the job file (or the default) with the overrides applied."""
    return apply_overrides(load_job(path), overrides)
