"""What a logged model says about where it runs: the run's tags and the pinned pip requirements of the pyfunc."""

from __future__ import annotations

import importlib.metadata
import platform

from metadist.config import JobConfig
from metadist.version import __version__

# What loading the pyfunc imports (mlflow, pandas, and metadist.inference's imports), pinned at log time.
MODEL_REQUIREMENTS = ("mlflow", "pandas", "torch", "numpy", "pillow", "pydantic", "pyyaml", "safetensors", "fsspec",
                      "pyarrow", "tqdm")


def run_tags(job: JobConfig) -> dict[str, str]:
    data = job.data
    tags = {
        "metadist.version": __version__,
        "metadist.job": job.name,
        "metadist.algorithm": job.algorithm.name,
        "metadist.model": job.model.name,
        "metadist.task_kind": data.kind,
        "python.version": platform.python_version(),
        "torch.version": _version("torch"),
    }
    if data.regression is not None:
        tags["metadist.dataset"] = f"regression:{data.regression.family}"
    else:
        sources = data.train_sources  # validated: classification names its training shards
        tags["metadist.dataset"] = sources[0][0].uri if len(sources) == 1 else "; ".join(
            f"{source.uri} (weight {weight:g})" for source, weight in sources
        )
        tags["metadist.episode"] = f"{data.episode.ways}-way {data.episode.shots}-shot"
        if data.test is not None:
            tags["metadist.test_dataset"] = data.test.uri
    return tags


def model_requirements() -> list[str]:
    """Pinned requirements of the pyfunc: what `metadist.inference` imports, at this environment's versions."""
    pins = []
    for name in MODEL_REQUIREMENTS:
        version = _version(name)
        # A local build tag ("2.13.0+cpu") is not on PyPI; the public release it was built from is.
        pins.append(f"{name}=={version.split('+')[0]}" if version != "unknown" else name)
    return pins


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
