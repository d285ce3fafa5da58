"""What is sent to a cluster's job server: a validated job, its entry point and runtime environment, and warnings.

`metadist submit JOB.yaml` is `ray job submit --working-dir DIR -- metadist train JOB.yaml --no-progress ...` with
the checks a person wants before waiting for a cluster: the job and its `--set` overrides are validated here, the
job file must lie in the working directory that is uploaded (and not be excluded from it), and settings that would
leave the run's checkpoints or MLflow store in the job's temporary working directory are warned about.

What the job runs in (`prepare_submission`): the working directory, uploaded by Ray (it honours .gitignore and
.rayignore, and `WORKING_DIR_EXCLUDES` here keeps virtualenvs, outputs and local MLflow stores out), becomes the
job's current directory and is put on its PYTHONPATH; `env_vars` carries $MLFLOW_TRACKING_URI when set, the stop grace
period and the `--env` pairs; `pip` installs extra packages into a virtualenv of the job's own. The `metadist` command itself must
be installed on the cluster's nodes (cluster/ sets that up).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from metadist.config import JobConfig
from metadist.errors import MetadistError

log = logging.getLogger(__name__)
_quiet = logging.getLogger(f"{__name__}.ignore_files")  # Ray's upload says which ignore files it honours: once is enough
_quiet.setLevel(logging.WARNING)

# Never uploaded with the working directory: environments, run outputs and local MLflow stores (large, and
# meaningless on another machine), caches. Gitignore-style patterns, matched at any depth.
WORKING_DIR_EXCLUDES = (
    ".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info",
    "outputs", "mlruns", "mlflow.db", "mlartifacts",
)  # fmt: skip
# Passed to the job from the submitting environment, when set there: where the job records its run.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI",)
# `ray job stop` sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (Ray's default: 3 s). On SIGTERM the job
# saves a checkpoint and marks its MLflow run KILLED, which can take longer than 3 s with a large model on S3; the
# job supervisor reads the variable from the job's env_vars. `--env RAY_JOB_STOP_WAIT_TIME_S=...` overrides it.
STOP_GRACE_ENV = {"RAY_JOB_STOP_WAIT_TIME_S": "60"}
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class SubmissionError(MetadistError):
    """A job cannot be submitted, or the cluster's job server cannot be reached or refuses this client."""


# -- what is submitted -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSubmission:
    """A validated job, ready to be sent: the entry point, its runtime environment and the warnings about it."""

    submission_id: str
    entrypoint: str
    runtime_env: dict
    job_file: str  # relative to the working directory, as the entry point names it
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def prepare_submission(
    job: JobConfig,
    job_file: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    workers: int | None = None,
    working_dir: str | os.PathLike = ".",
    submission_id: str | None = None,
    pip: Sequence[str] = (),
    env: dict[str, str] | None = None,
    address: str | None = None,
    space: str | os.PathLike | None = None,
    tune_args: Sequence[str] = (),
) -> JobSubmission:
    """The submission of `job` (already validated, overrides applied) loaded from `job_file`; nothing is sent.

    `overrides` and `workers` are passed on to `metadist train` as given; `address` (the job server's) only
    serves the warnings. With a search space file (`space`, validated already), the job is a search: `metadist
    tune JOB --space SPACE` with `tune_args` (--trials N ...) runs there instead, its trials on the cluster."""
    root = Path(working_dir).expanduser().resolve()
    if not root.is_dir():
        raise SubmissionError(f"--working-dir {working_dir}: not a directory")
    relative = _uploaded(root, job_file, "job file")
    env_vars = STOP_GRACE_ENV | {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)} | dict(env or {})
    runtime_env: dict = {"working_dir": str(root), "excludes": list(WORKING_DIR_EXCLUDES)}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if pip:
        runtime_env["pip"] = list(pip)
    command = ["metadist", "train", relative.as_posix(), "--no-progress"]
    if space is not None:
        command = ["metadist", "tune", relative.as_posix(), "--space", _uploaded(root, space, "search space file").as_posix(),
                   "--no-progress", *tune_args]
    for item in overrides:
        command += ["--set", item]
    if workers is not None:
        command += ["--workers", str(workers)]
    return JobSubmission(
        submission_id=submission_id or default_submission_id(job.name),
        entrypoint=shlex.join(command),
        runtime_env=runtime_env,
        job_file=relative.as_posix(),
        metadata={"metadist_job": job.name, "metadist_job_file": relative.as_posix()},
        warnings=tuple(_warnings(job, env_vars, address)),
    )


def _uploaded(root: Path, file: str | os.PathLike, what: str) -> Path:
    """`file` relative to the working directory `root`, which must hold it and upload it."""
    path = Path(file).expanduser().resolve()
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise SubmissionError(
            f"{file}: the {what} is not inside the working directory {root}, which is what the cluster gets; "
            f"move it there or pass --working-dir (a folder that holds it)"
        ) from None
    excluded_by = _excluded_from_upload(root, relative)
    if excluded_by:
        raise SubmissionError(f"{file}: the {what} would not be uploaded with {root} (excluded by {excluded_by})")
    return relative


def default_submission_id(job_name: str) -> str:
    """`<job name>-<UTC time>-<4 random hex digits>`: readable, sortable, and unlikely to collide."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", job_name).strip("-") or "metadist"
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def parse_env(pairs: list[str]) -> dict[str, str]:
    """`--env K=V` pairs as a dict; a pair without `=` or with an empty name is an error naming it."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SubmissionError(f"--env {pair!r}: expected NAME=VALUE")
        env[key] = value
    return env


def _excluded_from_upload(root: Path, relative: Path) -> str | None:
    """What would keep `relative` out of Ray's upload of `root` (an exclude pattern, a .gitignore or .rayignore),
    judged with Ray's own matchers along the path; None when it is uploaded."""
    try:
        from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files
    except ImportError:  # another Ray: let the upload decide
        return None
    # The path and each folder on the way to it, as Ray's walk meets them: root/a, root/a/b, ..., root/a/b/job.yaml.
    chain = [root.joinpath(*relative.parts[: i + 1]) for i in range(len(relative.parts))]
    excludes = _get_excludes(root, list(WORKING_DIR_EXCLUDES))
    if any(excludes(path) for path in chain):
        return f"metadist's working-dir excludes {list(WORKING_DIR_EXCLUDES)}"
    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    for depth, directory in enumerate([root, *chain[:-1]]):
        ignored = get_excludes_from_ignore_files(directory, include_gitignore=include_gitignore, logger=_quiet)
        if any(match(path) for match in ignored for path in chain[depth:]):
            return f"an ignore file (.gitignore or .rayignore) in {directory}"
    return None


# -- warnings about where the run's results go -----------------------------------------------------------------------
def _warnings(job: JobConfig, env_vars: dict[str, str], address: str | None) -> list[str]:
    warnings = []
    checkpoint = job.checkpoint.uri
    if checkpoint is None or _is_relative_local(checkpoint):
        where = (f"checkpoint.uri = {checkpoint!r}" if checkpoint
                 else f"checkpoint.uri is unset (outputs/{job.name}/checkpoints)")
        warnings.append(
            f"{where}: the checkpoints go into the job's temporary working directory on the cluster and vanish with "
            f"it; set checkpoint.uri to storage that outlives the job (s3://..., gs://..., a shared file system)"
            + (" (the MLflow run keeps a copy as artifacts)"
               if job.tracking.enabled and job.tracking.log_checkpoints else "")
        )
    if job.tracking.enabled:
        tracking = job.tracking.uri or env_vars.get("MLFLOW_TRACKING_URI")
        if tracking is None or _is_relative_local(tracking):
            where = (f"tracking uri {tracking!r}" if tracking
                     else "tracking.uri is unset and MLFLOW_TRACKING_URI is not set here")
            warnings.append(
                f"{where}: the MLflow run is written into the job's temporary working directory on the cluster and "
                f"vanishes with it; point MLFLOW_TRACKING_URI (forwarded to the job) or tracking.uri at a tracking "
                f"server (http://...)"
            )
        elif _host(tracking) in _LOOPBACK_HOSTS and address is not None and _host(address) not in _LOOPBACK_HOSTS:
            warnings.append(
                f"tracking uri {tracking!r} is this machine's loopback, but the job runs on {address}: there it "
                f"names the cluster node itself"
            )
    return warnings


def _is_relative_local(uri: str) -> bool:
    """A path relative to the current directory, with or without a `file:` / `sqlite:///` scheme."""
    if uri.startswith("sqlite:///"):
        return not uri[len("sqlite:///"):].startswith("/")
    if uri.startswith("file://"):
        return not uri[len("file://"):].startswith("/")
    if uri.startswith("file:"):
        return not uri[len("file:"):].startswith("/")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        return False  # s3://, gs://, http://, memory:// ...: not the job's directory
    return not os.path.isabs(uri)


def _host(uri: str) -> str | None:
    return urlparse(uri if "://" in uri else f"http://{uri}").hostname


