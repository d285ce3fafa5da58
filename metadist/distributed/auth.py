"""Ray's token authentication as metadist uses it: where the token is, and making this process honour the mode.

Token authentication (Ray >= 2.59 turns it on for a local `ray.init()`): a Ray started here generates a token into
~/.ray/auth_token, or uses $RAY_AUTH_TOKEN / $RAY_AUTH_TOKEN_PATH, and its workers inherit the mode. Joining a
cluster by an explicit address, Ray switches token mode on only when RAY_AUTH_MODE=token is set; when it is unset
and a token is at hand (the variables above or ~/.ray/auth_token), the cluster connection and the job-server client
set it, so `--address` works against a cluster started with RAY_AUTH_MODE=token without more flags.
RAY_AUTH_MODE=disabled is respected as given.
"""

from __future__ import annotations

import os
from pathlib import Path

from metadist.distributed.ray_internals import reload_auth_settings

AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"  # where Ray writes and looks for its token


def token_available() -> bool:
    return bool(os.environ.get(AUTH_TOKEN_ENV) or os.environ.get(AUTH_TOKEN_PATH_ENV) or default_token_path().is_file())


def auth_mode() -> str:
    """"token", "disabled", or "default" (RAY_AUTH_MODE unset)."""
    return "token" if os.environ.get(AUTH_MODE_ENV, "").lower() == "token" else os.environ.get(AUTH_MODE_ENV, "default")


def refresh_auth_settings() -> None:
    """Make this process's Ray see RAY_AUTH_MODE and the token as the environment has them now: Ray reads both
    when it is imported, and a mode or token set later (here, by a test, by `connect`) would otherwise be ignored
    by this process while the cluster's processes, started fresh, honour it."""
    reload_auth_settings()
