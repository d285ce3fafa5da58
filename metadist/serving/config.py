"""The serving configuration: one typed model, defaults written once with the reason for each.

`metadist serve` builds it from a YAML file, `--set KEY=VALUE` and a few shortcut flags; the resolved
configuration is logged at start-up with the token redacted.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from metadist.config.job import StrictModel
from metadist.data.images import MAX_IMAGE_PIXELS
from metadist.errors import ConfigError

MIB = 1024 * 1024
# The environment variable `metadist serve` and `metadist query` read a token from when none is configured.
TOKEN_ENV = "METADIST_SERVE_TOKEN"


class ServeConfig(StrictModel):
    """One few-shot adaptation server: the model it serves, where it listens, its limits and its security."""

    # -- the model ---------------------------------------------------------------------------------------------------
    checkpoint: str = Field(description="checkpoint file, or a folder (its newest checkpoint), on any fsspec URI")
    device: str = Field("cpu", description="torch device of the model: 'cpu', 'cuda' or 'cuda:N'")
    inner_steps: int | None = Field(None, ge=0, description="adaptation steps; None = the checkpoint's algorithm.eval_inner_steps")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads of the server process; None = torch's default")

    # -- the network -------------------------------------------------------------------------------------------------
    address: str = Field(
        "127.0.0.1:50051", description="host:port to listen on; loopback by default, so nothing is exposed unless asked"
    )
    max_message_mb: float = Field(
        32, gt=0, description="largest request gRPC accepts (RESOURCE_EXHAUSTED above): room for 25 one-megabyte photos; "
        "gRPC's own default is 4"
    )
    grace_s: float = Field(5.0, ge=0, description="on shutdown, how long calls in progress may finish")

    # -- connections: what one client may hold open ------------------------------------------------------------------
    # A call that has not sent its request costs the server a coroutine, not a thread (the server is asyncio); these
    # bound how many such calls one connection holds and how long any connection lives.
    max_streams_per_connection: int = Field(
        100, ge=1, description="calls open at once on one connection (HTTP/2 max_concurrent_streams); 100 is the "
        "HTTP/2 specification's recommended minimum"
    )
    connection_idle_s: float = Field(300, gt=0, description="a connection with no call open this long is closed")
    connection_age_s: float = Field(
        1800, gt=0, description="every connection is asked to close after this long (clients reconnect by themselves); "
        "with connection_age_grace_s, the longest a call that never sends its request stays open"
    )
    connection_age_grace_s: float = Field(60, ge=0, description="calls in progress on a connection past its age may finish for this long")
    keepalive_s: float = Field(
        60, gt=0, description="the server pings a connection quiet this long, and closes it when the ping goes unanswered "
        "for keepalive_timeout_s: peers that vanished stop holding calls"
    )
    keepalive_timeout_s: float = Field(20, gt=0, description="how long a keepalive ping may go unanswered")
    min_client_ping_interval_s: float = Field(
        30, gt=0, description="clients pinging more often than this (without calls in progress) are told to go away: "
        "pings cannot be used to keep the server busy"
    )
    refusal_log_interval_s: float = Field(
        10, gt=0, description="refused calls (bad token, server busy) log one WARNING line per interval, with the count "
        "of those not logged: a flood cannot fill the log"
    )

    # -- limits of one request ---------------------------------------------------------------------------------------
    max_support: int = Field(500, ge=2, description="support examples per task: a 20-way 20-shot task is 400")
    max_queries: int = Field(500, ge=1, description="query images per call (they are batch-normalised together)")
    max_image_mb: float = Field(8, gt=0, description="encoded size of one image; a 12-megapixel JPEG is 3 to 5 MB")
    max_image_pixels: int = Field(
        MAX_IMAGE_PIXELS, ge=1, description="width × height of one image, read from its header before decoding: a guard "
        "against decompression bombs (a tiny PNG that decodes to gigabytes); `metadist predict` applies the same default"
    )

    # -- concurrency and deadlines -----------------------------------------------------------------------------------
    max_concurrency: int = Field(
        2, ge=1, description="adaptations/classifications computed at once; they are CPU-bound and share one model, "
        "so more than the cores only adds contention"
    )
    max_workers: int = Field(
        16, ge=1, description="threads that decode and compute received requests; calls beyond max_concurrency wait in "
        "them for a slot. Calls still receiving their request, and health checks, hold none"
    )
    max_concurrent_rpcs: int = Field(
        64, ge=1, description="calls whose request has arrived and which are in progress or queued; more are refused at "
        "once with RESOURCE_EXHAUSTED (load shedding). Health checks do not count"
    )
    queue_timeout_s: float = Field(
        30.0, gt=0, description="longest wait for a compute slot: then RESOURCE_EXHAUSTED (server busy). A call with a "
        "shorter deadline gets DEADLINE_EXCEEDED when its deadline passes; a call whose deadline has passed is not computed"
    )

    # -- adapted-task handles ----------------------------------------------------------------------------------------
    handle_ttl_s: float = Field(600, gt=0, description="a handle unused this long expires (NOT_FOUND afterwards)")
    max_handles: int = Field(1024, ge=1, description="handles kept at most; the least recently used is evicted first")
    max_handles_mb: float = Field(
        512, gt=0, description="memory of the adapted tasks kept; a conv-4 MAML task holds its adapted weights "
        "(0.45 MB at 64 filters), a ProtoNet task only its prototypes"
    )

    # -- security ----------------------------------------------------------------------------------------------------
    token: SecretStr | None = Field(
        None, description=f"require 'authorization: Bearer <token>' call metadata; prefer token_file or ${TOKEN_ENV} "
        "(a token in a file or flag shows in listings and process tables)"
    )
    token_file: str | None = Field(None, description="read the token from this file (its first line)")
    tls_cert: str | None = Field(None, description="PEM certificate chain of the server; with tls_key, serve TLS")
    tls_key: str | None = Field(None, description="PEM private key of the server")
    tls_client_ca: str | None = Field(None, description="PEM CA bundle: require client certificates signed by it (mutual TLS)")

    @model_validator(mode="after")
    def _consistent(self) -> "ServeConfig":
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"address must be host:port (e.g. 127.0.0.1:50051, [::1]:50051, 0.0.0.0:50051), got {self.address!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both to serve TLS, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        if self.max_concurrency > self.max_workers:
            raise ValueError(f"max_concurrency ({self.max_concurrency}) exceeds max_workers ({self.max_workers}): the extra slots could never be used")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def loopback(self) -> bool:
        """Whether the address is reachable from this machine only."""
        return is_loopback(self.address)

    def resolve_token(self) -> str | None:
        """The configured token: `token`, else `token_file`'s first line, else $METADIST_SERVE_TOKEN, else None."""
        return read_token(None if self.token is None else self.token.get_secret_value(), self.token_file)

    def redacted(self) -> dict:
        """The configuration as JSON-able data, for logs: the token never appears."""
        data = self.model_dump(mode="json")
        data["token"] = None if self.token is None else "<redacted>"
        return data


def is_loopback(address: str) -> bool:
    """Whether host:port names this machine only (127.0.0.0/8, ::1, localhost)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """`token`, else `token_file`'s first line, else $METADIST_SERVE_TOKEN, else None: the server's and client's rule."""
    if token is not None:
        value, where = token, "token"
    elif token_file is not None:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"token file {token_file}: cannot be read ({exc.strerror})") from exc
        value, where = (lines[0] if lines else ""), f"token file {token_file}"
    elif os.environ.get(TOKEN_ENV):
        value, where = os.environ[TOKEN_ENV], f"${TOKEN_ENV}"
    else:
        return None
    value = value.strip()
    if not value:
        raise ConfigError(f"{where}: the token is empty")
    if not value.isascii() or not value.isprintable():
        raise ConfigError(f"{where}: a token must be printable ASCII (it travels in gRPC metadata)")
    return value
