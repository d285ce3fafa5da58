"""The checkpoint format: one self-describing safetensors file per save, written through fsspec; loading runs no pickle.

A checkpoint holds everything needed to resume a run exactly or to use the model alone:
  tensors   "params.<name>"              the meta-parameters
            "optimizer.<i>.<key>"        the outer optimizer's per-parameter state (Adam moments ...)
  metadata  "format"                     FORMAT, checked on load
            "job"                        the resolved JobConfig (JSON)
            "model_spec"                 input shape, head size, preprocessing (JSON)
            "step"                       outer steps taken
            "optimizer"                  the optimizer's hyper-state (JSON)
            "trainer"                    the outer optimizer's counters and the loop's state (`LoopState`, JSON)
            "sha256"                     digest of every tensor and every other metadata entry, checked on load
Files are named step-<8 digits>.safetensors inside a run's folder (metadist.core.runs); the newest is the highest
step. In memory a checkpoint is typed: the outer optimizer's state is an `OuterState`, the loop's a `LoopState`.

Nothing in a file is trusted before it is checked, in this order: the header's size, the metadata (a valid job, a
non-negative step), the tensor names, shapes and dtypes against the model the job builds (built on the meta device,
so a file that asks for a huge model allocates nothing), then the digest, then that every parameter is finite.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import posixpath
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from metadist.algorithms.functional import Params
from metadist.algorithms.outer import OuterState
from metadist.config import JobConfig
from metadist.core.spec import ModelSpec, build
from metadist.data.uri import filesystem
from metadist.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "metadist-checkpoint/1"
SUFFIX = ".safetensors"
NAME = re.compile(r"^step-(\d{8})\.safetensors$")
PARTIAL_PREFIX = ".partial-"  # a save in progress; renamed to its step name once complete
RUN_PREFIX = "run-"  # a run's own folder inside a checkpoint root (metadist.core.runs)
# The JSON header of a real checkpoint is a few hundred KiB at most (the job, the learning curve); a larger one is
# refused before it is parsed.
MAX_HEADER_BYTES = 64 * 1024 * 1024
DIGEST_KEY = "sha256"


@dataclass
class LoopState:
    """The training loop's part of a checkpoint. Episodes are f(seed, step, task), so the sampler's whole state is
    the job's seed and the step to sample next (the checkpoint's `step`)."""

    elapsed_s: float = 0.0  # training time of every session of the run so far (time budgets span resumes)
    mlflow_run_id: str | None = None  # the run a resumed session goes on logging into
    history: list[dict] = field(default_factory=list)  # every logged line: the learning curve

    def to_json(self, seed: int, next_step: int) -> dict:
        return {"sampler": {"seed": seed, "next_step": next_step}, "elapsed_s": self.elapsed_s,
                "mlflow_run_id": self.mlflow_run_id, "history": self.history}

    @classmethod
    def from_json(cls, d: dict) -> "LoopState":
        return cls(float(d.get("elapsed_s", 0.0)), d.get("mlflow_run_id"), list(d.get("history", [])))


@dataclass
class Checkpoint:
    job: JobConfig
    model_spec: ModelSpec
    step: int  # outer steps taken (applied or skipped): the next step to sample
    meta_params: Params
    optimizer: dict | None = None  # torch.optim state_dict of the outer optimizer (None: a fixed-step learner)
    applied_steps: int = 0
    skipped_updates: int = 0
    loop: LoopState = field(default_factory=LoopState)
    uri: str | None = field(default=None, compare=False)  # the file it was read from (None: not read from a file)

    @classmethod
    def of_run(cls, job: JobConfig, spec: ModelSpec, step: int, outer: OuterState, loop: LoopState) -> "Checkpoint":
        """The checkpoint of a run at `step`: the outer optimizer's state and the loop's. The local trainer and the
        parameter server both write through this, so either's checkpoints resume the other."""
        return cls(job, spec, step, outer.params, outer.optimizer, outer.step_count, outer.skipped, loop)

    def outer_state(self) -> OuterState:
        return OuterState(self.meta_params, self.optimizer, self.applied_steps, self.skipped_updates)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}{SUFFIX}"


# -- (de)serialisation ---------------------------------------------------------------------------------------------
def to_bytes(ckpt: Checkpoint) -> bytes:
    tensors = {f"params.{k}": v.detach().cpu().contiguous() for k, v in ckpt.meta_params.items()}
    optimizer_meta = None
    if ckpt.optimizer is not None:
        # Tensors of the optimizer state go into the file; the rest (hyper-parameters, scalars) into JSON.
        state_meta: dict[str, dict] = {}
        for index, entries in ckpt.optimizer["state"].items():
            state_meta[str(index)] = {}
            for key, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
                    state_meta[str(index)][key] = "tensor"
                else:
                    state_meta[str(index)][key] = value
        optimizer_meta = {"state": state_meta, "param_groups": ckpt.optimizer["param_groups"]}
    metadata = {
        "format": FORMAT,
        "job": ckpt.job.model_dump_json(),
        "model_spec": json.dumps(ckpt.model_spec.to_dict()),
        "step": str(ckpt.step),
        "param_names": json.dumps(list(ckpt.meta_params)),  # keeps the order the optimizer indexes by
        "optimizer": json.dumps(optimizer_meta),
        "trainer": json.dumps({"applied_steps": ckpt.applied_steps, "skipped_updates": ckpt.skipped_updates,
                               **ckpt.loop.to_json(ckpt.job.train.seed, ckpt.step)}),
    }
    metadata[DIGEST_KEY] = content_digest(tensors, metadata)
    return st_save(tensors, metadata=metadata)


def content_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 of every tensor (name, dtype, shape, bytes) and every metadata entry but the digest itself."""
    digest = hashlib.sha256()
    for key in sorted(k for k in metadata if k != DIGEST_KEY):
        digest.update(f"{key}\0{metadata[key]}\0".encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def from_bytes(data: bytes, where: str) -> Checkpoint:
    header = _read_header(data, where)
    metadata = header.pop("__metadata__", None) or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a metadist checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        job = JobConfig.model_validate_json(metadata["job"])
        spec = ModelSpec.from_dict(json.loads(metadata["model_spec"]))
        step = int(metadata["step"])
        names = json.loads(metadata["param_names"])
        optimizer_meta = json.loads(metadata["optimizer"])
        trainer = json.loads(metadata["trainer"])
    except (KeyError, ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        raise CheckpointError(f"{where}: damaged metadist checkpoint ({type(exc).__name__}: {_first_line(exc)})") from exc
    if step < 0:
        raise CheckpointError(f"{where}: damaged metadist checkpoint (step {step} is negative)")
    _check_layout(header, job, spec, names, where)  # before any tensor is materialised
    try:
        tensors = st_load(data)
    except SafetensorError as exc:
        raise CheckpointError(f"{where}: damaged metadist checkpoint (unreadable tensors: {exc})") from exc
    if DIGEST_KEY in metadata and content_digest(tensors, metadata) != metadata[DIGEST_KEY]:
        raise CheckpointError(f"{where}: damaged metadist checkpoint (its content does not match its sha256 digest)")
    params = {n: tensors[f"params.{n}"] for n in names}
    for name, value in params.items():
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{where}: parameter {name!r} holds NaN or infinite values; this model cannot be used")
    try:
        optimizer = None
        if optimizer_meta is not None:
            state = {
                int(index): {k: tensors[f"optimizer.{index}.{k}"] if v == "tensor" else v for k, v in entries.items()}
                for index, entries in optimizer_meta["state"].items()
            }
            optimizer = {"state": state, "param_groups": optimizer_meta["param_groups"]}
        return Checkpoint(job, spec, step, params, optimizer, int(trainer.get("applied_steps", 0)),
                          int(trainer.get("skipped_updates", 0)), LoopState.from_json(trainer))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{where}: damaged metadist checkpoint ({type(exc).__name__}: {exc})") from exc


def _read_header(data: bytes, where: str) -> dict:
    """The safetensors JSON header (tensor name → dtype, shape, offsets; plus "__metadata__"), size-checked."""
    if len(data) < 8:
        raise CheckpointError(f"{where}: not a metadist checkpoint (a {len(data)}-byte file)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > min(MAX_HEADER_BYTES, len(data) - 8):
        raise CheckpointError(f"{where}: not a metadist checkpoint (its header claims {header_len} bytes; "
                              f"the file has {len(data)})")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: not a metadist checkpoint (unreadable safetensors header: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: not a metadist checkpoint (its header is not a JSON object)")
    return header


def expected_params(job: JobConfig, spec: ModelSpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name → (shape, dtype) of the meta-parameters the job's learner holds, computed on the meta device: no memory
    is allocated however large the model described."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # build seeds torch: keep the caller's RNG
        _, learner = build(job, spec)
        return {name: (tuple(p.shape), p.dtype) for name, p in learner.init_meta_params().items()}


def _check_layout(header: dict, job: JobConfig, spec: ModelSpec, names: list, where: str) -> None:
    """Every tensor the file holds has the name, shape and dtype the job's model expects (named on mismatch)."""
    try:
        expected = expected_params(job, spec)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: its job and model spec do not build a model ({_first_line(exc)})") from exc
    if list(names) != list(expected):
        missing, extra = sorted(set(expected) - set(names)), sorted(set(names) - set(expected))
        raise CheckpointError(f"{where}: parameters do not match the model {job.model.name} builds "
                              f"(missing {missing or 'none'}, unexpected {extra or 'none'})")
    order = list(expected)
    for key, entry in header.items():
        if not isinstance(entry, dict) or "shape" not in entry or "dtype" not in entry:
            raise CheckpointError(f"{where}: damaged metadist checkpoint (tensor {key!r} has no shape or dtype)")
        found_shape, found_dtype = tuple(entry["shape"]), _DTYPES.get(entry["dtype"])
        if key.startswith("params."):
            name = key[len("params."):]
            if name not in expected:
                raise CheckpointError(f"{where}: tensor {key!r} is not a parameter of the model {job.model.name} builds")
            shape, dtype = expected[name]
        elif key.startswith("optimizer."):
            index = key.split(".")[1]
            if not index.isdigit() or int(index) >= len(order):
                raise CheckpointError(f"{where}: optimizer tensor {key!r} refers to no parameter")
            shape, dtype = expected[order[int(index)]]
            if found_shape == ():  # a step counter
                continue
        else:
            raise CheckpointError(f"{where}: unexpected tensor {key!r}")
        if found_shape != shape or found_dtype != dtype:
            raise CheckpointError(f"{where}: tensor {key!r} is {entry['dtype']} {list(found_shape)}, the model expects "
                                  f"{str(dtype).removeprefix('torch.')} {list(shape)}")


# safetensors' dtype names
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# -- files -----------------------------------------------------------------------------------------------------
def save(ckpt: Checkpoint, directory: str, *, storage_options: dict | None = None) -> str:
    """Write step-<step>.safetensors under `directory` (any fsspec URI) and return its URI.

    Written, flushed and closed under a temporary name, then renamed: a crash or a full disk mid-write never
    leaves a truncated checkpoint under a name that resume would pick, and the partial file is removed on failure.
    """
    data = to_bytes(ckpt)
    fs, root = filesystem(directory, storage_options)
    final = posixpath.join(root, checkpoint_name(ckpt.step))
    partial = posixpath.join(root, f"{PARTIAL_PREFIX}{uuid.uuid4().hex}{SUFFIX}")
    try:
        fs.makedirs(root, exist_ok=True)
        with fs.open(partial, "wb") as f:
            f.write(data)
        fs.mv(partial, final)
    except OSError as exc:
        _remove_quietly(fs, partial)
        raise CheckpointError(f"{_uri(directory, checkpoint_name(ckpt.step))}: cannot write the checkpoint "
                              f"({_os_reason(exc)}); earlier checkpoints are untouched") from exc
    except BaseException:
        _remove_quietly(fs, partial)
        raise
    return _uri(directory, checkpoint_name(ckpt.step))


def read(uri: str, *, storage_options: dict | None = None) -> Checkpoint:
    """One checkpoint file, checked (see the module's docstring)."""
    fs, path = filesystem(uri, storage_options)
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{uri}: no such checkpoint") from exc
    except OSError as exc:
        raise CheckpointError(f"{uri}: cannot be read ({_os_reason(exc)})") from exc
    saved = from_bytes(data, uri)
    saved.uri = uri
    return saved


def load(uri: str, *, storage_options: dict | None = None) -> Checkpoint:
    """A checkpoint file; or, for a folder, the newest valid checkpoint of one run (see `candidates`): a damaged
    candidate is skipped with a warning, so a crash during the newest save falls back to the one before."""
    fs, path = filesystem(uri, storage_options)
    try:
        is_dir = fs.isdir(path)
    except OSError as exc:
        raise CheckpointError(f"{uri}: cannot be reached ({_os_reason(exc)})") from exc
    if not is_dir:
        if not fs.exists(path):
            raise CheckpointError(f"{uri}: no such checkpoint or folder")
        return read(uri, storage_options=storage_options)
    damaged = []
    for candidate in candidates(uri, storage_options=storage_options):
        try:
            saved = read(candidate, storage_options=storage_options)
        except CheckpointError as exc:
            log.warning("skipping %s", exc)
            damaged.append(candidate)
            continue
        log.info("using checkpoint %s (step %d)", candidate, saved.step)
        return saved
    if damaged:
        raise CheckpointError(f"{uri}: no valid checkpoint; every candidate is damaged ({', '.join(damaged)})")
    raise CheckpointError(f"{uri}: folder holds no checkpoint (step-*{SUFFIX}, directly or in its {RUN_PREFIX}* folders)")


def candidates(directory: str, *, storage_options: dict | None = None) -> Iterator[str]:
    """Checkpoints to try for a folder, best (newest) first: those of `run_checkpoints`."""
    yield from (uri for _, uri in reversed(run_checkpoints(directory, storage_options=storage_options)))


def run_checkpoints(directory: str, *, storage_options: dict | None = None) -> list[tuple[int, str]]:
    """(step, URI) of one run's checkpoints, oldest first: the folder's own step files when it has any (a run's
    folder); else those of its newest run folder that has any (a checkpoint root). Run folders are named by their
    start time, so the newest run is the last name."""
    own = list_checkpoints(directory, storage_options=storage_options)
    if own:
        return own
    for run in reversed(run_folders(directory, storage_options=storage_options)):
        found = list_checkpoints(run, storage_options=storage_options)
        if found:
            return found
    return []


def run_folders(root: str, *, storage_options: dict | None = None) -> list[str]:
    """URIs of the run folders in a checkpoint root, oldest first."""
    fs, path = filesystem(root, storage_options)
    if not fs.isdir(path):
        return []
    names = sorted(posixpath.basename(e["name"].rstrip("/")) for e in fs.ls(path, detail=True) if e["type"] == "directory")
    return [_uri(root, name) for name in names if name.startswith(RUN_PREFIX)]


def save_and_prune(ckpt: Checkpoint, directory: str, keep: int) -> str:
    """Write `ckpt` into `directory` (a run's own folder), keep the newest `keep` there; returns its URI."""
    uri = save(ckpt, directory)
    prune(directory, keep)
    return uri


def list_checkpoints(directory: str, *, storage_options: dict | None = None) -> list[tuple[int, str]]:
    """(step, URI) of every complete checkpoint directly in `directory`, oldest first; [] when there is none."""
    fs, root = filesystem(directory, storage_options)
    if not fs.isdir(root):
        return []
    found = []
    for entry in fs.ls(root, detail=False):
        match = NAME.match(posixpath.basename(entry.rstrip("/")))
        if match:
            found.append((int(match.group(1)), _uri(directory, match.group(0))))
    return sorted(found)


def latest(directory: str, *, storage_options: dict | None = None) -> str | None:
    """The newest checkpoint file of a run folder, or of the newest run of a checkpoint root (unchecked)."""
    return next(iter(candidates(directory, storage_options=storage_options)), None)


def prune(directory: str, keep: int, *, storage_options: dict | None = None) -> list[str]:
    """Delete all but the newest `keep` checkpoints of a run's folder; returns the URIs removed."""
    found = list_checkpoints(directory, storage_options=storage_options)
    fs, root = filesystem(directory, storage_options)
    removed = []
    for _, uri in found[: max(0, len(found) - keep)]:
        fs.rm(filesystem(uri, storage_options)[1])
        removed.append(uri)
    return removed


def remove_partials(directory: str, *, storage_options: dict | None = None) -> list[str]:
    """Delete what interrupted saves left in a run's folder (a crash or a full disk mid-write)."""
    fs, root = filesystem(directory, storage_options)
    if not fs.isdir(root):
        return []
    removed = [e for e in fs.ls(root, detail=False) if posixpath.basename(e.rstrip("/")).startswith(PARTIAL_PREFIX)]
    for path in removed:
        _remove_quietly(fs, path)
    return removed


def _remove_quietly(fs, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path)
    except OSError as exc:  # the save's own error is the one to report
        log.warning("could not remove the partial checkpoint %s: %s", path, exc)


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc) or type(exc).__name__


def _uri(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name
