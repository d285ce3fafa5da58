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
Files are named step-<8 digits>.safetensors inside the job's checkpoint directory; the newest is the highest step.
In memory a checkpoint is typed: the outer optimizer's state is an `OuterState`, the loop's a `LoopState`.
"""

from __future__ import annotations

import json
import posixpath
import re
import uuid
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from metadist.algorithms.functional import Params
from metadist.algorithms.outer import OuterState
from metadist.config import JobConfig
from metadist.core.spec import ModelSpec
from metadist.data.uri import filesystem
from metadist.errors import CheckpointError

FORMAT = "metadist-checkpoint/1"
SUFFIX = ".safetensors"
NAME = re.compile(r"^step-(\d{8})\.safetensors$")


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
    return st_save(tensors, metadata=metadata)


def from_bytes(data: bytes, where: str) -> Checkpoint:
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: not a metadist checkpoint (unreadable safetensors file: {exc})") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a metadist checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        job = JobConfig.model_validate_json(metadata["job"])
        spec = ModelSpec.from_dict(json.loads(metadata["model_spec"]))
        names = json.loads(metadata["param_names"])
        params = {n: tensors[f"params.{n}"] for n in names}
        optimizer_meta = json.loads(metadata["optimizer"])
        optimizer = None
        if optimizer_meta is not None:
            state = {
                int(index): {k: tensors[f"optimizer.{index}.{k}"] if v == "tensor" else v for k, v in entries.items()}
                for index, entries in optimizer_meta["state"].items()
            }
            optimizer = {"state": state, "param_groups": optimizer_meta["param_groups"]}
        trainer = json.loads(metadata["trainer"])
        return Checkpoint(job, spec, int(metadata["step"]), params, optimizer, int(trainer.get("applied_steps", 0)),
                          int(trainer.get("skipped_updates", 0)), LoopState.from_json(trainer))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: damaged metadist checkpoint ({type(exc).__name__}: {exc})") from exc


# -- files -----------------------------------------------------------------------------------------------------
def save(ckpt: Checkpoint, directory: str, *, storage_options: dict | None = None) -> str:
    """Write step-<step>.safetensors under `directory` (any fsspec URI) and return its URI.

    Written to a temporary name first and renamed, so a crash mid-write never leaves a truncated checkpoint
    under a name that resume would pick.
    """
    fs, root = filesystem(directory, storage_options)
    fs.makedirs(root, exist_ok=True)
    final = posixpath.join(root, checkpoint_name(ckpt.step))
    partial = posixpath.join(root, f".partial-{uuid.uuid4().hex}{SUFFIX}")
    with fs.open(partial, "wb") as f:
        f.write(to_bytes(ckpt))
    fs.mv(partial, final)
    return _uri(directory, checkpoint_name(ckpt.step))


def load(uri: str, *, storage_options: dict | None = None) -> Checkpoint:
    """A checkpoint file, or the newest checkpoint in a directory."""
    fs, path = filesystem(uri, storage_options)
    if fs.isdir(path):
        newest = latest(uri, storage_options=storage_options)
        if newest is None:
            raise CheckpointError(f"{uri}: directory holds no checkpoint (step-*{SUFFIX})")
        return load(newest, storage_options=storage_options)
    if not fs.exists(path):
        raise CheckpointError(f"{uri}: no such checkpoint")
    with fs.open(path, "rb") as f:
        return from_bytes(f.read(), uri)


def save_and_prune(ckpt: Checkpoint, directory: str, keep: int) -> str:
    """Write `ckpt` into `directory` (any fsspec URI), keep the newest `keep` there; returns its URI."""
    uri = save(ckpt, directory)
    prune(directory, keep)
    return uri


def list_checkpoints(directory: str, *, storage_options: dict | None = None) -> list[tuple[int, str]]:
    """(step, URI) of every complete checkpoint in `directory`, oldest first; [] when there is none."""
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
    found = list_checkpoints(directory, storage_options=storage_options)
    return found[-1][1] if found else None


def prune(directory: str, keep: int, *, storage_options: dict | None = None) -> list[str]:
    """Delete all but the newest `keep` checkpoints; returns the URIs removed."""
    found = list_checkpoints(directory, storage_options=storage_options)
    fs, root = filesystem(directory, storage_options)
    removed = []
    for _, uri in found[: max(0, len(found) - keep)]:
        fs.rm(filesystem(uri, storage_options)[1])
        removed.append(uri)
    return removed


def _uri(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name
