"""Test helper: real servers that receive alert notifications, each on a free 127.0.0.1 port.

- :class:`SmtpServer`: an ``aiosmtpd`` SMTP server keeping every message it receives, for Apprise's
  ``mailto://`` (:meth:`SmtpServer.apprise_url` is the plain-SMTP form, no TLS and no login).
- :class:`JsonHttpServer`: a stdlib HTTP server recording the JSON bodies posted to it, for Apprise's
  ``json://``; it can answer an error status, or be stopped and started again on the same port, to be
  "a notifier that is down".
- :class:`Alertmanager`: a real Prometheus Alertmanager process (Debian's ``prometheus-alertmanager``),
  clustering off, with a receiver that sends nothing; :meth:`Alertmanager.alerts` reads its v2 API.

Each is a context manager that starts the server and stops it at the end; every wait is bounded.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from served_program import ServedProgram, find_program
from tcp_proxy import free_port
from waiting import wait_until

#: Seconds a server may take to start listening (Alertmanager: to answer ``/-/ready``).
START_TIMEOUT_S = 15.0
#: Seconds a server may take to stop before it is killed.
STOP_TIMEOUT_S = 10.0
#: Seconds a test waits for a notification to arrive.
ARRIVAL_TIMEOUT_S = 10.0

#: What makes the Alertmanager tests skip on a machine without it (``./dev test`` installs it; CI must have
#: it).
ALERTMANAGER_MISSING = (
    "prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager; ./dev test installs it"
    " when run as root)"
)


class SmtpServer:
    """An SMTP server (aiosmtpd) on a free 127.0.0.1 port that keeps the messages it receives.

    ``messages`` holds them parsed (:class:`email.message.EmailMessage`), in the order they arrived.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[email.message.EmailMessage] = []
        self._lock = threading.Lock()
        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, server_hostname="localhost", ready_timeout=START_TIMEOUT_S
        )

    def apprise_url(self, recipient: str = "ops@example.com", sender: str = "alerts@example.com") -> str:
        """The Apprise URL that mails ``recipient`` through this server: plain SMTP (``mailto://``, not
        ``mailtos://``, is Apprise's insecure mode: no STARTTLS), no login (no user or password in the URL),
        from ``sender``. ``smtp=`` names the server (Apprise 1.x lost an IP address given only as the host);
        Apprise refuses ``user@127.0.0.1`` as a sender, hence ``from=``."""
        return f"mailto://127.0.0.1:{self.port}?smtp=127.0.0.1&from={sender}&to={recipient}"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """aiosmtpd's hook: keep the message."""
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        with self._lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def wait_for_messages(self, count: int, timeout_s: float = ARRIVAL_TIMEOUT_S) -> list[email.message.EmailMessage]:
        """The first ``count`` messages, once that many arrived (fails after ``timeout_s`` seconds)."""
        wait_until(lambda: len(self.messages) >= count, timeout_s, f"{count} message(s) at the SMTP server")
        with self._lock:
            return list(self.messages[:count])

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._controller.stop()


def message_text(message: email.message.EmailMessage) -> str:
    """A received mail's plain-text body."""
    part = message.get_body(preferencelist=("plain", "html"))
    assert part is not None, f"no text body in {message}"
    content = part.get_content()
    assert isinstance(content, str)
    return content


class JsonHttpServer:
    """An HTTP server on a free 127.0.0.1 port recording every JSON body posted to it.

    ``bodies`` holds ``(path, body)`` pairs in the order they arrived. Set ``status`` to answer something
    else than 200 (the body is recorded all the same); :meth:`stop` and :meth:`start` take it down and bring
    it back on the same port.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[tuple[str, Any]] = []
        self.status = 200
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def apprise_url(self, path: str = "/hook") -> str:
        """The Apprise ``json://`` URL posting to ``path`` on this server."""
        return f"json://127.0.0.1:{self.port}{path}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with recorder._lock:
                    recorder.bodies.append((self.path, body))
                    status = recorder.status
                answer = b"{}" if status < 400 else b'{"error": "the test server was told to fail"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> None:
        """Listen (again) on :attr:`port`."""
        assert self._server is None, "already started"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="json-http-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: clients get "connection refused" until :meth:`start`."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(STOP_TIMEOUT_S)
        self._server = None
        self._thread = None

    def wait_for_bodies(self, count: int, timeout_s: float = ARRIVAL_TIMEOUT_S) -> list[tuple[str, Any]]:
        """The first ``count`` ``(path, body)`` pairs, once that many arrived (fails after ``timeout_s``)."""
        wait_until(lambda: len(self.bodies) >= count, timeout_s, f"{count} JSON body(ies) at the HTTP server")
        with self._lock:
            return list(self.bodies[:count])

    def __enter__(self) -> JsonHttpServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


#: A configuration whose only receiver sends nothing: the tests read what Alertmanager holds, by its API.
ALERTMANAGER_CONFIG = """\
route:
  receiver: "nobody"
  group_wait: 0s
receivers:
  - name: "nobody"
"""


class Alertmanager(ServedProgram):
    """A real Prometheus Alertmanager on a free 127.0.0.1 port, its storage and configuration in ``folder``.

    Parameters:
      folder(Path): where its configuration, data and log go (a test's ``tmp_path``).
    """

    name = "Alertmanager"

    @property
    def target(self) -> str:
        """The notification target sending to it."""
        return f"alertmanager+http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        binary = find_program(("prometheus-alertmanager", "alertmanager"), ALERTMANAGER_MISSING)
        config = self.folder / "alertmanager.yml"
        config.write_text(ALERTMANAGER_CONFIG)
        (self.folder / "data").mkdir(exist_ok=True)
        return [
            binary,
            f"--config.file={config}",
            f"--storage.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager lists (``GET /api/v2/alerts``: those not resolved)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as answer:
            alerts: list[dict[str, Any]] = json.load(answer)
            return alerts

    def received(self, status: str) -> float:
        """How many alerts of ``status`` (``firing`` or ``resolved``) it received so far (its own metric
        ``alertmanager_alerts_received_total``)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("alertmanager_alerts_received_total{") and f'status="{status}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_for_alerts(self, condition: Any, what: str, timeout_s: float = ARRIVAL_TIMEOUT_S) -> list[dict[str, Any]]:
        """The listed alerts, once ``condition(alerts)`` holds (fails after ``timeout_s`` seconds)."""
        found: list[list[dict[str, Any]]] = []

        def holds() -> bool:
            found[:] = [self.alerts()]
            return bool(condition(found[0]))

        wait_until(holds, timeout_s, what, poll_s=0.1)
        return found[0]


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A running :class:`SmtpServer`, stopped after the test."""
    with SmtpServer() as server:
        yield server


@pytest.fixture
def json_server() -> Iterator[JsonHttpServer]:
    """A running :class:`JsonHttpServer`, stopped after the test."""
    with JsonHttpServer() as server:
        yield server


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    """A running :class:`Alertmanager`, stopped after the test."""
    with Alertmanager(tmp_path) as server:
        yield server
