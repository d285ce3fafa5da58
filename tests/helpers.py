"""Helpers shared by several test modules: no test module imports another's (or conftest's) names, only these and
the other helper modules (tests/synthetic.py, tests/browser.py, tests/mlflow_server.py).

metadist and torch are imported inside the helpers that need them: conftest.py imports this module, and collecting
a module that needs neither should not pay for them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

CI_ENV = "METADIST_CI"  # set by .ci/run: a test whose outside tool is missing fails there instead of skipping
ARTIFACTS_ENV = "METADIST_TEST_ARTIFACTS"  # where the browser tests keep their screenshots
REPO_ROOT = Path(__file__).resolve().parents[1]
# A rendered MLflow page, not a blank or a spinner: they give 120-180 kB at 1440x900.
MIN_PNG_BYTES = 20_000

# What a test starts, as markers (registered in pyproject.toml): `make test-quick` deselects them all.
STARTS_MARKERS = ("server", "cluster", "browser")
_STARTS_ATTR = "_metadist_starts"


# -- outside tools ---------------------------------------------------------------------------------------------------
def missing_tool(message: str, *, module: bool = False) -> None:
    """A tool a test needs (chromium, kubectl, unshare) is absent: skip here, fail in CI, where it must be present."""
    if os.environ.get(CI_ENV) == "1":
        pytest.fail(f"{CI_ENV}=1 and {message}", pytrace=False)
    pytest.skip(reason=message, allow_module_level=module)


# -- markers ---------------------------------------------------------------------------------------------------------
def starts(*markers: str):
    """Say what a fixture starts (a "server", a Ray "cluster", a "browser"); put it under @pytest.fixture. Every test
    that uses the fixture, directly or through other fixtures, gets those markers (conftest.py), so no such test can
    miss them."""
    unknown = set(markers) - set(STARTS_MARKERS)
    if unknown:
        raise ValueError(f"starts(): unknown markers {sorted(unknown)}; known: {STARTS_MARKERS}")

    def declare(function):
        setattr(function, _STARTS_ATTR, tuple(markers))
        return function

    return declare


def started_by(function) -> tuple[str, ...]:
    """The markers a fixture function was declared with by `starts` (through any wrapping)."""
    while function is not None:
        declared = getattr(function, _STARTS_ATTR, None)
        if declared is not None:
            return declared
        function = getattr(function, "__wrapped__", None) or getattr(function, "__func__", None)
    return ()


# -- command-line errors ---------------------------------------------------------------------------------------------
def assert_one_line_error(code: int, err: str, *expected: str) -> None:
    """Exit code 2 and the error as the last line of stderr (a progress bar may come before it), no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("metadist: error: ") == 1, err
    line = err.splitlines()[-1]
    assert line.startswith("metadist: error: "), err
    for text in expected:
        assert text in line, err


# -- tiny jobs -------------------------------------------------------------------------------------------------------
def tiny_job(small1_uri, small2_uri, tmp_path, *overrides: str):
    """A JobConfig for a few seconds of training: conv-4 with 8 filters, 6 steps, checkpoints under tmp_path/ckpt."""
    from metadist.config import apply_overrides
    from metadist.config import JobConfig

    base = [
        f"data.train.uri={small1_uri}",
        f"data.test.uri={small2_uri}",
        "data.test.split.groups=[Tagalog]",
        "data.episode.queries=2", "data.test_episode.queries=2",
        "model.hidden=8",
        "train.meta_batch=4",
        "train.steps=6",
        "train.log_every=2",
        "train.eval_every=0",
        "train.final_eval_episodes=8",
        "train.threads=1",
        "checkpoint.every=3",
        f"checkpoint.uri={tmp_path / 'ckpt'}",
        "tracking.enabled=false",
    ]  # fmt: skip
    return apply_overrides(JobConfig(), base + list(overrides))


def train_tiny_cli(tmp_path, small1_uri, small2_uri, name, *sets) -> str:
    """`metadist train` on a tiny job named `name` (4 steps), with more `--set`s; returns its checkpoint folder."""
    from metadist.cli import main

    args = ["train", "--no-progress"]
    for s in (
        f"name={name}", f"data.train.uri={small1_uri}", f"data.test.uri={small2_uri}", "data.test.split.groups=[Tagalog]",
        "data.episode.queries=2", "data.test_episode.queries=2", "model.hidden=8", "train.meta_batch=4", "train.steps=4", "train.log_every=2",
        "train.eval_every=0", "train.final_eval_episodes=8", "train.threads=1", f"checkpoint.uri={tmp_path / name}",
        "tracking.enabled=false", "pretrain.epochs=0", *sets,
    ):  # fmt: skip
        args += ["--set", s]
    assert main(args) == 0
    return str(tmp_path / name)


# -- episode batches -------------------------------------------------------------------------------------------------
def classification_batch(uri, tasks=3, ways=3, shots=2, queries=2):
    """A float64 batch of `tasks` episodes from the shard set at `uri`, downsampled to 7x7 images."""
    from metadist.config import EpisodeConfig
    from metadist.data import EpisodeSampler, ShardSet

    b = EpisodeSampler(ShardSet(uri), EpisodeConfig(ways=ways, shots=shots, queries=queries), seed=0).sample(0, range(tasks))
    b.support_x, b.query_x = b.support_x.double()[..., ::4, ::4], b.query_x.double()[..., ::4, ::4]  # 7×7 images
    return b


def task_slice(batch, t):
    """Task `t` of a batch, as a batch of one."""
    import torch

    return type(batch)(**{k: (v[t : t + 1] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in vars(batch).items()})


# -- the MLflow UI in a browser --------------------------------------------------------------------------------------
def artifacts_folder() -> Path:
    """Where screenshots are kept: $METADIST_TEST_ARTIFACTS, else test-artifacts/ under the repository root."""
    folder = Path(os.environ.get(ARTIFACTS_ENV) or REPO_ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def value_after(text: str, label: str) -> str:
    """In a page's text, the line after the line `label` (a table cell's value after its key)."""
    lines = text.splitlines()
    assert label in lines, f"no line {label!r} in the page"
    return lines[lines.index(label) + 1]


def assert_loopback(urls: list[str]) -> None:
    """Every URL the pages asked for (DevTools' record of the tab and its workers) is on 127.0.0.1."""
    from urllib.parse import urlsplit

    away = [url for url in urls if urlsplit(url).hostname not in (None, "127.0.0.1")]
    assert not away, f"the pages asked beyond loopback: {away}"


def assert_stayed_on_loopback(activity) -> None:
    """Chromium's NetLog (a browser.NetworkActivity, every process) shows nothing that could have carried anything
    beyond loopback. Requests that a background service sent to the refusing proxy never left the machine: they
    pass, but are reported as a warning, since they name a service the browser's flags did not switch off."""
    assert activity is not None, "Chromium wrote no NetLog"
    assert activity.off_loopback() == [], "Chromium's NetLog shows traffic that could have left loopback"
    if activity.proxy_refused:
        warnings.warn(f"Chromium asked beyond loopback, refused at the proxy (nothing left the machine): "
                      f"{sorted(set(activity.proxy_refused))}", stacklevel=2)  # fmt: skip
