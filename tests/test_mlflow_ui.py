"""The MLflow UI as a person sees it: a tiny training run tracked to a real `mlflow server`, its pages opened in
headless Chromium and checked for the experiment, the run's name, a setting, a metric, the charts (the learning
rate's value readable), the system metrics of the task worker and the parameter server, and the artifacts.

The run is distributed (one task worker and the parameter server, on a Ray started by `metadist train`) so that its
workers' system metrics are there to see: about 30 s more than a local run.

Each page is kept as a screenshot in $METADIST_TEST_ARTIFACTS, else test-artifacts/ under the repository root.
Without Chromium the module is skipped, unless METADIST_CI=1 (as in CI), where that is a failure.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import HEIGHT, WIDTH, Browser, headless_chrome
from tests.helpers import (MIN_PNG_BYTES, artifacts_folder, assert_loopback, assert_stayed_on_loopback, starts,
                           train_tiny_cli, value_after)
from tests.mlflow_server import mlflow_server  # noqa: F401  (session fixture: a real `mlflow server`)

EXPERIMENT = "ui-tests"
RUN_NAME = "ui-run"
PARAM, PARAM_VALUE = "algorithm.name", "maml"
METRIC = "test/accuracy_after"
LR_CHART = f"{RUN_NAME} (train/lr_milli)"  # a chart's legend: run name (metric)
NODES = ("worker-0", "parameter-server")  # system/<node>/... besides the driver's system/...
# A rendered page, not a blank or a spinner: MLflow's pages give 120-180 kB (MIN_PNG_BYTES) and 3,500-6,000 colours
# at 1440x900.
MIN_COLOURS = 256
MAX_BACKGROUND_SHARE = 0.95  # of the pixels in the commonest colour


@dataclass(frozen=True)
class TrackedRun:
    server: str  # http://127.0.0.1:<port>
    experiment_id: str
    run_id: str
    metrics: dict[str, float]
    learning_curve_size: tuple[int, int]  # of plots/learning_curve.png, in pixels

    @property
    def run_page(self) -> str:
        return f"{self.server}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


@pytest.fixture(scope="module")
@starts("cluster")
def tracked_run(chrome, mlflow_server, small1_uri, small2_uri, tmp_path_factory) -> TrackedRun:  # noqa: F811
    from mlflow import MlflowClient

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # MLflow's 10 s would outlast the run
        # Token authentication on, as Ray has it by default, with the token in the environment instead of ~/.ray.
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
        train_tiny_cli(tmp_path_factory.mktemp("ui"), small1_uri, small2_uri, "ui-job", "tracking.enabled=true",
                       f"tracking.uri={mlflow_server}", f"tracking.experiment={EXPERIMENT}", f"tracking.run_name={RUN_NAME}",
                       "tracking.log_model=false", "distributed.workers=1")  # fmt: skip
    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (run,) = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{RUN_NAME}'")
    plot = client.download_artifacts(run.info.run_id, "plots/learning_curve.png", str(tmp_path_factory.mktemp("plot")))
    with Image.open(plot) as image:
        plot_size = image.size
    return TrackedRun(mlflow_server, experiment_id, run.info.run_id, run.data.metrics, plot_size)


@pytest.fixture(scope="module")
@starts("browser")
def browser(chrome, tracked_run):
    with headless_chrome(chrome) as browser:
        yield browser


@pytest.fixture(scope="module")
def artifacts_dir() -> Path:
    return artifacts_folder()


def keep_screenshot(browser: Browser, artifacts_dir: Path, name: str) -> Path:
    """Screenshot the tab into `<artifacts_dir>/mlflow-ui-<name>.png`, checking it shows a rendered page."""
    png = browser.screenshot()
    path = artifacts_dir / f"mlflow-ui-{name}.png"
    path.write_bytes(png)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (WIDTH, HEIGHT), (path, image.format, image.size)
    assert len(png) >= MIN_PNG_BYTES, f"{path}: {len(png)} bytes, a blank page?"
    colours = image.convert("RGB").getcolors(maxcolors=1 << 16)  # None: more than 65,536 colours
    if colours is not None:
        assert len(colours) >= MIN_COLOURS, f"{path}: only {len(colours)} colours, a blank page?"
        background = max(colours)[0] / (WIDTH * HEIGHT)
        assert background <= MAX_BACKGROUND_SHARE, f"{path}: {background:.0%} of it one colour, a blank page?"
    return path


def test_experiment_list_shows_the_experiment(browser, tracked_run, artifacts_dir):
    text = browser.load(f"{tracked_run.server}/#/experiments", expect=[EXPERIMENT])
    assert "Experiments" in text
    keep_screenshot(browser, artifacts_dir, "experiments")
    assert_loopback(browser.requested_urls)


def test_run_list_shows_the_run(browser, tracked_run, artifacts_dir):
    text = browser.load(f"{tracked_run.server}/#/experiments/{tracked_run.experiment_id}/runs", expect=[RUN_NAME])
    assert "1 matching run" in text
    keep_screenshot(browser, artifacts_dir, "runs")
    assert_loopback(browser.requested_urls)


def test_run_page_shows_name_status_setting_and_metric(browser, tracked_run, artifacts_dir):
    text = browser.load(tracked_run.run_page, expect=[RUN_NAME, "Finished", tracked_run.run_id, PARAM, METRIC])
    assert value_after(text, PARAM) == PARAM_VALUE
    assert float(value_after(text, METRIC)) == pytest.approx(tracked_run.metrics[METRIC])
    keep_screenshot(browser, artifacts_dir, "run")
    browser.scroll_to("Metrics (")  # the metrics table, and the parameters below it
    keep_screenshot(browser, artifacts_dir, "run-metrics")
    assert_loopback(browser.requested_urls)


def test_artifacts_tab_lists_the_job_and_shows_the_learning_curve(browser, tracked_run, artifacts_dir):
    url = f"{tracked_run.run_page}/artifacts/plots/learning_curve.png"  # the tab, with the plot open in its preview
    text = browser.load(url, expect=["job.yaml", "summary.json", "checkpoints", "plots/learning_curve.png"])
    assert "Artifacts" in text
    # The preview is an <img> of a blob: URL holding the fetched file; it shows the plot when it decoded at its size.
    shown = browser.evaluate("Array.from(document.images).filter(i => i.complete && i.getBoundingClientRect().width > 0)"
                             ".map(i => [i.naturalWidth, i.naturalHeight])")  # fmt: skip
    assert list(tracked_run.learning_curve_size) in shown, f"learning curve not displayed; images (w, h): {shown}"
    keep_screenshot(browser, artifacts_dir, "artifacts")
    assert_loopback(browser.requested_urls)


def test_charts_are_sectioned_by_prefix_and_show_the_learning_rate(browser, tracked_run, artifacts_dir):
    assert tracked_run.metrics["train/lr_milli"] == 1.0  # Adam at 0.001, in units of 1e-3
    browser.load(f"{tracked_run.run_page}/model-metrics", expect=["train", "test", "distributed"])
    browser.scroll_to("train")  # a section's charts are drawn once in view
    text = browser.wait_for([LR_CHART])
    # The chart's text: its title, the x ticks (steps), the y ticks, "Step", the legend. The y-axis runs from 0 to 2,
    # the line at 1 (a constant 0.001 drew at 0, on -1 to 1).
    lines = text.splitlines()
    chart = lines[lines.index("lr_milli") + 1 : lines.index(LR_CHART)]
    y_ticks = [float(t.replace("\u2212", "-")) for t in chart[chart.index("4") + 1 : chart.index("Step")]]
    assert min(y_ticks) == 0 and max(y_ticks) == 2, chart
    keep_screenshot(browser, artifacts_dir, "model-metrics")
    assert_loopback(browser.requested_urls)


def test_system_metrics_of_the_worker_and_the_parameter_server(browser, tracked_run, artifacts_dir):
    for node in NODES:
        assert f"system/{node}/cpu_utilization_percentage" in tracked_run.metrics, node
    text = browser.load(f"{tracked_run.run_page}/system-metrics", expect=[f"system/{node}" for node in NODES])
    assert "System metrics" in text  # the driver's own section
    browser.scroll_to("system/worker-0")
    browser.wait_for([f"{RUN_NAME} (system/worker-0/cpu_utilization_percentage)"])
    keep_screenshot(browser, artifacts_dir, "system-metrics")
    assert_loopback(browser.requested_urls)


@pytest.mark.browser
def test_chromium_stays_on_loopback(chrome, tracked_run):
    """Chromium's own NetLog (every process: pages, workers, and the browser's background services) holds no
    request or connection that could have carried anything beyond 127.0.0.1, after a fresh start and a run page."""
    with headless_chrome(chrome) as browser:
        browser.load(tracked_run.run_page, expect=[RUN_NAME, METRIC])
    activity = browser.network
    assert activity is not None, "Chromium wrote no NetLog"
    assert any(url.startswith(tracked_run.server) for url in activity.urls), "the NetLog missed the pages' requests"
    assert_stayed_on_loopback(activity)
