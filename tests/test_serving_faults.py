"""Denial of service and hangs: calls that never send their request, floods of refused calls, images too large to
decode. Each test says what a client can no longer do to the server, and that the server answers on within a second.

Timings are bounds on loopback (a call that hangs would take its whole deadline), not measurements: the serving
figures are bench/serving.py's.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from metadist.cli import main
from metadist.serving import Client, ServeConfig, Server
from metadist.serving.server import RefusalLog
from metadist.serving.service import SERVICE_NAME
from tests.helpers import train_tiny_cli
from tests.synthetic import drawing

TOKEN = "test-token-0123456789"
LOOPBACK = "127.0.0.1:0"
CLASSES = ("class_0", "class_1", "class_2")
METHOD = f"/{SERVICE_NAME}/AdaptAndClassify"
ANSWER_WITHIN_S = 1.0  # the bound: a stalled or flooded server still answers health and real calls this fast
STALLED_STREAMS = 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small1_uri, small2_uri) -> str:
    tmp = tmp_path_factory.mktemp("serving-faults")
    return train_tiny_cli(tmp, small1_uri, small2_uri, "proto", "algorithm.name=protonet", "train.meta_batch=2",
                          "train.steps=2", "train.final_eval_episodes=1")


def _images(count: int = 3, seed: int = 0) -> list[bytes]:
    return [drawing(seed + 100 * c, size=40) for c in range(count)]


def _timed(call):
    begin = time.perf_counter()
    result = call()
    return result, time.perf_counter() - begin


class StalledStreams:
    """`count` calls, each on a connection of its own, that send their metadata and never their request message.

    A request-streaming call whose iterator blocks: gRPC sends the headers at once, then waits for the iterator (on
    the wire, a unary call is the same stream). close() cancels them.
    """

    def __init__(self, address: str, count: int, token: str | None = None) -> None:
        self._release = threading.Event()
        self._channels = [grpc.insecure_channel(address) for _ in range(count)]
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.calls = []
        for channel in self._channels:
            grpc.channel_ready_future(channel).result(timeout=10)
            stalled = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)
            self.calls.append(stalled.future(self._never(), metadata=metadata, timeout=60))

    def _never(self):
        self._release.wait()
        return
        yield b""  # a generator that ends, without a message, once released

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        self._release.set()
        for channel in self._channels:
            channel.close()


# -- calls that never send their request ------------------------------------------------------------------------------
@pytest.mark.server
def test_stalled_streams_hold_no_thread_health_and_a_real_call_answer(checkpoint):
    """16 authenticated calls stalled before their request, on a server of 4 worker threads: health and a real call
    answer within a second (a thread per stalled call would leave none, and both would wait for their deadline)."""
    server = Server(ServeConfig(checkpoint=checkpoint, address=LOOPBACK, token=TOKEN, max_workers=4)).start()
    try:
        with Client(server.address, token=TOKEN, timeout_s=10) as client:
            client.adapt_and_classify(_images(), CLASSES, _images())  # warm: the first call builds what later ones reuse
            stalled = StalledStreams(server.address, STALLED_STREAMS, token=TOKEN)
            try:
                time.sleep(0.5)  # the stalled calls' headers reach the server
                assert not any(call.done() for call in stalled.calls), "a stalled call ended on its own"
                status, health_s = _timed(client.health)
                predictions, call_s = _timed(lambda: client.adapt_and_classify(_images(), CLASSES, _images()))
                info, info_s = _timed(client.info)
            finally:
                stalled.close()
        assert status == "SERVING" and health_s < ANSWER_WITHIN_S, f"health took {health_s:.2f} s"
        assert [p.label for p in predictions] == list(CLASSES) and call_s < ANSWER_WITHIN_S, f"the call took {call_s:.2f} s"
        assert info["algorithm"] == "protonet" and info_s < ANSWER_WITHIN_S, f"Info took {info_s:.2f} s"
    finally:
        server.stop(grace_s=0)


@pytest.mark.server
def test_an_unauthenticated_call_is_refused_before_its_request_arrives(checkpoint):
    """The token is checked on the call's metadata: a call that never sends its request is refused all the same."""
    server = Server(ServeConfig(checkpoint=checkpoint, address=LOOPBACK, token=TOKEN)).start()
    try:
        stalled = StalledStreams(server.address, 4)  # no token
        try:
            for call in stalled.calls:
                error = call.exception(timeout=10)
                assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED, error
                assert "needs a token" in error.details()
        finally:
            stalled.close()
    finally:
        server.stop(grace_s=0)


@pytest.mark.server
def test_health_answers_while_every_worker_thread_waits(checkpoint):
    """The compute slot held and both worker threads waiting for it: health (on the event loop) answers at once."""
    server = Server(ServeConfig(checkpoint=checkpoint, address=LOOPBACK, max_concurrency=1, max_workers=2)).start()
    service = server.service
    try:
        with Client(server.address, timeout_s=30) as client, ThreadPoolExecutor(2) as pool:
            held = service.compute_slots.acquire(1)
            try:
                waiting = [pool.submit(client.adapt_and_classify, _images(), CLASSES, _images()) for _ in range(2)]
                deadline = time.monotonic() + 10
                while service.stats.waiting < 2:
                    assert time.monotonic() < deadline, "the calls never reached their worker threads"
                    time.sleep(0.01)
                status, health_s = _timed(client.health)
                assert status == "SERVING" and health_s < ANSWER_WITHIN_S, f"health took {health_s:.2f} s"
            finally:
                service.compute_slots.release(held)
            assert all(len(f.result(timeout=30)) == 3 for f in waiting)
    finally:
        server.stop(grace_s=0)


# -- floods of refused calls -----------------------------------------------------------------------------------------
FLOOD_CALLS, FLOOD_ROUNDS, FLOOD_MB = 60, 4, 31
FLOOD_GROWTH_MB = 80  # bound on the server's resident memory growth; buffered, one round's requests are 1,860 MB
# Bound on the growth over the last round: the heap settles at the size a round needs (the server keeps freed memory
# for reuse, metadist.runtime) instead of growing round after round.
FLOOD_ROUND_GROWTH_MB = 25
FLOOD_SETTLE_S = 2.0  # after a round, before its memory is read


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


@pytest.mark.server
def test_a_flood_of_large_unauthenticated_requests_leaves_memory_bounded_and_the_log_short(checkpoint, tmp_path):
    """60 concurrent unauthenticated 31 MB requests, 3 rounds, against `metadist serve` in its own process: every
    call is UNAUTHENTICATED, the server's memory grows by less than FLOOD_GROWTH_MB (it reads none of them), its log
    has a line for the first refusal rather than 180, and health and a real call answer within a second after."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    command = [sys.executable, "-c", "import sys; from metadist.cli import main; sys.exit(main())", "serve",
               "--checkpoint", checkpoint, "--address", LOOPBACK, "--token-file", str(tmp_path / "token"), "--set", "threads=1"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1]) as process:
        try:
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
            reader.start()
            deadline = time.monotonic() + 60
            while not any("listening on" in line for line in lines):
                assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
                time.sleep(0.05)
            address = re.search(r"listening on (\S+)", "".join(lines)).group(1)
            with Client(address, token=TOKEN, timeout_s=10) as client:
                client.adapt_and_classify(_images(), CLASSES, _images())  # warm, so that the baseline includes the model's work
            baseline_mb = _rss_mb(process.pid)
            payload = os.urandom(FLOOD_MB * 2**20)  # the server never parses it: bytes, sent as they are
            rounds_mb, codes = [], {}  # the server's resident memory after each round
            with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 2**20)]) as channel:
                call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
                for _ in range(FLOOD_ROUNDS):
                    futures = [call.future(payload, timeout=60) for _ in range(FLOOD_CALLS)]
                    for future in futures:
                        code = future.exception(timeout=120).code().name
                        codes[code] = codes.get(code, 0) + 1
                    # The refusals reach the client before the server has dropped what it received on those streams
                    # (up to a flow-control window each); on a loaded machine that takes a moment.
                    time.sleep(FLOOD_SETTLE_S)
                    rounds_mb.append(_rss_mb(process.pid))
            growth = f"server memory {baseline_mb:.0f} MB, then after each round {', '.join(f'{mb:.0f}' for mb in rounds_mb)} MB"
            assert codes == {"UNAUTHENTICATED": FLOOD_CALLS * FLOOD_ROUNDS}, codes
            assert max(rounds_mb) - baseline_mb < FLOOD_GROWTH_MB, growth
            assert rounds_mb[-1] - rounds_mb[-2] < FLOOD_ROUND_GROWTH_MB, growth  # it does not grow round after round
            with Client(address, token=TOKEN, timeout_s=10) as client:
                status, health_s = _timed(client.health)
                predictions, call_s = _timed(lambda: client.adapt_and_classify(_images(), CLASSES, _images()))
            assert status == "SERVING" and health_s < ANSWER_WITHIN_S, f"health took {health_s:.2f} s"
            assert len(predictions) == 3 and call_s < ANSWER_WITHIN_S, f"the call took {call_s:.2f} s"
        finally:
            process.terminate()
            process.wait(timeout=30)
            reader.join(timeout=5)
    refused = [line for line in lines if "refused" in line]
    # One line for the first refusal; one more if the flood outlasted refusal_log_interval_s; one at shutdown.
    assert 1 <= len(refused) <= 1 + FLOOD_ROUNDS, "".join(refused)
    assert "no token" in refused[0] and TOKEN not in "".join(lines)


def test_refused_calls_log_one_line_per_interval_with_a_count(caplog):
    now = [0.0]
    log = RefusalLog(interval_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="metadist.serving.server"):
        for _ in range(100):
            log.refused("/m/Adapt", "no token")
        now[0] = 10.0
        log.refused("/m/Adapt", "wrong token")
        log.refused("/m/Adapt", "wrong token")
        log.flush()
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "refused /m/Adapt: no token",
        "refused /m/Adapt: wrong token (99 more refused calls in the last 10 s were not logged)",
        "1 more refused calls were not logged",
    ]


# -- images too large to decode: `metadist predict` and the server share the limit --------------------------------------
def _png_header_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of width × height white pixels: kilobytes on disk, width × height bytes decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter type 0, then the row's bits
    packer = zlib.compressobj(9)
    rows = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


# metadist.data.images ignores Pillow's warning process-wide; pytest restores the filters for each test.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side, expect", [(12_000, "12000×12000 pixels"), (20_000, "too many pixels")])
def test_predict_refuses_a_huge_image_in_one_line_naming_the_file(checkpoint, tmp_path, capsys, side, expect):
    """12000×12000 (beyond max_image_pixels: about 1 GB decoded as RGB) and a 20000×20000 decompression bomb (beyond
    Pillow's own guard): one line naming the file, nothing decoded, nothing written."""
    support = tmp_path / "support"
    for c in range(3):
        (support / f"class_{c}").mkdir(parents=True)
        (support / f"class_{c}" / "0.png").write_bytes(drawing(100 * c, size=40))
    huge = tmp_path / "queries" / "huge.png"
    huge.parent.mkdir()
    huge.write_bytes(_png_header_bomb(side, side))
    assert huge.stat().st_size < 2**20
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["predict", "--checkpoint", checkpoint, "--support", str(support), "--query", str(huge.parent)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert str(huge) in err and expect in err and "max_image_pixels" in err and "Traceback" not in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no folder or file left behind


def test_a_failed_import_leaves_no_empty_output_folder(tmp_path, capsys):
    """A decompression bomb among the images of `metadist data import folder`: one line naming it, no --out folder."""
    root = tmp_path / "images"
    for c in range(2):
        (root / f"class_{c}").mkdir(parents=True)
        (root / f"class_{c}" / "0.png").write_bytes(drawing(100 * c, size=40))
    bomb = root / "class_1" / "bomb.png"
    bomb.write_bytes(_png_header_bomb(20_000, 20_000))
    out = tmp_path / "shards" / "images"
    assert main(["data", "import", "folder", str(root), "--out", str(out), "--image-size", "28", "--mode", "L"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("metadist: error:")]
    assert len(errors) == 1 and "bomb.png" in errors[0] and "max_image_pixels" in errors[0] and "Traceback" not in err, err
    assert not out.exists() and not out.parent.exists()
