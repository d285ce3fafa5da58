"""Reading settings: a YAML mapping from any fsspec URI, `--set KEY=VALUE` overrides, validation with errors that
name the file and the field. Every command, test and benchmark loads jobs (and `metadist serve` its settings)
through these functions, so a setting reads and fails the same way everywhere.
"""

from __future__ import annotations

from typing import Any, TypeVar

import fsspec
import yaml
from pydantic import BaseModel, ValidationError

from metadist.config.job import JobConfig
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
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = node[part]
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def validation_message(exc: ValidationError) -> str:
    """'field.path: what is wrong (got VALUE)' for each problem pydantic found, joined by '; '."""

    def one(error) -> str:
        where = ".".join(map(str, error["loc"])) or "<top>"
        value = error.get("input")
        got = f" (got {value!r})" if value is not None and not isinstance(value, dict) and error["type"] != "missing" else ""
        return f"{where}: {error['msg']}{got}"

    return "; ".join(one(e) for e in exc.errors())


def validate(model: type[Settings], raw: dict[str, Any], where: str) -> Settings:
    """`raw` as a `model`, or a ConfigError that starts with `where` (the file, or "--set") and names each field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {validation_message(exc)}") from exc


def load_job(path: str | None) -> JobConfig:
    """The job in a YAML file (any fsspec URI), or the embedded default when path is None."""
    if path is None:
        return JobConfig()
    return validate(JobConfig, read_mapping(path), path)


def apply_overrides(job: JobConfig, overrides: list[str]) -> JobConfig:
    """KEY=VALUE settings (dotted keys, YAML values) on top of a job; validated like the job file."""
    if not overrides:
        return job
    return validate(JobConfig, set_dotted(job.model_dump(mode="json"), overrides), "--set")


def load_job_with(path: str | None, overrides: list[str]) -> JobConfig:
    """What `metadist train JOB --set ...` runs: the job file (or the default) with the overrides applied."""
    return apply_overrides(load_job(path), overrides)
