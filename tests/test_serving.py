"""The gRPC few-shot service on loopback: answers equal `metadist predict`'s; limits, tokens, TLS, deadlines,
handles and concurrency bounds answer with the right status codes, and the server keeps serving after each."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from PIL import Image

from metadist.cli import main
from metadist.errors import ConfigError, ServingError
from metadist.inference import AdaptedTask
from metadist.serving import Client, ServeConfig, Server
from metadist.serving import codegen
from metadist.serving import fewshot_pb2 as pb
from metadist.serving.handles import HandleStore
from metadist.serving.service import SERVICE_NAME, FewShotService, RpcStatus
from tests.helpers import starts, train_tiny_cli
from tests.synthetic import drawing

TOKEN = "test-token-0123456789"
LOOPBACK = "127.0.0.1:0"
CLASSES = ("class_0", "class_1", "class_2")


# -- fixtures: two tiny checkpoints and servers over them -------------------------------------------------------------
def _train(tmp_path, small1_uri, small2_uri, name, *sets) -> str:
    # The CLI tests' tiny job, smaller still: a server test needs a checkpoint, not a trained model.
    return train_tiny_cli(tmp_path, small1_uri, small2_uri, name, "train.meta_batch=2", "train.steps=2",
                      "train.final_eval_episodes=1", *sets)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, small1_uri, small2_uri):
    tmp = tmp_path_factory.mktemp("serving")
    return {
        "protonet": _train(tmp, small1_uri, small2_uri, "proto", "algorithm.name=protonet"),
        "maml": _train(tmp, small1_uri, small2_uri, "maml", "data.episode.ways=3", "data.test_episode.ways=3"),
    }


def _server(checkpoint: str, **settings) -> Server:
    return Server(ServeConfig(checkpoint=checkpoint, address=LOOPBACK, **settings)).start()


@pytest.fixture(scope="module")
@starts("server")
def servers(checkpoints):
    """One server per checkpoint, with a token and small limits (so that exceeding them is cheap)."""
    limits = dict(token=TOKEN, max_support=12, max_queries=12, max_image_mb=0.05, max_image_pixels=300 * 300, max_message_mb=0.25)
    running = {name: _server(uri, **limits) for name, uri in checkpoints.items()}
    yield running
    for server in running.values():
        server.stop(grace_s=0)


@pytest.fixture(scope="module")
def client(servers):
    with Client(servers["protonet"].address, token=TOKEN, timeout_s=10) as c:
        yield c


def _images(count: int = 3, seed: int = 0, size: int = 40) -> list[bytes]:
    return [drawing(seed + 100 * c, size=size) for c in range(count)]


def _support_folder(root: Path, classes: int = 3, shots: int = 2) -> Path:
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for s in range(shots):
            (root / f"class_{c}" / f"{s}.png").write_bytes(drawing(100 * c + s, size=40))
    return root


def _assert_serving(client: Client) -> None:
    """A good call still succeeds: the server survived whatever came before."""
    predictions = client.adapt_and_classify(_images(), CLASSES, _images())
    assert [p.label for p in predictions] == list(CLASSES)


def _refused(call, code: str, *expect: str) -> ServingError:
    with pytest.raises(ServingError) as info:
        call()
    assert info.value.code == code, info.value
    for text in expect:
        assert text in str(info.value), info.value
    return info.value


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def _wait_until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# -- the happy path and equality with `metadist predict` --------------------------------------------------------------
def test_adapt_and_classify_finds_each_query_class(client):
    predictions = client.adapt_and_classify(_images(), CLASSES, _images())
    assert [p.label for p in predictions] == list(CLASSES)
    for p in predictions:
        assert list(p.scores) == list(CLASSES) and sum(p.scores.values()) == pytest.approx(1.0)
    info = client.info()
    assert info["algorithm"] == "protonet" and info["image_size"] == [28, 28] and info["limits"]["max_support"] == 12
    assert client.health() == "SERVING" and client.health(SERVICE_NAME) == "SERVING"


def test_adapt_once_classify_many_matches_one_call(client):
    support, queries = _images(), _images(seed=1)
    task = client.adapt(support, CLASSES)
    assert task.labels == CLASSES and task.expires_in_s > 0 and len(task.handle) >= 24
    assert client.classify(task, queries) == client.adapt_and_classify(support, CLASSES, queries)
    assert client.classify(task.handle, queries[:1])[0].label == client.classify(task, queries[:1])[0].label
    assert client.release(task) is True and client.release(task) is False
    _refused(lambda: client.classify(task, queries), "NOT_FOUND", "Adapt again")


@pytest.mark.parametrize("kind", ["protonet", "maml"])
def test_query_answers_equal_predict(kind, checkpoints, servers, tmp_path, capsys, monkeypatch):
    support = _support_folder(tmp_path / "support", classes=3, shots=2)
    queries = tmp_path / "queries"
    queries.mkdir()
    for i in range(4):
        (queries / f"q{i}.png").write_bytes(drawing(1000 + i, size=52))
    assert main(["predict", "--checkpoint", checkpoints[kind], "--support", str(support), "--query", str(queries)]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    monkeypatch.setenv("METADIST_SERVE_TOKEN", TOKEN)  # the token from the environment, as documented
    assert main(["query", "--address", servers[kind].address, "--support", str(support), "--query", str(queries)]) == 0
    answered = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(answered) == len(expected) == 4
    for got, want in zip(answered, expected):
        assert got["query"] == want["query"] and got["label"] == want["label"]
        assert list(got["scores"]) == list(want["scores"])
        assert all(abs(got["scores"][k] - want["scores"][k]) <= 1e-6 for k in want["scores"])


@pytest.mark.parametrize("kind", ["protonet", "maml"])
def test_concurrent_calls_get_the_answers_of_sequential_ones(kind, servers):
    """Calls computed at the same time (max_concurrency = 2) must not see each other's weights."""
    tasks = [(_images(seed=s), CLASSES, _images(seed=s + 1)) for s in range(6)]
    with Client(servers[kind].address, token=TOKEN) as c, ThreadPoolExecutor(4) as pool:
        expected = [c.adapt_and_classify(*task) for task in tasks]
        for _ in range(3):
            assert list(pool.map(lambda task: c.adapt_and_classify(*task), tasks)) == expected


# -- refusals: the status code, a message naming the fault, and the server serving on ----------------------------------
def test_a_missing_or_wrong_token_is_unauthenticated(servers, client):
    address = servers["protonet"].address
    with Client(address) as anonymous, Client(address, token="not-the-token") as wrong:
        _refused(lambda: anonymous.adapt_and_classify(_images(), CLASSES, _images()), "UNAUTHENTICATED", "needs a token")
        _refused(lambda: wrong.adapt(_images(), CLASSES), "UNAUTHENTICATED", "not valid")
        _refused(wrong.info, "UNAUTHENTICATED")
        assert anonymous.health() == "SERVING"  # probes need no token
    _assert_serving(client)


def test_oversized_requests_are_refused(client):
    too_big_message = [os.urandom(40_000)] * 8  # 320 kB of query "images": beyond max_message_mb = 0.25
    _refused(lambda: client.adapt_and_classify(_images(), CLASSES, too_big_message), "RESOURCE_EXHAUSTED")
    _refused(lambda: client.adapt(_images(13), [f"c{i}" for i in range(13)]), "INVALID_ARGUMENT", "max_support")
    _refused(lambda: client.adapt_and_classify(_images(), CLASSES, _images(13)), "INVALID_ARGUMENT", "max_queries")
    big_file = _images()[:2] + [os.urandom(60_000)]
    _refused(lambda: client.adapt(big_file, CLASSES), "INVALID_ARGUMENT", "support[2]", "max_image_mb")
    many_pixels = _png(400, 400)  # a few hundred bytes that decode to 160,000 pixels
    assert len(many_pixels) < 2_000
    _refused(lambda: client.adapt_and_classify(_images(), CLASSES, [many_pixels]), "INVALID_ARGUMENT", "400×400", "max_image_pixels")
    _assert_serving(client)


@pytest.mark.parametrize("where", ["support", "query", "empty", "label"])
def test_a_malformed_input_is_invalid_argument(client, where, tmp_path):
    support, labels, queries = _images(), list(CLASSES), _images()
    if where == "support":
        path = tmp_path / "broken.png"
        path.write_bytes(b"\x89PNG but not really")
        support[1] = path  # a path: the client reads it and sends its name along
        expect = ("support[1]", "broken.png", "not a readable image")
    elif where == "query":
        queries[2] = b"GIF89a garbage"
        expect = ("queries[2]", "not a readable image")
    elif where == "empty":
        queries[0] = b""
        expect = ("queries[0]", "empty image")
    else:
        labels[0] = ""
        expect = ("support[0]", "empty label")
    _refused(lambda: client.adapt_and_classify(support, labels, queries), "INVALID_ARGUMENT", *expect)
    _assert_serving(client)


def test_classifier_errors_are_invalid_argument(servers, client):
    with Client(servers["maml"].address, token=TOKEN) as maml:  # a 3-way head
        _refused(lambda: maml.adapt(_images(4), ["a", "b", "c", "d"]), "INVALID_ARGUMENT", "trained 3-way")
        _refused(lambda: maml.adapt(_images(2), ["a", "a"]), "INVALID_ARGUMENT", "at least 2 classes")
        assert len(maml.adapt_and_classify(_images(), CLASSES, _images())) == 3
    _assert_serving(client)


@pytest.mark.server
def test_an_expired_or_unknown_handle_is_not_found(checkpoints):
    server = _server(checkpoints["protonet"], handle_ttl_s=0.3)
    now = [0.0]
    server.service.handles.clock = lambda: now[0]  # time passes when the test says so
    try:
        with Client(server.address) as c:
            task = c.adapt(_images(), CLASSES)
            now[0] += 0.2
            c.classify(task, _images())  # renews the handle
            now[0] += 0.2
            c.classify(task, _images())  # 0.4 s after Adapt, 0.2 s after its last use: still there
            now[0] += 0.31
            _refused(lambda: c.classify(task, _images()), "NOT_FOUND", "expire 0.3 s after their last use")
            _refused(lambda: c.classify("no-such-handle", _images()), "NOT_FOUND")
            _refused(lambda: c.classify("", _images()), "INVALID_ARGUMENT", "handle")
            _assert_serving(c)
    finally:
        server.stop(grace_s=0)


# -- TLS ------------------------------------------------------------------------------------------------------------
def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key: with the cryptography package, else the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip(reason="making a test certificate needs the cryptography package or the openssl command; neither is here")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=metadist test",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metadist test")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert, key


@pytest.mark.server
def test_tls_and_mutual_tls_with_a_self_signed_certificate(checkpoints, tmp_path):
    cert, key = _self_signed(tmp_path)
    server = _server(checkpoints["protonet"], tls_cert=str(cert), tls_key=str(key), token=TOKEN)
    try:
        with Client(server.address, token=TOKEN, tls_ca=cert) as c:
            _assert_serving(c)
            assert c.health() == "SERVING"
        with Client(server.address, token=TOKEN, timeout_s=2) as plaintext:  # no TLS: the handshake fails
            _refused(plaintext.info, "UNAVAILABLE")
    finally:
        server.stop(grace_s=0)
    mutual = _server(checkpoints["protonet"], tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(cert))
    try:  # mutual TLS: the client shows a certificate the CA signed (here the same self-signed one)
        with Client(mutual.address, tls_ca=cert, tls_cert=cert, tls_key=key) as c:
            _assert_serving(c)
        with Client(mutual.address, tls_ca=cert, timeout_s=2) as anonymous:
            _refused(anonymous.info, "UNAVAILABLE")
    finally:
        mutual.stop(grace_s=0)


# -- deadlines and concurrency --------------------------------------------------------------------------------------
@pytest.mark.server
def test_a_call_waiting_past_its_deadline_is_not_computed(checkpoints):
    server = _server(checkpoints["protonet"], max_concurrency=1)
    service = server.service
    try:
        with Client(server.address, timeout_s=0.3) as hurried, Client(server.address) as c:
            held = service.compute_slots.acquire(1)  # the one compute slot is busy
            try:
                computed = service.stats.computations
                _refused(lambda: hurried.adapt_and_classify(_images(), CLASSES, _images()), "DEADLINE_EXCEEDED")
                _wait_until(lambda: service.stats.calls["AdaptAndClassify", "DEADLINE_EXCEEDED"] == 1)
                assert service.stats.computations == computed  # the server gave up without computing
            finally:
                service.compute_slots.release(held)
            _assert_serving(c)
    finally:
        server.stop(grace_s=0)


class _ExpiredContext:
    """A servicer context whose deadline has passed, as when a call waited in gRPC's queue for too long."""

    def time_remaining(self) -> float:
        return 0.0

    def is_active(self) -> bool:
        return True

    def peer(self) -> str:
        return "test"

    def abort(self, code, message):
        raise RpcStatus(code, message)


def test_a_call_whose_deadline_passed_before_it_ran_computes_nothing(servers):
    service: FewShotService = servers["protonet"].service
    computed = service.stats.computations
    request = pb.AdaptAndClassifyRequest(
        support=[pb.SupportExample(image=pb.Image(data=image), label=label) for image, label in zip(_images(), CLASSES)],
        queries=[pb.Image(data=image) for image in _images()],
    )
    with pytest.raises(RpcStatus) as info:
        service.AdaptAndClassify(request, _ExpiredContext())
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert service.stats.computations == computed


@pytest.mark.server
def test_concurrency_is_bounded(checkpoints):
    server = _server(checkpoints["protonet"], max_concurrency=1, max_workers=4, max_concurrent_rpcs=2, queue_timeout_s=0.3)
    service = server.service
    try:
        with Client(server.address, timeout_s=None) as c:
            held = service.compute_slots.acquire(1)
            try:  # no deadline: the call waits queue_timeout_s for the slot, then the server says it is busy
                _refused(lambda: c.adapt_and_classify(_images(), CLASSES, _images()), "RESOURCE_EXHAUSTED", "server busy")
            finally:
                service.compute_slots.release(held)
        slow = _server(checkpoints["protonet"], max_concurrency=1, max_workers=4, max_concurrent_rpcs=2, queue_timeout_s=10)
        try:
            with Client(slow.address, timeout_s=10) as c, ThreadPoolExecutor(2) as pool:
                held = slow.service.compute_slots.acquire(1)
                try:
                    waiting = [pool.submit(c.adapt_and_classify, _images(), CLASSES, _images()) for _ in range(2)]
                    _wait_until(lambda: slow.service.stats.waiting == 2)
                    # max_concurrent_rpcs = 2 calls are in progress: a third is refused at once
                    _refused(c.info, "RESOURCE_EXHAUSTED", "Concurrent RPC limit")
                finally:
                    slow.service.compute_slots.release(held)
                assert [[p.label for p in f.result(timeout=10)] for f in waiting] == [list(CLASSES)] * 2
                _assert_serving(c)
        finally:
            slow.stop(grace_s=0)
    finally:
        server.stop(grace_s=0)


# -- handles ----------------------------------------------------------------------------------------------------------
def _task(size_floats: int) -> AdaptedTask:
    import torch

    return AdaptedTask(("a", "b"), {"w": torch.zeros(1, size_floats)}, 2)


def test_handle_store_evicts_least_recently_used_and_expires_unused():
    now = [0.0]
    store = HandleStore(ttl_s=10, max_handles=2, max_bytes=1000, clock=lambda: now[0])
    first, second = store.put(_task(10)), store.put(_task(10))
    store.get(first)  # first is now the more recently used
    third = store.put(_task(10))  # over max_handles: second goes
    assert len(store) == 2 and store.evicted == 1
    with pytest.raises(KeyError):
        store.get(second)
    store.put(_task(250))  # 1000 bytes: first goes for the count, third for the bytes
    assert len(store) == 1 and store.bytes == 1000
    with pytest.raises(KeyError):
        store.get(first)
    now[0] = 11.0
    assert len(store) == 0 and store.bytes == 0
    with pytest.raises(MemoryError):
        store.put(_task(300))
    assert third != first and len({first, second, third}) == 3


# -- configuration, the token's secrecy, the commands and the generated code -------------------------------------------
@pytest.mark.parametrize(
    "settings, expect",
    [
        ({"address": "50051"}, "host:port"),
        ({"tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
        ({"token": "a", "token_file": "f"}, "not both"),
        ({"max_concurrency": 8, "max_workers": 4}, "max_concurrency"),
        ({"max_queue": 3}, "Extra inputs"),
    ],
)
def test_serve_config_names_what_is_wrong(settings, expect):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=expect):
        ServeConfig(checkpoint="x", **settings)


@pytest.mark.server
def test_token_sources_and_secrecy(checkpoints, tmp_path, caplog, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("  from-a-file-123\n")
    assert ServeConfig(checkpoint="x", token_file=str(token_file)).resolve_token() == "from-a-file-123"
    monkeypatch.setenv("METADIST_SERVE_TOKEN", "from-the-env-456")
    assert ServeConfig(checkpoint="x").resolve_token() == "from-the-env-456"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        ServeConfig(checkpoint="x", token_file=str(tmp_path / "empty")).resolve_token()
    with caplog.at_level(logging.DEBUG):
        server = _server(checkpoints["protonet"], token=TOKEN)
        with Client(server.address, token="wrong-guess-789") as c:
            _refused(c.info, "UNAUTHENTICATED")
        server.stop(grace_s=0)
    assert "token required" in caplog.text and "<redacted>" in caplog.text
    for secret in (TOKEN, "wrong-guess-789", "from-the-env-456"):
        assert secret not in caplog.text
    assert TOKEN not in repr(ServeConfig(checkpoint="x", token=TOKEN))


def test_serve_refuses_a_busy_port_and_a_missing_checkpoint(checkpoints, servers, tmp_path, capsys):
    with pytest.raises(ConfigError, match="cannot listen"):
        Server(ServeConfig(checkpoint=checkpoints["protonet"], address=servers["protonet"].address)).start()
    assert main(["serve", "--address", LOOPBACK]) == 2
    assert "--checkpoint: required" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(tmp_path / "nothing"), "--address", LOOPBACK]) == 2
    assert "nothing" in capsys.readouterr().err


@pytest.mark.server
def test_the_serve_command_serves_until_terminated(checkpoints, tmp_path, capsys):
    """`metadist serve` in a process of its own: it reports its port, answers `metadist query`, stops on SIGTERM."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    command = [sys.executable, "-c", "import sys; from metadist.cli import main; sys.exit(main())", "serve",
               "--checkpoint", checkpoints["protonet"], "--address", LOOPBACK, "--token-file", str(tmp_path / "token"),
               "--set", "threads=1"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1]) as process:
        try:
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
            reader.start()
            _wait_until(lambda: any("listening on" in line for line in lines) or process.poll() is not None, timeout_s=60)
            assert process.poll() is None, "".join(lines)
            address = next(line for line in lines if "listening on" in line).rsplit(" ", 1)[-1].strip()
            support = _support_folder(tmp_path / "support", shots=1)
            query = ["query", "--address", address, "--support", str(support), "--query", str(support / "class_1")]
            assert main([*query, "--token-file", str(tmp_path / "token")]) == 0
            assert json.loads(capsys.readouterr().out)["label"] == "class_1"
            assert main(query) == 2
            assert "UNAUTHENTICATED" in capsys.readouterr().err
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
            reader.join(timeout=5)
            assert TOKEN not in "".join(lines)
        finally:
            if process.poll() is None:
                process.kill()


def test_generated_code_is_what_grpcio_tools_makes_of_the_proto(tmp_path):
    written = codegen.generate(tmp_path)
    package = Path(codegen.__file__).parent
    assert [p.name for p in written] == list(codegen.GENERATED)
    for path in written:
        assert path.read_bytes() == (package / path.name).read_bytes(), (
            f"{path.name} differs from what {codegen.PROTO} generates: run `python -m metadist.serving.codegen`"
        )
