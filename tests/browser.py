"""Headless Chromium for tests: load a page, wait for a single-page app to render its data, read it, screenshot it.

    from tests.browser import find_chrome, headless_chrome

    with headless_chrome() as browser:              # find_chrome() is None when no Chromium is installed
        text = browser.load("http://127.0.0.1:5000/#/experiments", expect=["my-experiment"])
        png = browser.screenshot()
        browser.requested_urls                      # every URL the tab and its workers asked for (DevTools)
    browser.network.off_loopback()                  # after exit: all Chromium did on the network (NetLog); [] here

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages, each ended
by a NUL byte, that it reads on its fd 3 and writes on its fd 4), so no port is opened and no websocket client is
needed. An app that fetches its data by XHR renders when the data arrives: `load` polls the page's text until
every expected string is there and the page's requests have gone quiet, however slow the machine, and says what
was missing when it gives up. (`--dump-dom --virtual-time-budget=N` renders MLflow's pages too, but costs a
Chromium start per page and per output, DOM or screenshot, and cannot say what it waited for.)

Loopback only. Google's background services (component updates, safe browsing, field trials, sync, search
preconnects) are switched off by flag, and the Google endpoints that no flag switches off (the account check of
a fresh profile, GCM check-in, the search page, and the component updater's server, which Chromium 156 still asks
on demand for its on-device model manifest despite --disable-component-update) are pointed at loopback; every
host name but 127.0.0.1 resolves to nothing; and whatever is left off loopback goes to a proxy on a loopback port
that is bound but never listens, so it is refused on the spot. Two records let tests check it: `requested_urls`
(the tab and its workers, live) and `network`, read from Chromium's NetLog at exit: every request, TCP connection
and UDP send of every process, and which requests for a host beyond loopback were refused at that proxy.
`network.off_loopback()` lists what could have carried anything beyond loopback: a TCP connection attempt or a
UDP send to a non-loopback address, or a request for a non-loopback host that did not end refused at the proxy
(an answered one, or one that failed any other way, or whose end the log lacks). A refused one (`proxy_refused`)
never had a socket beyond 127.0.0.1 — its only route off loopback was the proxy, and it could not connect to it —
so it is not counted: it names a background service the flags missed, not traffic. Besides those, the only
non-loopback entries a NetLog shows are UDP connects without a single byte sent: Chromium's IPv6 reachability
probe, which asks the kernel for a route and sends nothing.

Chromium runs in its own process group with a private profile in a temporary folder; the group is killed on exit.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

CHROME_ENV = "CHROME"  # an explicit browser binary wins over the search
CHROME_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
COMMAND_TIMEOUT_S = 30.0  # one DevTools command (a screenshot takes ~0.3 s on a busy 2-core box)
LOAD_TIMEOUT_S = 30.0  # a page's expected text; MLflow's UI shows a run in ~2-4 s on a busy 2-core box
QUIET_S = 0.5  # no request in flight for this long: the app has its data
POLL_S = 0.2
STOP_TIMEOUT_S = 5.0  # a clean exit, which completes the NetLog
WIDTH, HEIGHT = 1440, 900
_PHASE_END = 2  # a NetLog event's phase: 0 none, 1 begin, 2 end
_ERR_PROXY_CONNECTION_FAILED = -130  # net/base/net_error_list.h; a NetLog's own constants say it too

# Features that phone home, or start work nobody asked for, in a fresh profile.
_DISABLED_FEATURES = (
    "OptimizationHints", "OptimizationGuideModelDownloading", "MediaRouter", "DialMediaRouteProvider", "Translate",
    "AutofillServerCommunication", "CertificateTransparencyComponentUpdater", "InterestFeedContentSuggestions",
    "PrivacySandboxSettings4", "NetworkTimeServiceQuerying", "SafeBrowsingBetterTelemetryOptIn",
    "SegmentationPlatform", "AcceptCHFrame", "SpareRendererForSitePerProcess", "PreconnectToSearch",
)  # fmt: skip
# Google endpoints with a URL switch but no off switch: the account check every regular profile makes at start
# (accounts.google.com/ListAccounts), GCM check-in and registration, and the search page's base URL.
_GOOGLE_URL_SWITCHES = ("gaia-url", "google-base-url", "gcm-checkin-url", "gcm-mcs-endpoint", "gcm-registration-url")


def find_chrome() -> str | None:
    """The Chromium (or Chrome) binary: $CHROME, else the first of CHROME_NAMES on PATH; None when there is none."""
    explicit = os.environ.get(CHROME_ENV)
    if explicit:
        return shutil.which(explicit)
    for name in CHROME_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chrome_flags(user_data_dir: Path, net_log: Path, dead_port: int) -> list[str]:
    """Headless, quiet, loopback-only flags for a throwaway profile; `dead_port` refuses every connection."""
    dead_url = f"http://127.0.0.1:{dead_port}"
    flags = [
        "--headless",
        "--remote-debugging-pipe",
        f"--user-data-dir={user_data_dir}",
        f"--window-size={WIDTH},{HEIGHT}",
        "--hide-scrollbars", "--mute-audio", "--disable-gpu", "--disable-dev-shm-usage",
        f"--log-net-log={net_log}", "--net-log-capture-mode=Default",  # Default: no cookies, no bytes
        # Nothing beyond loopback: no names resolve but 127.0.0.1, and everything else (IP literals included) is
        # sent to a proxy that refuses the connection. Loopback itself bypasses the proxy.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--proxy-server={dead_url}", "--proxy-bypass-list=127.0.0.1",
        *(f"--{switch}={dead_url}" for switch in _GOOGLE_URL_SWITCHES),
        # The component updater's server. --disable-component-update stops its background checks, but Chromium 156
        # still runs on-demand ones (its on-device model manifest, asked for at every start): they go here.
        f"--component-updater=url-source={dead_url}/service/update2/json",
        # Google's background services and first-run work.
        "--no-first-run", "--no-default-browser-check", "--no-pings", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
        "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-breakpad",
        "--disable-crash-reporter", "--disable-field-trial-config", "--metrics-recording-only",
        "--safebrowsing-disable-auto-update", "--dns-prefetch-disable",
        "--disable-features=" + ",".join(_DISABLED_FEATURES),
        "--password-store=basic", "--use-mock-keychain",
        # Light on CPU: one renderer; and nothing throttled into a stall while a test waits.
        "--renderer-process-limit=1", "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    return flags


class BrowserError(RuntimeError):
    """Chromium failed, or a page did not show what was expected in time."""


@dataclass(frozen=True)
class NetworkActivity:
    """What Chromium did on the network, from all its processes, as its NetLog recorded it."""

    urls: tuple[str, ...]  # every URL request started (http, https, ws, data, blob, ...), one entry per job
    tcp_connects: tuple[str, ...]  # every TCP connection attempt, "host:port"
    udp_sends: tuple[str, ...]  # the peer of every UDP socket that sent at least one byte, "host:port"
    # The requests (of `urls`) for a host beyond loopback that ended ERR_PROXY_CONNECTION_FAILED: sent to the proxy,
    # which refused the connection, so no socket beyond loopback was opened for them.
    proxy_refused: tuple[str, ...] = ()

    def off_loopback(self) -> list[str]:
        """Every request or connection that could have carried anything beyond loopback: [] when Chromium stayed
        on 127.0.0.1. A request for a non-loopback host counts unless it was refused at the proxy (`proxy_refused`);
        a TCP connection attempt counts whatever its outcome, a UDP socket as soon as it sent a byte."""
        refused = Counter(self.proxy_refused)
        bad = []
        for url in self.urls:
            host = urlsplit(url).hostname  # data: and blob: have none
            if host is None or _is_loopback(host):
                continue
            if refused[url] > 0:
                refused[url] -= 1
            else:
                bad.append(f"request {url}")
        bad += [f"tcp {address}" for address in self.tcp_connects if not _is_loopback(_host_of(address))]
        bad += [f"udp {address}" for address in self.udp_sends if not _is_loopback(_host_of(address))]
        return bad


class Browser:
    """One headless Chromium with one tab, driven over the DevTools pipe. Made by `headless_chrome()`."""

    def __init__(self, proc: subprocess.Popen, to_chrome: int, from_chrome: int, log_path: Path, net_log: Path) -> None:
        self._proc = proc
        self._to_chrome = to_chrome
        self._from_chrome = from_chrome
        self._log_path = log_path
        self._net_log = net_log
        self._buffer = b""
        self._next_id = 0
        self._responses: dict[int, dict] = {}
        # request id -> URL. Not per session: a worker's script is asked for by the tab and finishes in the worker.
        self._in_flight: dict[str, str] = {}
        self._last_network_event = time.monotonic()
        self._session: str | None = None
        self.requested_urls: list[str] = []  # every request of the tab and of its workers, in order
        self.network: NetworkActivity | None = None  # set by close(), from the NetLog
        self._closed = False
        self._attach_to_tab()

    # -- pages ---------------------------------------------------------------------------------------------------
    def load(self, url: str, *, expect: Sequence[str] = (), timeout_s: float = LOAD_TIMEOUT_S) -> str:
        """Open `url` afresh; once every string of `expect` is in the page's text and its requests have been quiet
        for QUIET_S, return the text (`document.body.innerText`). Raises BrowserError naming what is missing."""
        self.command("Page.navigate", {"url": "about:blank"})  # a new document, even when only the #fragment differs
        self._in_flight.clear()
        navigation = self.command("Page.navigate", {"url": url})
        if navigation.get("errorText"):
            raise BrowserError(f"{url}: {navigation['errorText']}")
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.evaluate("document.body ? document.body.innerText : ''")
            missing = [s for s in expect if s not in text]
            quiet = not self._in_flight and time.monotonic() - self._last_network_event >= QUIET_S
            if not missing and quiet:
                self._next_frame()
                return self.evaluate("document.body.innerText")
            if time.monotonic() > deadline:
                waiting = f"missing {missing}" if missing else f"requests still in flight {sorted(self._in_flight.values())}"
                raise BrowserError(f"{url}: after {timeout_s:.0f} s, {waiting}; the page shows:\n{text[:3000]}")
            self._pump(POLL_S)

    def scroll_to(self, text: str) -> None:
        """Scroll the first element whose own text starts with `text` to the top of its scrolling container."""
        script = """(wanted) => {
            const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                if (node.textContent.trim().startsWith(wanted)) {
                    node.parentElement.scrollIntoView({block: "start"});
                    return true;
                }
            }
            return false;
        }"""
        if not self.evaluate(f"({script})({json.dumps(text)})"):
            raise BrowserError(f"no text starting with {text!r} on {self.evaluate('location.href')}")
        self._next_frame()

    def wait_for(self, expect: Sequence[str], *, timeout_s: float = LOAD_TIMEOUT_S) -> str:
        """Wait until every string of `expect` is in the page's text (a part drawn once scrolled into view); the text."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.evaluate("document.body.innerText")
            missing = [s for s in expect if s not in text]
            if not missing:
                self._next_frame()
                return text
            if time.monotonic() > deadline:
                raise BrowserError(f"after {timeout_s:.0f} s, missing {missing}; the page shows:\n{text[:3000]}")
            self._pump(POLL_S)

    def html(self) -> str:
        """The current DOM, serialised (what `--dump-dom` prints)."""
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot(self) -> bytes:
        """A PNG of the tab's viewport, WIDTH x HEIGHT."""
        return base64.b64decode(self.command("Page.captureScreenshot", {"format": "png"})["data"])

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the tab (a promise is awaited)."""
        result = self.command("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression[:200]!r} raised {details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    def _next_frame(self) -> None:
        """Wait until what the page just did has been painted."""
        self.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")

    # -- the DevTools protocol -----------------------------------------------------------------------------------
    def command(self, method: str, params: dict | None = None, *, session: str | None = "tab") -> dict:
        """Send one command (to the tab by default, or to the browser with session=None) and wait for its result;
        events that arrive meanwhile are handled."""
        message_id = self._send(method, params, self._session if session == "tab" else session)
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while message_id not in self._responses:
            if time.monotonic() > deadline:
                raise BrowserError(f"no answer to {method} after {COMMAND_TIMEOUT_S:.0f} s{self._log_tail()}")
            self._pump(deadline - time.monotonic())
        response = self._responses.pop(message_id)
        if "error" in response:
            raise BrowserError(f"{method}: {response['error'].get('message')}")
        return response.get("result", {})

    def _send(self, method: str, params: dict | None, session: str | None) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_chrome, data) :]
        return self._next_id

    def _pump(self, timeout_s: float) -> None:
        """Read what Chromium sends within `timeout_s`, and handle every complete message."""
        ready, _, _ = select.select([self._from_chrome], [], [], max(timeout_s, 0.0))
        if ready:
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the DevTools pipe (exit status {self._proc.poll()}){self._log_tail()}")
            self._buffer += chunk
        *messages, self._buffer = self._buffer.split(b"\0")
        for raw in messages:
            message = json.loads(raw)
            if "id" in message:
                self._responses[message["id"]] = message
            else:
                self._on_event(message["method"], message.get("params", {}))

    def _on_event(self, method: str, params: dict) -> None:
        if method == "Network.requestWillBeSent":
            self.requested_urls.append(params["request"]["url"])
            self._in_flight[params["requestId"]] = params["request"]["url"]
            self._last_network_event = time.monotonic()
        elif method in ("Network.loadingFinished", "Network.loadingFailed"):
            self._in_flight.pop(params["requestId"], None)
            self._last_network_event = time.monotonic()
        elif method == "Target.attachedToTarget":  # a worker, held at its start: watch its requests, then let it run
            worker = params["sessionId"]
            self._send("Network.enable", None, worker)
            self._send("Runtime.runIfWaitingForDebugger", None, worker)

    def _attach_to_tab(self) -> None:
        targets = self.command("Target.getTargets", session=None)["targetInfos"]
        pages = [t["targetId"] for t in targets if t["type"] == "page"]
        if not pages:
            pages = [self.command("Target.createTarget", {"url": "about:blank"}, session=None)["targetId"]]
        attached = self.command("Target.attachToTarget", {"targetId": pages[0], "flatten": True}, session=None)
        self._session = attached["sessionId"]
        self.command("Network.enable")
        self.command("Page.enable")
        viewport = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        self.command("Emulation.setDeviceMetricsOverride", viewport)
        # Workers: dedicated ones belong to the tab, shared and service workers to the browser.
        hold = {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True}
        self.command("Target.setAutoAttach", hold)
        workers = [{"type": kind, "exclude": False} for kind in ("worker", "shared_worker", "service_worker")]
        self.command("Target.setAutoAttach", {**hold, "filter": [*workers, {"exclude": True}]}, session=None)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return f"; Chromium's log ends:\n{self._log_path.read_text(errors='replace')[-2000:]}"
        return ""

    def close(self) -> None:
        """Ask Chromium to quit (which completes its NetLog), kill its process group whatever it did, then read
        the NetLog into `network`. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._send("Browser.close", None, None)
        # The pipe ends when Chromium exits. Until it is reaped, its pid (the group's id) cannot be reused, so
        # killing the group afterwards cannot reach anyone else's processes.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                ready, _, _ = select.select([self._from_chrome], [], [], deadline - time.monotonic())
                if ready and not os.read(self._from_chrome, 1 << 20):
                    break
        _kill_group(self._proc)
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)
        if self._net_log.exists():
            self.network = read_net_log(self._net_log)


@contextlib.contextmanager
def headless_chrome(chrome: str | None = None, *, extra_flags: Sequence[str] = ()) -> Iterator[Browser]:
    """A headless Chromium (`chrome`, else find_chrome()) with a private profile; killed, group and all, on exit.
    `extra_flags` come after chrome_flags(), so they win over them (for a test of the loopback check itself)."""
    chrome = chrome or find_chrome()
    if chrome is None:
        raise BrowserError(f"no Chromium found (looked for ${CHROME_ENV}, then {', '.join(CHROME_NAMES)} on PATH)")
    with tempfile.TemporaryDirectory(prefix="metadist-chrome-") as tmp, _dead_port() as dead_port:
        tmp_path = Path(tmp)
        log_path, net_log = tmp_path / "chrome.log", tmp_path / "netlog.json"
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes on fd 4. Popen cannot put fds at given numbers, so the pipe
        # ends arrive as stdin and stdout and a shell moves them before exec (preexec_fn is unsafe with threads).
        cmd = ["/bin/sh", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >&2', "sh",
               chrome, *chrome_flags(tmp_path / "profile", net_log, dead_port), *extra_flags, "about:blank"]  # fmt: skip
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=to_chrome_r, stdout=from_chrome_w, stderr=log, start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        browser = None
        try:
            browser = Browser(proc, to_chrome_w, from_chrome_r, log_path, net_log)
            yield browser
        finally:
            if browser is not None:
                browser.close()
            else:  # it died during the handshake
                _kill_group(proc)
                for fd in (to_chrome_w, from_chrome_r):
                    os.close(fd)


def read_net_log(path: Path) -> NetworkActivity:
    """The requests and connections in a Chromium NetLog (JSON); one cut short by a kill is read up to its last
    whole event."""
    text = path.read_text(errors="replace")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:
        whole_events = text[: text.rfind("},\n") + 1]  # one event a line, each ended by "},"
        log = json.loads(whole_events + "]}")
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    proxy_failed = log["constants"].get("netError", {}).get("ERR_PROXY_CONNECTION_FAILED", _ERR_PROXY_CONNECTION_FAILED)
    urls, tcp_connects, udp_peer, udp_sent = [], [], {}, set()
    jobs: dict[int, list[list]] = {}  # request (source id) -> its jobs, in order: [url, net_error at the job's end]
    for event in log["events"]:
        name, params, source = names.get(event["type"]), event.get("params") or {}, event["source"]["id"]
        # Only an event's start carries these params; its end, if any, has none but a net_error.
        if name == "URL_REQUEST_START_JOB":
            if "url" in params:
                urls.append(params["url"])
                jobs.setdefault(source, []).append([params["url"], None])
            elif event.get("phase") == _PHASE_END and jobs.get(source):
                jobs[source][-1][1] = params.get("net_error")
        elif name == "TCP_CONNECT_ATTEMPT" and "address" in params:
            tcp_connects.append(params["address"])
        elif name == "UDP_CONNECT" and "address" in params:
            udp_peer[source] = params["address"]
        elif name == "UDP_BYTES_SENT":
            udp_sent.add(source)
    udp_sends = tuple(sorted({udp_peer.get(source, "unknown:0") for source in udp_sent}))
    refused = tuple(url for request in jobs.values() for url, error in request
                    if error == proxy_failed and not _is_loopback(urlsplit(url).hostname or "localhost"))
    return NetworkActivity(urls=tuple(urls), tcp_connects=tuple(tcp_connects), udp_sends=udp_sends,
                           proxy_refused=refused)


def _host_of(address: str) -> str:
    """'127.0.0.1:80' -> '127.0.0.1'; '[::1]:80' -> '::1'."""
    host = address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _dead_port() -> Iterator[int]:
    """A loopback port that refuses every connection for as long as it is held: bound, never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill Chromium's process group (renderer, GPU, zygote and all; the group is ours alone), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
