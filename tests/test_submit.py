"""`metadist submit` and `metadist job` against a real Ray cluster; the cluster launcher configs in cluster/.

One cluster serves the module: `cluster/local-cluster.sh up` — a head (0 CPUs: the job drivers and the parameter
server need none) and one worker node (1 CPU), every socket on 127.0.0.1, token authentication on with the token in
$RAY_AUTH_TOKEN and a private HOME, so nothing touches ~/.ray — and `local-cluster.sh down` stops exactly its
processes. A real `mlflow server` (tests/mlflow_server.py) receives the runs; they are checked through MLflow's REST
API, and the end-to-end run also in headless Chromium (tests/browser.py), as a person sees it in the MLflow UI, with a
screenshot kept in $METADIST_TEST_ARTIFACTS (else test-artifacts/). Jobs are tiny (conv-4 with 8 filters, a few
steps) and their data are the session's bundled shard sets.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from metadist.cli import main
from metadist.core import checkpoint as ckpt_io
from tests.browser import find_chrome, headless_chrome
from tests.helpers import (MIN_PNG_BYTES, artifacts_folder, assert_loopback, assert_stayed_on_loopback, missing_tool,
                           starts, tiny_job, value_after)
from tests.mlflow_server import free_port, mlflow_server  # noqa: F401  (session fixture: a real `mlflow server`)

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # this environment's `ray` and `metadist`, put first on the nodes' PATH
LOCAL_CLUSTER = REPO / "cluster" / "local-cluster.sh"
CLUSTER_START_TIMEOUT_S = 240
JOB_TIMEOUT_S = 180
# Ray 2.60's tail_job_logs passes aiohttp ssl=None, which aiohttp deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")


@dataclass(frozen=True)
class LocalCluster:
    url: str  # the job server
    gcs_address: str
    directory: Path  # local-cluster.sh's state: PIDs, logs, Ray's session files
    env: dict[str, str]  # the environment the nodes were started with (the token in it)


def _run_script(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(LOCAL_CLUSTER), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
@starts("cluster", "server")  # the head runs Ray's job server
def cluster(small1_uri, small2_uri, tmp_path_factory):
    """A head and one 1-CPU worker node on loopback, with token authentication; the token in this process's
    environment for the module (as `metadist submit` finds it) and a private HOME for the nodes."""
    home = tmp_path_factory.mktemp("ray-home")
    # Short: Ray's socket paths under it must stay below the 107-byte limit of a Unix socket's name.
    directory = Path(tempfile.mkdtemp(prefix="mdsub-", dir="/tmp"))
    token = secrets.token_hex(16)
    unset = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    # METADIST_CACHE (the session's, where small1_uri/small2_uri put the bundled shard sets) is inherited by the
    # nodes and their jobs: a standard job file's bundled:// URIs resolve there.
    env.update({"HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY": str(BIN / "ray"),
                "PATH": f"{BIN}:{os.environ.get('PATH', '')}"})
    port, dashboard_port, client_port = free_port(), free_port(), free_port()
    try:
        started = _run_script("up", "--workers", "1", "--head-cpus", "0", "--worker-cpus", "1", "--object-store-mb",
                              "128", "--port", str(port), "--dashboard-port", str(dashboard_port), "--client-port",
                              str(client_port), "--dir", str(directory), env=env, timeout=CLUSTER_START_TIMEOUT_S)
        assert started.returncode == 0, started.stdout + started.stderr
        url = f"http://127.0.0.1:{dashboard_port}"
        assert f"metadist submit JOB.yaml --address {url}" in started.stdout
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RAY_AUTH_TOKEN", token)
            for key in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
                mp.delenv(key, raising=False)
            yield LocalCluster(url=url, gcs_address=f"127.0.0.1:{port}", directory=directory, env=env)
    finally:
        stopped = _run_script("down", "--dir", str(directory), env=env, timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def workdir(small1_uri, small2_uri, tmp_path_factory) -> Path:
    """The folder uploaded as the jobs' working directory, holding a tiny job (each test sets its checkpoint.uri)."""
    root = tmp_path_factory.mktemp("submit-workdir")
    job = tiny_job(small1_uri, small2_uri, root.parent / "checkpoints", "name=tiny-submit")
    (root / "job.yaml").write_text(yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False))
    return root


def _submit(cluster: LocalCluster, checkpoints: Path, *args: str) -> int:
    return main(["submit", "job.yaml", "--address", cluster.url, "--set", f"checkpoint.uri={checkpoints}", *args])


def _job_id(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


def _head_node_id(cluster: LocalCluster) -> str:
    """The head's node id, from the dashboard's state API (with the cluster's token)."""
    request = urllib.request.Request(f"{cluster.url}/api/v0/nodes?limit=100",
                                     headers={"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
        nodes = json.load(response)["data"]["result"]["result"]
    [head] = [n["node_id"] for n in nodes if n["is_head_node"]]
    return head


def _mlflow(uri: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """One call of MLflow's REST API (GET with a query, or POST with a JSON body), as plain HTTP."""
    url = f"{uri}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        return json.load(response)


# -- the job's run, end to end ---------------------------------------------------------------------------------------
@pytest.mark.cluster
@pytest.mark.browser
@pytest.mark.slow
def test_submitted_job_succeeds_and_its_run_is_in_mlflow(  # noqa: F811  (mlflow_server: the imported fixture)
        cluster, workdir, mlflow_server, small1_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # forwarded to the job
    submission_id = _job_id("e2e")
    experiment = f"submit-{secrets.token_hex(3)}"
    code = _submit(cluster, tmp_path, "--submission-id", submission_id, "--set", "train.steps=4",
                   "--set", "tracking.enabled=true", "--set", f"tracking.experiment={experiment}",
                   "--set", "tracking.log_model=false")
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert f"submitted {submission_id}" in out and f"job {submission_id}: SUCCEEDED" in out
    assert "test accuracy_after:" in out  # the job's own output, streamed while it ran
    assert "metadist: warning" not in err  # absolute checkpoint folder, tracking server forwarded: nothing to warn of

    found = _mlflow(mlflow_server, "experiments/get-by-name", experiment_name=experiment)
    experiment_id = found["experiment"]["experiment_id"]
    [run] = _mlflow(mlflow_server, "runs/search", {"experiment_ids": [experiment_id]})["runs"]
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["name"] == "tiny-submit" and params["train.steps"] == "4" and params["model.hidden"] == "8"
    assert params["data.train.uri"] == small1_uri and params["tracking.experiment"] == experiment
    loss = _mlflow(mlflow_server, "metrics/get-history", run_id=run_id, metric_key="train/loss_after")["metrics"]
    assert sorted(m["step"] for m in loss) == [2, 4]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert 0.0 <= metrics["test/accuracy_after"] <= 1.0 and "test/accuracy_after_ci95" in metrics

    def artifacts(path: str = "") -> set[str]:
        listing = _mlflow(mlflow_server, "artifacts/list", run_id=run_id, **({"path": path} if path else {}))
        return {f["path"] for f in listing.get("files", [])}

    assert {"job.yaml", "plots", "checkpoints"} <= artifacts()
    assert artifacts("plots") == {"plots/learning_curve.png"}
    assert "checkpoints/step-00000004.safetensors" in artifacts("checkpoints")

    # The same run as a person sees it in the MLflow UI: the experiment in the list, and the run's page with its
    # name, a setting and its final test accuracy. One Chromium, loopback only; the run page (its name and metrics
    # table) is kept as submit-run.png.
    chrome = find_chrome()
    if chrome is None:
        missing_tool("no Chromium found for the MLflow UI check (apt-get install chromium, or set $CHROME)")
    run_name = run["info"]["run_name"]
    assert run_name == "tiny-submit"  # tracking.run_name unset: the job's name
    with headless_chrome(chrome) as browser:
        browser.load(f"{mlflow_server}/#/experiments", expect=[experiment])
        run_page = f"{mlflow_server}/#/experiments/{experiment_id}/runs/{run_id}"
        text = browser.load(run_page, expect=[run_name, "Finished", run_id, "test/accuracy_after"])
        assert float(value_after(text, "test/accuracy_after")) == pytest.approx(metrics["test/accuracy_after"])
        assert value_after(text, "train.steps") == "4"
        browser.scroll_to("Metrics (")  # the metrics table under the run's name, which stays in view
        png = browser.screenshot()
        assert_loopback(browser.requested_urls)
    (artifacts_folder() / "submit-run.png").write_bytes(png)
    assert png.startswith(b"\x89PNG") and len(png) >= MIN_PNG_BYTES, f"submit-run.png: {len(png)} bytes, a blank page?"
    assert_stayed_on_loopback(browser.network)  # Chromium's NetLog, every process


@pytest.mark.cluster
@pytest.mark.slow
def test_distributed_job_joins_the_cluster_and_is_followed_by_job_logs(cluster, workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    submission_id = _job_id("workers")
    assert _submit(cluster, tmp_path, "--submission-id", submission_id, "--workers", "1", "--no-wait") == 0
    out = capsys.readouterr().out
    assert f"submitted {submission_id}" in out and "--workers 1" in out and f"metadist job stop {submission_id}" in out
    assert main(["job", "logs", submission_id, "--follow", "--address", cluster.url]) == 0
    out = capsys.readouterr().out
    # Inside the job, `metadist train --workers 1` joins the cluster by $RAY_ADDRESS (token auth, as the nodes have
    # it) and its task worker is placed on the worker node: the head has no CPU slot.
    assert f"joined the Ray cluster at {cluster.gcs_address} (token auth)" in out
    head = _head_node_id(cluster)
    assert "task worker 0 up on node " in out and f"task worker 0 up on node {head[:8]}" not in out
    assert "test accuracy_after:" in out
    assert f"job {submission_id}: SUCCEEDED" in out
    assert main(["job", "status", submission_id, "--address", cluster.url]) == 0
    assert capsys.readouterr().out.startswith(f"{submission_id}: SUCCEEDED")


@pytest.mark.cluster
@pytest.mark.slow
def test_ctrl_c_leaves_the_job_running_and_job_stop_stops_it(cluster, workdir, tmp_path, capsys):
    from metadist.submission import JobServer

    submission_id = _job_id("long")
    command = [str(BIN / "metadist"), "submit", "job.yaml", "--address", cluster.url, "--submission-id", submission_id,
               "--set", f"checkpoint.uri={tmp_path}", "--set", "checkpoint.every=0",
               "--set", "train.steps=1000000", "--set", "train.log_every=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # As from a terminal: SIGINT at its default. Children inherit an ignored SIGINT (something earlier in a full
    # run leaves pytest ignoring it), and Python then installs no KeyboardInterrupt handler: Ctrl-C would be lost.
    follower = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Following: wait for the job's first training step in the streamed logs, then Ctrl-C.
        deadline = time.monotonic() + JOB_TIMEOUT_S
        lines = []
        while not any("step 1/1000000" in line for line in lines) and time.monotonic() < deadline:
            line = follower.stdout.readline()
            assert line, "the follower ended early: " + "".join(lines) + follower.stderr.read()
            lines.append(line)
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert follower.returncode == 130, err
    assert f"job {submission_id} keeps running" in err and f"metadist job stop {submission_id}" in err
    server = JobServer(cluster.url)
    assert server.status(submission_id) == "RUNNING"

    assert main(["job", "list", "--address", cluster.url]) == 0
    assert f"{submission_id}\tRUNNING" in capsys.readouterr().out
    assert main(["job", "stop", submission_id, "--address", cluster.url]) == 0
    assert f"job {submission_id}: STOPPED" in capsys.readouterr().out
    assert main(["job", "status", submission_id, "--address", cluster.url]) == 0
    assert capsys.readouterr().out.startswith(f"{submission_id}: STOPPED")
    assert main(["job", "logs", submission_id, "--address", cluster.url]) == 0
    assert "INFO metadist.training: step 1/1000000" in capsys.readouterr().out
    assert main(["job", "status", "no-such-job", "--address", cluster.url]) == 2
    assert "no such job" in capsys.readouterr().err


@pytest.mark.cluster
@pytest.mark.slow
def test_a_wrong_or_missing_token_is_refused_with_a_clear_error(cluster, workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    assert _submit(cluster, tmp_path) == 2
    assert "refused this client's authentication token" in capsys.readouterr().err
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    assert main(["job", "list", "--address", cluster.url]) == 2
    assert "requires an authentication token and this client sent none" in capsys.readouterr().err


@pytest.mark.cluster
@pytest.mark.slow
def test_a_standard_job_file_runs_unchanged_under_plain_ray_job_submit(cluster, tmp_path, small1_uri, small2_uri):
    from metadist.submission import JobServer

    # `ray job submit --working-dir .` from a folder holding jobs/, as a user would from the repository.
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    submission_id = _job_id("plain-ray")
    tiny = ["model.hidden=8", "train.steps=2", "train.log_every=1", "train.eval_every=0", "train.final_eval_episodes=4",
            "train.threads=1", "tracking.enabled=false", f"checkpoint.uri={tmp_path / 'checkpoints'}"]
    command = [str(BIN / "ray"), "job", "submit", "--address", cluster.url, "--submission-id", submission_id,
               "--working-dir", ".", "--", "metadist", "train", "jobs/omniglot-5way-1shot-protonet.yaml", "--no-progress"]
    for setting in tiny:
        command += ["--set", setting]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # the plain Ray client needs the mode said; the token is in the env
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    info = JobServer(cluster.url).info(submission_id)
    assert str(info.status) == "SUCCEEDED", info.message
    logs = JobServer(cluster.url).logs(submission_id)
    assert "name: omniglot-5way-1shot-protonet" in logs and "test accuracy_after:" in logs
    assert [step for step, _ in ckpt_io.run_checkpoints(str(tmp_path / "checkpoints"))] == [2]


# -- refused before anything is sent ---------------------------------------------------------------------------------
def test_bad_jobs_and_settings_fail_before_the_cluster_is_contacted(tmp_path, monkeypatch, capsys):
    """The address answers nothing: each error below is reached before any attempt to use it."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("train: {stepz: 3}\n")
    assert main(["submit", "bad.yaml", "--address", nowhere]) == 2
    assert "bad.yaml: train.stepz: Extra inputs are not permitted" in capsys.readouterr().err
    (tmp_path / "job.yaml").write_text("name: ok\n")
    assert main(["submit", "job.yaml", "--set", "model.hiden=8", "--address", nowhere]) == 2
    assert "--set: model.hiden" in capsys.readouterr().err
    assert main(["submit", "job.yaml", "--set", "train.meta_batch=0", "--address", nowhere]) == 2
    assert "train.meta_batch" in capsys.readouterr().err
    assert main(["submit", "job.yaml", "--working-dir", str(tmp_path / "sub"), "--address", nowhere]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "sub").mkdir()
    assert main(["submit", "job.yaml", "--working-dir", "sub", "--address", nowhere]) == 2
    assert "not inside the working directory" in capsys.readouterr().err
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "job.yaml").write_text("name: ok\n")
    assert main(["submit", "outputs/job.yaml", "--address", nowhere]) == 2
    assert "would not be uploaded" in capsys.readouterr().err
    (tmp_path / ".gitignore").write_text("private/\n")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "job.yaml").write_text("name: ok\n")
    assert main(["submit", "private/job.yaml", "--address", nowhere]) == 2
    err = capsys.readouterr().err
    assert "would not be uploaded" in err and ".gitignore" in err
    assert main(["submit", "job.yaml", "--env", "NOEQUALS", "--address", nowhere]) == 2
    assert "--env 'NOEQUALS'" in capsys.readouterr().err


def test_an_unreachable_job_server_is_a_clear_error_and_results_left_in_the_job_are_warned_of(tmp_path, monkeypatch,
                                                                                               capsys):
    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    (tmp_path / "job.yaml").write_text("name: ok\n")
    assert main(["submit", "job.yaml", "--address", nowhere]) == 2
    err = capsys.readouterr().err
    assert f"{nowhere}: cannot reach the job server: no Ray job server answers there" in err
    # Nothing says where checkpoints and the MLflow run go: both would vanish with the job's working directory.
    assert "warning: checkpoint.uri is unset (outputs/ok/checkpoints)" in err
    assert "warning: tracking.uri is unset and MLFLOW_TRACKING_URI is not set here" in err
    assert main(["job", "list", "--address", nowhere]) == 2
    assert "no Ray job server answers there" in capsys.readouterr().err
    assert "RAY_AUTH_MODE" not in os.environ  # token mode was switched on only while Ray's client was built


def test_the_submission_names_the_job_relative_to_the_working_dir_and_forwards_the_tracking_uri(tmp_path, monkeypatch):
    from metadist.config import load_job
    from metadist.submission import WORKING_DIR_EXCLUDES, prepare_submission

    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "my job.yaml").write_text("name: my job\ncheckpoint: {uri: s3://bucket/ckpt}\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    job_file = tmp_path / "jobs" / "my job.yaml"
    submission = prepare_submission(load_job(str(job_file)), job_file, overrides=["train.steps=5", "name=a b"], workers=2,
                                    working_dir=tmp_path, pip=["s3fs"], env={"AWS_REGION": "eu-west-1"},
                                    address="http://10.0.0.5:8265")
    assert submission.entrypoint == ("metadist train 'jobs/my job.yaml' --no-progress --set train.steps=5 "
                                     "--set 'name=a b' --workers 2")
    assert submission.runtime_env == {
        "working_dir": str(tmp_path), "excludes": list(WORKING_DIR_EXCLUDES), "pip": ["s3fs"],
        "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "AWS_REGION": "eu-west-1"}}
    assert submission.submission_id.startswith("my-job-")
    # A tracking server on this machine's loopback is not where a job on another machine can reach it.
    [warning] = submission.warnings
    assert "loopback" in warning and "10.0.0.5" in warning


# -- the cluster launcher's configurations ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["aws.yaml", "onprem.yaml"])
def test_cluster_configs_are_valid_for_ray_up(name):
    """Checked as `ray up` checks them before contacting a provider: defaults filled in (Ray's prepare_config),
    then validated against the ray-schema.json of the installed Ray."""
    pytest.importorskip("jsonschema")
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster" / name).read_text())
    prepared = prepare_config(config)
    validate_config(prepared)
    commands = " ".join(prepared["head_setup_commands"] + prepared["head_start_ray_commands"]
                        + prepared["worker_start_ray_commands"])
    assert "torch==2.13.0" in commands and commands.count("RAY_AUTH_MODE=token") == 2
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    if name == "aws.yaml":
        gpu = prepared["available_node_types"]["gpu_worker"]
        assert gpu["min_workers"] == 0 and gpu["node_config"]["InstanceType"].startswith("g")
        assert prepared["available_node_types"]["head"]["resources"] == {"CPU": 0}
    else:
        assert prepared["provider"]["head_ip"] and prepared["provider"]["worker_ips"]
    with pytest.raises(ValidationError):  # the schema is really applied: a misspelt section is refused
        validate_config({**prepared, "setup_comands": []})
