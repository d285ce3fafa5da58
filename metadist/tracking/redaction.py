"""What of a job may be shown to everyone who can read the experiment: credentials are replaced by "<redacted>"."""

from __future__ import annotations

import re

from metadist.config import JobConfig

# fsspec options under these names hold credentials: never written into params or job.yaml.
_SECRET_KEY = re.compile(r"secret|token|passw|credential|private|session|auth|^key$|access_key|api_key", re.IGNORECASE)
REDACTED = "<redacted>"
_URI_PASSWORD = re.compile(r"(://[^/@:\s]+:)[^/@\s]+@")  # scheme://user:PASSWORD@host


def redact_job(job: JobConfig) -> JobConfig:
    """The job with credential-like fsspec storage options and URI passwords replaced by "<redacted>".

    Params and job.yaml are readable by everyone with access to the experiment; the job file itself and the
    checkpoints keep the real values.
    """

    def scrub(value, in_options: bool):
        if isinstance(value, dict):
            return {
                k: REDACTED
                if in_options and _SECRET_KEY.search(str(k)) and v is not None
                else scrub(v, in_options or k == "storage_options")
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [scrub(v, in_options) for v in value]
        if isinstance(value, str):
            return hide_password(value)  # a password inside a URI (tracking.uri, a shard set's URI)
        return value

    dumped = job.model_dump(mode="json")
    scrubbed = scrub(dumped, False)
    return job if scrubbed == dumped else JobConfig.model_validate(scrubbed)


def hide_password(text: str) -> str:
    """'https://me:pw@host' → 'https://me:<redacted>@host'."""
    return _URI_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)
