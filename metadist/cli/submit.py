"""`metadist submit | job`: run a job on a Ray cluster through its job server; follow, inspect and stop it.

The Ray side is in `metadist.submission`; this module parses, validates the job locally and prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from metadist.config import load_job_with
from metadist.errors import ConfigError

_ADDRESS_HELP = ("the cluster's job server (the head's dashboard), default $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, "
                 "else http://127.0.0.1:8265. A token-auth cluster: its token in ~/.ray/auth_token or $RAY_AUTH_TOKEN")
INTERRUPTED_EXIT = 130  # the shell's code for a command ended by Ctrl-C


def add_commands(commands) -> None:
    address = argparse.ArgumentParser(add_help=False)
    address.add_argument("--address", metavar="URL", help=_ADDRESS_HELP)

    submit = commands.add_parser("submit", parents=[address],
                                 help="run a job on a Ray cluster (Ray Jobs): validated here, then `metadist train` there")
    submit.add_argument("job", help="job file (YAML) inside the working directory")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, passed on to `metadist train --set` (repeatable)")
    submit.add_argument("--workers", type=int, metavar="N", help="train with N Ray task workers on the cluster")
    submit.add_argument("--working-dir", default=".", metavar="DIR",
                        help="folder uploaded as the job's working directory (default .; .gitignore is honoured)")
    submit.add_argument("--submission-id", metavar="ID", help="the job's id (default <job name>-<UTC time>-<random>)")
    submit.add_argument("--pip", action="append", default=[], metavar="PKG",
                        help="pip requirement installed into the job's own environment on the cluster (repeatable)")
    submit.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable of the job (repeatable); $MLFLOW_TRACKING_URI is passed on when set")
    submit.add_argument("--space", metavar="SPACE.yaml",
                        help="submit a search instead: `metadist tune JOB --space SPACE` runs on the cluster (the file "
                        "inside the working directory)")
    submit.add_argument("--trials", type=int, metavar="N", help="with --space: trials sampled (metadist tune --trials)")
    submit.add_argument("--no-wait", action="store_true", help="print the id and return; do not follow the logs")
    submit.set_defaults(handler=_submit)

    job = commands.add_parser("job", help="the jobs on a Ray cluster: status, logs, stop, list")
    actions = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    status = actions.add_parser("status", parents=[address], help="a job's status, message and entry point")
    status.add_argument("submission_id", metavar="ID")
    status.add_argument("--json", action="store_true", help="print Ray's job details as JSON")
    status.set_defaults(handler=_status)
    logs = actions.add_parser("logs", parents=[address], help="a job's logs so far (--follow: until it ends)")
    logs.add_argument("submission_id", metavar="ID")
    logs.add_argument("--follow", "-f", action="store_true", help="stream the logs until the job ends")
    logs.set_defaults(handler=_logs)
    stop = actions.add_parser("stop", parents=[address], help="stop a job (SIGTERM, then SIGKILL) and wait until it has")
    stop.add_argument("submission_id", metavar="ID")
    stop.add_argument("--no-wait", action="store_true", help="return once the stop is requested")
    stop.set_defaults(handler=_stop)
    listing = actions.add_parser("list", parents=[address], help="the cluster's jobs, newest first")
    listing.set_defaults(handler=_list)


def _submit(args) -> int:
    from metadist.submission import JobServer, job_server_address, parse_env, prepare_submission

    # Everything that can be checked here is, before the cluster is contacted.
    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"distributed.workers={args.workers}")
    job = load_job_with(args.job, overrides)
    tune_args: list[str] = []
    if args.space is not None:
        from metadist.tune import load_space

        load_space(args.space, job)  # a bad space fails here, not on the cluster
        tune_args = [] if args.trials is None else ["--trials", str(args.trials)]
    elif args.trials is not None:
        raise ConfigError("--trials: only with --space (a search)")
    submission = prepare_submission(
        job, args.job, overrides=args.overrides, workers=args.workers, working_dir=args.working_dir,
        submission_id=args.submission_id, pip=args.pip, env=parse_env(args.env), address=job_server_address(args.address),
        space=args.space, tune_args=tune_args,
    )
    for warning in submission.warnings:
        print(f"metadist: warning: {warning}", file=sys.stderr)
    server = JobServer(args.address)
    submission_id = server.submit(submission)
    print(f"submitted {submission_id} to {server.address}: {submission.entrypoint}")
    if args.no_wait:
        _print_hints(submission_id, server.address)
        return 0
    return _follow(server, submission_id)


def _follow(server, submission_id: str) -> int:
    try:
        info = server.follow(submission_id, write=_write)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {submission_id} keeps running on the cluster.", file=sys.stderr)
        _print_hints(submission_id, server.address, file=sys.stderr)
        return INTERRUPTED_EXIT
    print(f"job {submission_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    return 0 if str(info.status) == "SUCCEEDED" else 1


def _print_hints(submission_id: str, address: str, file=None) -> None:
    where = f" --address {address}"
    print(f"  follow it: metadist job logs {submission_id} --follow{where}\n"
          f"  status:    metadist job status {submission_id}{where}\n"
          f"  stop it:   metadist job stop {submission_id}{where}", file=file or sys.stdout)


def _write(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()


def _status(args) -> int:
    from metadist.submission import JobServer

    info = JobServer(args.address).info(args.submission_id)
    if args.json:
        dump = info.model_dump if hasattr(info, "model_dump") else info.dict  # pydantic 2, or Ray's pydantic 1 shim
        print(json.dumps(dump(), indent=2, default=str))
        return 0
    print(f"{args.submission_id}: {info.status}")
    if info.message:
        print(f"  message:    {info.message}")
    print(f"  entrypoint: {info.entrypoint}")
    print(f"  started:    {_time(info.start_time)}")
    if info.end_time:
        print(f"  ended:      {_time(info.end_time)}")
    if getattr(info, "driver_exit_code", None) is not None:
        print(f"  exit code:  {info.driver_exit_code}")
    return 0


def _logs(args) -> int:
    from metadist.submission import JobServer

    server = JobServer(args.address)
    if args.follow:
        return _follow(server, args.submission_id)
    _write(server.logs(args.submission_id))
    return 0


def _stop(args) -> int:
    from metadist.submission import TERMINAL_STATUSES, JobServer

    info = JobServer(args.address).stop(args.submission_id, wait=not args.no_wait)
    print(f"job {args.submission_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    return 0 if args.no_wait or str(info.status) in TERMINAL_STATUSES else 1  # still running after the wait: say so


def _list(args) -> int:
    from metadist.submission import JobServer

    jobs = sorted(JobServer(args.address).list(), key=lambda j: j.start_time or 0, reverse=True)
    for info in jobs:
        ident = info.submission_id or info.job_id
        entrypoint = info.entrypoint if len(info.entrypoint) <= 80 else info.entrypoint[:77] + "..."
        print(f"{ident}\t{info.status}\t{_time(info.start_time)}\t{entrypoint}")
    return 0


def _time(ms: int | None) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).isoformat(sep=" ", timespec="seconds") if ms else "-"
