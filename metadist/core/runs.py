"""Runs own their checkpoints: each training run writes into its own folder under the checkpoint root, and holds a
lock on it while it runs.

    outputs/<job>/checkpoints/                 the root (checkpoint.uri)
        run-20261130-045012.407-3fa9/          one run, named by its UTC start time
            .lock                              who writes here now (host, pid, start)
            step-00000200.safetensors ...

A second run of the same job gets a folder of its own, so re-running with fewer steps, or two runs at once, never
prunes or overwrites another run's checkpoints; pruning only ever looks inside the run's own folder. A resumed run
goes on writing into the folder of the checkpoint it resumes, under the same lock: a second writer is refused with a
message naming the holder. The holder refreshes its lock every LOCK_REFRESH_S; a lock whose process died (seen
directly on the same host) or that has not been refreshed for LOCK_STALE_S (a process killed on another node, a
preempted pod) is taken over with a warning, so `--resume` after a hard kill works without a hand.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

from metadist.core.checkpoint import RUN_PREFIX, list_checkpoints, remove_partials
from metadist.data.uri import filesystem, is_local
from metadist.errors import CheckpointError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
LOCK_REFRESH_S = 60.0  # how often the holder rewrites its lock
LOCK_STALE_S = 300.0  # a lock not refreshed for this long belongs to a run that is gone


def new_run_name(now_s: float | None = None) -> str:
    """run-<UTC start time, to the millisecond>-<4 hex digits>: sorts by start time; the digits keep apart two runs
    started in the same millisecond."""
    now_s = time.time() if now_s is None else now_s
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_s)) + f".{int(now_s * 1000) % 1000:03d}"
    return f"{RUN_PREFIX}{stamp}-{secrets.token_hex(2)}"


def absolute(uri: str) -> str:
    """A local path made absolute (Ray actors and servers do not share the caller's working directory)."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


@dataclass
class RunFolder:
    """The folder a run writes its checkpoints into, and its lock."""

    uri: str
    held: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def new(cls, root: str) -> "RunFolder":
        return cls(posixpath.join(absolute(root).rstrip("/"), new_run_name()))

    @classmethod
    def of_checkpoint(cls, checkpoint_uri: str) -> "RunFolder":
        return cls(absolute(checkpoint_uri).rsplit("/", 1)[0])

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri.rstrip("/"))

    @property
    def lock_uri(self) -> str:
        return posixpath.join(self.uri, LOCK_NAME)

    def acquire(self) -> None:
        """Take the folder for this process, before the first step: creating it and writing the lock also proves the
        location is writable, so a bad `checkpoint.uri` fails now rather than at the first save. Removes what
        interrupted saves of an earlier session left behind."""
        fs, path = filesystem(self.uri)
        lock_path = posixpath.join(path, LOCK_NAME)
        try:
            fs.makedirs(path, exist_ok=True)
            holder = self._holder(fs, lock_path)
            if holder is not None:
                if not _stale(holder):
                    raise CheckpointError(
                        f"{self.uri}: another run is writing here (pid {holder.get('pid')} on {holder.get('host')}, since "
                        f"{holder.get('started')}); wait for it, or remove {self.lock_uri} if that run is gone"
                    )
                log.warning("%s: taking over the lock of pid %s on %s, which is no longer running",
                            self.uri, holder.get("pid"), holder.get("host"))
                fs.rm(lock_path)
            _create_exclusive(fs, lock_path, _lock_record())
        except FileExistsError as exc:  # another process took it between our check and our write
            raise CheckpointError(f"{self.uri}: another run took this folder at the same moment; try again") from exc
        except OSError as exc:
            raise CheckpointError(f"{self.uri}: cannot write checkpoints here ({exc.strerror or exc})") from exc
        self.held = True
        for partial in remove_partials(self.uri):
            log.info("removed %s, left by an interrupted save", partial)
        self._stop.clear()
        threading.Thread(target=self._refresh, args=(fs, lock_path), name="metadist-run-lock", daemon=True).start()

    def _refresh(self, fs, lock_path: str) -> None:
        started = None
        while not self._stop.wait(LOCK_REFRESH_S):
            try:
                started = started or self._holder(fs, lock_path) or {}
                with fs.open(lock_path, "wb") as f:
                    f.write(_lock_record(started.get("started")))
            except OSError as exc:  # the next save reports a folder that cannot be written
                log.warning("could not refresh the lock %s: %s", self.lock_uri, exc)

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        fs, path = filesystem(self.lock_uri)
        try:
            fs.rm(path)
        except OSError as exc:
            log.warning("could not remove the lock %s: %s", self.lock_uri, exc)
        self.held = False

    def checkpoints(self) -> list[tuple[int, str]]:
        return list_checkpoints(self.uri)

    @staticmethod
    def _holder(fs, lock_path: str) -> dict | None:
        if not fs.exists(lock_path):
            return None
        try:
            with fs.open(lock_path, "rb") as f:
                holder = json.loads(f.read())
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}  # unreadable: held by someone we cannot name; treated as live


def _create_exclusive(fs, path: str, data: bytes) -> None:
    """Create `path` only if it does not exist: atomic on a local disk (O_EXCL); object stores have no such primitive,
    so there the check before is all there is."""
    if is_local(fs):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    with fs.open(path, "wb") as f:
        f.write(data)


def _lock_record(started: str | None = None) -> bytes:
    now = time.time()
    return json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
        "started": started or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "refreshed_s": now,
    }).encode()


def _stale(holder: dict) -> bool:
    """A lock whose run is gone: not refreshed for LOCK_STALE_S, or held on this host by a process that no longer
    runs (a pid that is gone, or reused by another process: its start time differs)."""
    refreshed = holder.get("refreshed_s")
    if isinstance(refreshed, (int, float)) and time.time() - refreshed > LOCK_STALE_S:
        return True
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if pid == os.getpid():
        return True  # ours, left by an earlier session in this process
    start = _process_start(pid)
    return start is None or (holder.get("pid_start") is not None and start != holder["pid_start"])


def _process_start(pid: int) -> int | None:
    """When a process started (clock ticks since boot, Linux); None when it does not run (or off Linux: unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return -1
