"""The loopback check of tests/browser.py: what Chromium's NetLog counts as traffic beyond loopback, and what not.

A request that Chromium sent to the refusing proxy (a loopback port bound but never listening: the only route off
loopback it has) never had a socket beyond 127.0.0.1, so it is no traffic; anything else for a host beyond loopback
is: an answered request, one that failed some other way or whose end the log lacks, a TCP connection attempt or a
UDP send to a non-loopback address. Checked on hand-made NetLogs, then on a real Chromium: once with the refusing
proxy, and once with a loopback proxy that answers, standing in for a route that does leave the machine.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.browser import NetworkActivity, chrome_flags, headless_chrome, read_net_log
from tests.helpers import starts

ERR_PROXY_CONNECTION_FAILED = -130
ERR_NAME_NOT_RESOLVED = -105
BEGIN, END, NONE = 1, 2, 0
UPDATER = "https://update.googleapis.com/service/update2/json?cup2key=1"
PIXEL = "http://example.com/pixel.png"  # never fetched from example.com: refused, or answered by the proxy below
PIXEL_PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGP6DwABBQECz6AuzQAAAABJRU5ErkJggg==")


# -- hand-made NetLogs -----------------------------------------------------------------------------------------------
class NetLog:
    """Events written as Chromium writes them: numbered event types, and the net errors in the constants."""

    TYPES = ("URL_REQUEST_START_JOB", "TCP_CONNECT_ATTEMPT", "UDP_CONNECT", "UDP_BYTES_SENT", "REQUEST_ALIVE")

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._next_source = 0

    def source(self) -> int:
        self._next_source += 1
        return self._next_source

    def event(self, name: str, source: int, phase: int, params: dict | None = None) -> None:
        event = {"type": self.TYPES.index(name), "phase": phase, "source": {"id": source, "type": 1}, "time": "0"}
        if params is not None:
            event["params"] = params
        self.events.append(event)

    def request(self, url: str, net_error: int | None, *, ended: bool = True) -> None:
        """A URL request of one job; `net_error` None: it was answered."""
        source = self.source()
        self.event("URL_REQUEST_START_JOB", source, BEGIN, {"url": url, "method": "GET"})
        if ended:
            self.event("URL_REQUEST_START_JOB", source, END, None if net_error is None else {"net_error": net_error})

    def constants(self) -> dict:
        return {"logEventTypes": {name: number for number, name in enumerate(self.TYPES)},
                "netError": {"ERR_PROXY_CONNECTION_FAILED": ERR_PROXY_CONNECTION_FAILED,
                             "ERR_NAME_NOT_RESOLVED": ERR_NAME_NOT_RESOLVED}}  # fmt: skip

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps({"constants": self.constants(), "events": self.events}))
        return path

    def write_cut_short(self, path: Path) -> Path:
        """As Chromium writes a NetLog while it runs (one event a line), killed in the middle of a last event."""
        head = f'{{"constants": {json.dumps(self.constants())},\n"events": [\n'
        path.write_text(head + "".join(json.dumps(e) + ",\n" for e in self.events) + '{"type": 0, "pha')
        return path


def test_a_request_refused_at_the_proxy_is_no_traffic_but_is_recorded(tmp_path):
    log = NetLog()
    log.request("http://127.0.0.1:5000/ajax-api/2.0/mlflow/runs/get", None)
    log.request(UPDATER, ERR_PROXY_CONNECTION_FAILED)
    activity = read_net_log(log.write(tmp_path / "netlog.json"))
    assert activity.urls == ("http://127.0.0.1:5000/ajax-api/2.0/mlflow/runs/get", UPDATER)
    assert activity.proxy_refused == (UPDATER,)
    assert activity.off_loopback() == []


@pytest.mark.parametrize("net_error", [None, ERR_NAME_NOT_RESOLVED], ids=["answered", "failed-otherwise"])
def test_a_request_beyond_loopback_that_was_not_refused_at_the_proxy_counts(tmp_path, net_error):
    log = NetLog()
    log.request(UPDATER, net_error)
    activity = read_net_log(log.write(tmp_path / "netlog.json"))
    assert activity.proxy_refused == ()
    assert activity.off_loopback() == [f"request {UPDATER}"]


def test_a_request_whose_end_the_log_lacks_counts(tmp_path):
    log = NetLog()
    log.request(UPDATER, None, ended=False)
    assert read_net_log(log.write(tmp_path / "netlog.json")).off_loopback() == [f"request {UPDATER}"]


def test_a_refusal_excuses_only_its_own_request(tmp_path):
    log = NetLog()
    log.request(UPDATER, ERR_PROXY_CONNECTION_FAILED)
    log.request(UPDATER, None)  # the same URL again, answered this time
    assert read_net_log(log.write(tmp_path / "netlog.json")).off_loopback() == [f"request {UPDATER}"]


def test_connections_beyond_loopback_count_whatever_their_outcome(tmp_path):
    log = NetLog()
    log.event("TCP_CONNECT_ATTEMPT", log.source(), BEGIN, {"address": "127.0.0.1:41234"})
    log.event("TCP_CONNECT_ATTEMPT", log.source(), BEGIN, {"address": "93.184.216.34:443"})
    probe, dns = log.source(), log.source()
    log.event("UDP_CONNECT", probe, BEGIN, {"address": "[2001:4860:4860::8888]:53"})  # a route asked for, nothing sent
    log.event("UDP_CONNECT", dns, BEGIN, {"address": "8.8.8.8:53"})
    log.event("UDP_BYTES_SENT", dns, NONE, {"byte_count": 32})
    assert read_net_log(log.write(tmp_path / "netlog.json")).off_loopback() == ["tcp 93.184.216.34:443", "udp 8.8.8.8:53"]


def test_a_net_log_cut_short_is_read_up_to_its_last_whole_event(tmp_path):
    log = NetLog()
    log.request(UPDATER, ERR_PROXY_CONNECTION_FAILED)
    log.request(PIXEL, None)
    activity = read_net_log(log.write_cut_short(tmp_path / "netlog.json"))
    assert activity.proxy_refused == (UPDATER,) and activity.off_loopback() == [f"request {PIXEL}"]


def test_off_loopback_of_an_activity_without_refusals_is_every_request_beyond_loopback():
    activity = NetworkActivity(urls=("data:text/html,x", "http://127.0.0.1:1/", PIXEL), tcp_connects=(), udp_sends=())
    assert activity.off_loopback() == [f"request {PIXEL}"]


def test_the_flags_send_the_component_updater_and_everything_else_to_the_dead_port(tmp_path):
    flags = chrome_flags(tmp_path / "profile", tmp_path / "netlog.json", 4321)
    dead = "http://127.0.0.1:4321"
    assert f"--proxy-server={dead}" in flags and "--proxy-bypass-list=127.0.0.1" in flags
    assert "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1" in flags
    # Chromium 156 runs on-demand component updates despite --disable-component-update: their server is loopback.
    assert "--disable-component-update" in flags
    assert f"--component-updater=url-source={dead}/service/update2/json" in flags
    assert f"--gaia-url={dead}" in flags


# -- a real Chromium -------------------------------------------------------------------------------------------------
def _page_with_a_picture_from_beyond_loopback() -> str:
    return "data:text/html," + urllib.parse.quote(f'<p>ready</p><img src="{PIXEL}">')


@pytest.mark.browser
def test_chromium_sends_what_is_beyond_loopback_to_the_refusing_proxy(chrome):
    with headless_chrome(chrome) as browser:
        browser.load(_page_with_a_picture_from_beyond_loopback(), expect=["ready"])
    assert PIXEL in browser.requested_urls  # the page asked for it
    activity = browser.network
    assert activity is not None, "Chromium wrote no NetLog"
    assert PIXEL in activity.proxy_refused
    assert activity.off_loopback() == []
    # The component updater (which Chromium 156 runs on demand at start) is pointed at the dead port, not Google.
    assert not [url for url in activity.urls if "googleapis.com" in url], activity.urls


class _AnsweringProxy(BaseHTTPRequestHandler):
    """An HTTP proxy that answers every request itself with a one-pixel PNG, recording the URLs it was asked for."""

    def do_GET(self):  # noqa: N802  (http.server's name)
        self.server.asked.append(self.path)  # a proxy is asked for the absolute URL
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PIXEL_PNG)))
        self.end_headers()
        self.wfile.write(PIXEL_PNG)

    def log_message(self, format, *args):  # keep the test output clean
        pass


@pytest.fixture
@starts("server")
def answering_proxy():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AnsweringProxy)
    server.daemon_threads = True
    server.asked = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.browser
def test_a_request_that_got_through_a_proxy_counts(chrome, answering_proxy, request):
    """The connection is to loopback (the proxy), but the request is for a host beyond it and was answered: had the
    proxy been a real one, it would have left the machine. The check must say so."""
    assert request.node.get_closest_marker("server"), "conftest.py gives the markers of a test's fixtures to the test"
    proxy = f"--proxy-server=http://127.0.0.1:{answering_proxy.server_address[1]}"
    with headless_chrome(chrome, extra_flags=[proxy]) as browser:
        browser.load(_page_with_a_picture_from_beyond_loopback(), expect=["ready"])
        loaded = browser.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth)")
    assert PIXEL in answering_proxy.asked and loaded == [1]
    activity = browser.network
    assert activity is not None, "Chromium wrote no NetLog"
    assert PIXEL not in activity.proxy_refused
    assert f"request {PIXEL}" in activity.off_loopback()
