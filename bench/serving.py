"""Serving benchmark: requests/s and p50/p99 latency of `metadist serve` for 5-way 1-shot adapt-and-classify of
5 queries, with 1, 4 and 16 concurrent clients on loopback.

Run (about 2 minutes on 2 cores):

    .venv/bin/python bench/serving.py

What it measures, for each algorithm of --algorithms (default: MAML and ProtoNet):
  * the model: the default job's network (conv-4, 64 filters, 28×28 grey Omniglot; MAML adapts with 3 inner
    steps), meta-trained for one step into a temporary folder: serving cost does not depend on how well it
    learned. --checkpoint serves a checkpoint of your own instead;
  * the server: `python -m metadist serve --address 127.0.0.1:0` in a process of its own, with the default
    ServeConfig plus any --server-set KEY=VALUE;
  * the clients: 1, 4 and 16 threads of this process, each with its own metadist.serving.Client (its own
    connection), each sending AdaptAndClassify requests back to back: 5 support images (one per class) and 5
    queries, original 105×105 Omniglot PNGs (images_background_small2's Tagalog), so the server decodes and
    resizes them as it would a user's files. Each client cycles through 20 different tasks.
  * a last level, --stalled-clients clients (default 16) while --stalled calls (default 16) stay open that sent their
    metadata and never their request (each on a connection of its own): what such calls cost the others;
  Each level: --warmup-s of untimed requests, then timed requests until --seconds pass or --requests complete
  (whichever first). Latency is the client's: from the call to its answer, one per request; p50 and p99 over all
  timed requests of the level. Server CPU is the server process's CPU time over the timed wall time (2.0 = two
  cores busy).

Output: a table on stdout, bench/results/serving.json, and the section "## Serving: gRPC adapt-and-classify" of
docs/benchmarks.md (only that section is replaced; its text is docs/templates/serving.md).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from common import REPO
from common.docs import markdown_table, render, template_heading
from common.measure import Stopwatch, run_for
from common.results import add_output_arguments, machine_info, publish, results_path
from common.stats import percentile

RESULTS_PATH = results_path("serving")
BEFORE_PATH = results_path("serving_before")  # the thread-pool server's figures, for comparison
BEFORE_COMMIT = "7492324"  # the last commit with the thread-pool server
BEFORE_COMMAND = ("git worktree add --detach ../before 7492324 && PYTHONPATH=../before .venv/bin/python bench/serving.py "
                  "--stalled 0 --results bench/results/serving_before.json")
REPEATS_DIR = RESULTS_PATH.parent / "serving_repeats"  # before-N.json and after-N.json, when the two were run alternately
DOC_SECTION = template_heading("serving")
COMMAND = ".venv/bin/python bench/serving.py"

WAYS, SHOTS, QUERIES = 5, 1, 5  # queries in total: one per class
CONCURRENCY = (1, 4, 16)
STALLED = 16  # calls that never send their request, open during the last level
TASKS_PER_CLIENT = 20
ALPHABET = "Tagalog"  # of images_background_small2; 17 characters × 20 drawings
STARTUP_TIMEOUT_S = 120


# -- inputs ---------------------------------------------------------------------------------------------------------
def omniglot_tasks(count: int) -> list[tuple[list[bytes], list[str], list[bytes]]]:
    """`count` 5-way 1-shot tasks with 5 queries, as encoded PNG files: (support images, labels, query images)."""
    from metadist.data.bundled import BUNDLED_ZIPS, bundled_file

    drawings: dict[str, list[bytes]] = {}
    with zipfile.ZipFile(bundled_file(BUNDLED_ZIPS["omniglot-small2"])) as archive:
        for name in sorted(archive.namelist()):
            parts = name.split("/")
            if len(parts) == 4 and parts[1] == ALPHABET and name.endswith(".png"):
                drawings.setdefault(parts[2], []).append(archive.read(name))
    characters = sorted(drawings)
    tasks = []
    for t in range(count):
        chosen = [characters[(t + i * 3) % len(characters)] for i in range(WAYS)]
        k = 2 * (t // len(characters)) % 20
        support = [drawings[c][k] for c in chosen]
        queries = [drawings[c][(k + 1) % 20] for c in chosen]
        tasks.append((support, chosen, queries))
    return tasks


def train_checkpoint(algorithm: str, out: Path) -> str:
    """The default job's network for `algorithm`, meta-trained for one step (the weights do not change the cost)."""
    settings = [
        f"algorithm.name={algorithm}", "train.steps=1", "train.meta_batch=2", "train.eval_every=0",
        "train.final_eval_episodes=1", "train.threads=1", "tracking.enabled=false", f"checkpoint.uri={out}", f"name=bench-{algorithm}",
    ]
    command = [sys.executable, "-m", "metadist", "train", "--no-progress"]
    for setting in settings:
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"training the {algorithm} checkpoint failed:\n{done.stderr[-4000:]}")
    return str(out)


# -- the server -----------------------------------------------------------------------------------------------------
class ServerProcess:
    """`python -m metadist serve` on 127.0.0.1, port chosen by the server; its log kept for errors."""

    def __init__(self, checkpoint: str, overrides: list[str]) -> None:
        command = [sys.executable, "-m", "metadist", "serve", "--checkpoint", checkpoint, "--address", "127.0.0.1:0"]
        for item in overrides:
            command += ["--set", item]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.log: list[str] = []
        self._reader = threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not any("listening on" in line for line in self.log):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start:\n" + "".join(self.log)[-4000:])
            time.sleep(0.05)
        self.address = re.search(r"listening on (\S+)", "".join(self.log)).group(1)

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        self.process.stderr.close()


# -- the clients ----------------------------------------------------------------------------------------------------
class StalledCalls:
    """`count` AdaptAndClassify calls, each on a connection of its own, that send their metadata and never their
    request: request-streaming calls whose iterator blocks (on the wire, a unary call is the same stream)."""

    def __init__(self, address: str, count: int) -> None:
        import grpc

        self._release = threading.Event()
        self._channels = [grpc.insecure_channel(address) for _ in range(count)]
        self.calls = []
        for channel in self._channels:
            grpc.channel_ready_future(channel).result(timeout=30)
            stalled = channel.stream_unary("/metadist.serving.v1.FewShot/AdaptAndClassify", request_serializer=None,
                                           response_deserializer=None)
            self.calls.append(stalled.future(self._never(), timeout=3600))
        time.sleep(0.5)  # their headers reach the server

    def _never(self):
        self._release.wait()
        return
        yield b""

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        self._release.set()
        for channel in self._channels:
            channel.close()


def run_level(address: str, clients: int, tasks: list, args: argparse.Namespace, server: ServerProcess) -> dict:
    """`clients` threads sending requests back to back: warm-up, then timed until --seconds or --requests."""
    from metadist.errors import ServingError
    from metadist.serving import Client

    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    budget = [args.requests]
    phase = {"timed": False, "stop": False}
    ready = threading.Barrier(clients + 1)
    start_timed = threading.Event()

    def client_loop(index: int) -> None:
        with Client(address, timeout_s=60) as client:
            client.wait_until_ready(30)
            cursor = itertools.count(index * TASKS_PER_CLIENT)  # each client cycles through its own tasks
            if args.warmup_s > 0:
                run_for(lambda: client.adapt_and_classify(*tasks[next(cursor) % len(tasks)]), args.warmup_s)
            ready.wait()
            start_timed.wait()
            while not phase["stop"]:
                with lock:
                    if budget[0] <= 0:
                        phase["stop"] = True
                        break
                    budget[0] -= 1
                support, labels, queries = tasks[next(cursor) % len(tasks)]
                begin = time.perf_counter()
                try:
                    predictions = client.adapt_and_classify(support, labels, queries)
                    assert len(predictions) == QUERIES
                except ServingError as exc:
                    with lock:
                        errors[exc.code] = errors.get(exc.code, 0) + 1
                    continue
                elapsed = time.perf_counter() - begin
                with lock:
                    if not phase["stop"]:
                        latencies.append(elapsed)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=STARTUP_TIMEOUT_S)
    cpu_server, watch = server.cpu_s(), Stopwatch()
    start_timed.set()
    while watch.wall < args.seconds and not phase["stop"]:
        time.sleep(0.01)
    with lock:
        phase["stop"] = True
        wall_s = watch.wall
        timed = list(latencies)
    server_cpu_s, client_cpu_s = server.cpu_s() - cpu_server, watch.cpu
    for thread in threads:
        thread.join(timeout=120)
    ms = sorted(1e3 * x for x in timed)
    return {
        "clients": clients,
        "stalled": 0,
        "requests": len(ms),
        "errors": errors,
        "wall_s": wall_s,
        "requests_per_s": len(ms) / wall_s,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else None,
        "max_ms": ms[-1] if ms else None,
        "server_cpu_per_wall": server_cpu_s / wall_s,
        "client_cpu_per_wall": client_cpu_s / wall_s,
    }


# -- report ---------------------------------------------------------------------------------------------------------
def machine(load_before: tuple[float, float, float]) -> dict:
    import grpc

    return machine_info(
        grpcio=grpc.__version__, load_average_before=list(load_before), load_average_at_end=list(os.getloadavg())
    )


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def table(runs: list[dict]) -> str:
    header = ["Model", "Clients", "Stalled calls", "Requests", "Requests/s", "p50 (ms)", "p99 (ms)", "Errors", "Server CPU (cores)"]
    rows = []
    for run in runs:
        for level in run["levels"]:
            errors = ", ".join(f"{code} {n}" for code, n in sorted(level["errors"].items())) or "0"
            rows.append([run["label"], str(level["clients"]), str(level.get("stalled", 0)), f"{level['requests']:,}", fmt(level["requests_per_s"]),
                         fmt(level["p50_ms"]), fmt(level["p99_ms"]), errors, f"{level['server_cpu_per_wall']:.2f}"])
    return markdown_table(header, rows)


def repeats_table(paths: list) -> str:
    """Requests/s of every level in each repeated run (before-N: the thread-pool server, after-N: this one)."""
    import json

    runs = [(path.stem, json.loads(path.read_text())) for path in paths]
    levels: list[str] = []
    rows = []
    for name, report in runs:
        cells = {}
        for run in report["runs"]:
            for level in run["levels"]:
                key = f"{run['label']} {level['clients']}" + (f"+{level['stalled']}" if level.get("stalled") else "")
                cells[key] = f"{level['requests_per_s']:.1f}"
                if key not in levels:
                    levels.append(key)
        load = report["machine"]["load_average_before"][0]
        rows.append((name, load, cells))
    header = "| run | load before | " + " | ".join(levels) + " |\n|---|---:|" + "---:|" * len(levels) + "\n"
    body = "".join(f"| {name} | {load:.2f} | " + " | ".join(cells.get(k, "–") for k in levels) + " |\n" for name, load, cells in rows)
    return (f"Repeats, requests/s per level (model, clients[+stalled calls]), run alternately on the same machine "
            f"(`{REPEATS_DIR.relative_to(REPO)}/`):\n\n" + header + body)


def doc_section(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    config = report["runs"][0]["server_config"]
    server = "default settings" + ("; " + ", ".join(f"`{o}`" for o in s["server_set"]) if s["server_set"] else "")
    before = ""
    if BEFORE_PATH.exists():
        import json

        old = json.loads(BEFORE_PATH.read_text())
        om = old["machine"]
        before = (
            f"Before: the thread-pool server (gRPC's synchronous server, {om['grpcio']}; metadist at {BEFORE_COMMIT}), "
            f"run on {om['date'][:10]} on the same machine with `{BEFORE_COMMAND}`; 1-minute load average "
            f"{om['load_average_before'][0]:.2f} before and {om['load_average_at_end'][0]:.2f} at its end "
            f"(`{BEFORE_PATH.relative_to(REPO)}`). It had no stalled-calls level: there, {STALLED} stalled calls hold "
            f"all {old['runs'][0]['server_config']['max_workers']} handler threads and every other call waits for its "
            "deadline (tests/test_serving_faults.py).\n\n" + table(old["runs"])
        )
    repeats = sorted(REPEATS_DIR.glob("*.json")) if REPEATS_DIR.is_dir() else []
    if repeats:
        before += "\n\n" + repeats_table(repeats)
    return render(
        "serving", command=COMMAND, before=before, date=m["date"][:10], cores=m["cores"], cpu=m["cpu"], python=m["python"],
        torch=m["torch"], grpcio=m["grpcio"], load_before=m["load_average_before"][0],
        load_end=m["load_average_at_end"][0], server=server, max_concurrency=config["max_concurrency"],
        max_workers=config["max_workers"], server_threads=config["threads"] or "torch's default", ways=WAYS,
        shots=SHOTS, queries=QUERIES, alphabet=ALPHABET, warmup_s=s["warmup_s"], seconds=s["seconds"],
        requests=s["requests"], table=table(report["runs"]),
    )


# -- entry point ----------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=["maml", "protonet"], help="checkpoints to train and serve")
    parser.add_argument("--checkpoint", help="serve this checkpoint instead of training throwaway ones")
    parser.add_argument("--clients", type=int, nargs="+", default=list(CONCURRENCY), help="concurrency levels (default 1 4 16)")
    parser.add_argument("--stalled", type=int, default=STALLED, help=f"stalled calls open during the last level (default {STALLED}; 0: no such level)")
    parser.add_argument("--stalled-clients", type=int, default=max(CONCURRENCY), help=f"clients of that level (default {max(CONCURRENCY)})")
    parser.add_argument("--seconds", type=float, default=10.0, help="longest timed phase per level (default 10)")
    parser.add_argument("--requests", type=int, default=5000, help="most timed requests per level (default 5000)")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="untimed requests first, per level (default 1)")
    parser.add_argument("--server-set", action="append", default=[], metavar="KEY=VALUE", help="a ServeConfig setting of the server (repeatable)")
    add_output_arguments(parser, RESULTS_PATH)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import yaml

    from metadist.serving import ServeConfig

    started, load_before = time.perf_counter(), os.getloadavg()
    tasks = omniglot_tasks(TASKS_PER_CLIENT * max([*args.clients, args.stalled_clients]))
    runs = []
    with tempfile.TemporaryDirectory(prefix="metadist-bench-serving-") as tmp:
        models = [("checkpoint", args.checkpoint)] if args.checkpoint else [
            (algorithm, train_checkpoint(algorithm, Path(tmp) / algorithm)) for algorithm in args.algorithms
        ]
        for label, checkpoint in models:
            overrides = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.server_set)}
            config = ServeConfig.model_validate({"checkpoint": checkpoint, **overrides}).redacted()
            server = ServerProcess(checkpoint, args.server_set)
            try:
                levels = []
                plan = [(clients, 0) for clients in args.clients] + ([(args.stalled_clients, args.stalled)] if args.stalled else [])
                for clients, stalled in plan:
                    held = StalledCalls(server.address, stalled) if stalled else None
                    try:
                        level = run_level(server.address, clients, tasks, args, server)
                    finally:
                        if held is not None:
                            held.close()
                    level["stalled"] = stalled
                    levels.append(level)
                    print(f"  {label:<10} {clients:>3} clients, {stalled:>2} stalled: {level['requests_per_s']:7.1f} requests/s, p50 "
                          f"{fmt(level['p50_ms'])} ms, p99 {fmt(level['p99_ms'])} ms ({level['requests']} requests, "
                          f"errors {level['errors'] or 0}, server CPU {level['server_cpu_per_wall']:.2f})", file=sys.stderr, flush=True)
            finally:
                server.stop()
            runs.append({"label": label, "checkpoint": checkpoint if args.checkpoint else None, "server_config": config, "levels": levels})
    report = {
        "command": COMMAND,
        "machine": machine(load_before),
        "settings": {"seconds": args.seconds, "requests": args.requests, "warmup_s": args.warmup_s, "server_set": args.server_set,
                     "stalled": args.stalled, "stalled_clients": args.stalled_clients,
                     "ways": WAYS, "shots": SHOTS, "queries": QUERIES, "tasks_per_client": TASKS_PER_CLIENT},
        "runs": runs,
    }
    report["elapsed_s"] = time.perf_counter() - started
    publish(report, args.results, doc_section(report), DOC_SECTION, args.doc)


if __name__ == "__main__":
    main()
