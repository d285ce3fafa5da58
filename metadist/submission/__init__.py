"""Sending metadist jobs to a Ray cluster's job server and following them there (`metadist submit`, `metadist job`)."""

from metadist.submission.job_server import TERMINAL_STATUSES, JobServer, job_server_address
from metadist.submission.prepare import WORKING_DIR_EXCLUDES, JobSubmission, SubmissionError, parse_env, prepare_submission

__all__ = [
    "TERMINAL_STATUSES", "WORKING_DIR_EXCLUDES", "JobServer", "JobSubmission", "SubmissionError", "job_server_address",
    "parse_env", "prepare_submission",
]  # fmt: skip
