"""Test helper: a TCP server that accepts connections and never answers (a hung database, for clients)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from types import TracebackType

from sqlalchemy.engine import URL


class SilentServer:
    """Listens on 127.0.0.1:``port`` from construction; accepts every connection, reads nothing, sends nothing.

    A client's connect succeeds at the TCP level and then waits for the server's first byte, forever: only
    the client's own timeout ends it. :meth:`close` (or leaving the ``with`` block) closes everything.

    Attributes:
      port(int): the TCP port.
      url(URL): a PostgreSQL URL pointing at it.
      accepted(int): connections accepted so far.

    :meth:`connections` says when each connection was accepted and when its client hung up (seen without
    reading anything), so a test can time a client's own timeout apart from the time its process takes to start.
    """

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self.url = URL.create(
            "postgresql+psycopg", username="postgres", host="127.0.0.1", port=self.port, database="postgres"
        )
        self.accepted = 0
        self._clients: list[socket.socket] = []
        # time.monotonic() of each connection's accept and of its client's hang-up, by file descriptor.
        self._accepted_at: dict[int, float] = {}
        self._hung_up_at: dict[int, float] = {}
        self._hang_ups = select.poll()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="silent-server", daemon=True).start()
        threading.Thread(target=self._watch_hang_ups, name="silent-server-hang-ups", daemon=True).start()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening and close every accepted connection."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._clients.append(client)
                self.accepted += 1
                self._accepted_at[client.fileno()] = time.monotonic()
                self._hang_ups.register(client, select.POLLRDHUP)

    def _watch_hang_ups(self) -> None:
        while self._listener.fileno() != -1:
            for fd, _ in self._hang_ups.poll(50):  # milliseconds: also notices close() soon
                now = time.monotonic()
                with self._lock:
                    self._hang_ups.unregister(fd)
                    self._hung_up_at.setdefault(fd, now)

    def connections(self) -> list[tuple[float, float | None]]:
        """Each connection accepted so far, in order: ``(accepted_at, hung_up_at)`` in ``time.monotonic()``
        seconds, ``hung_up_at`` None while its client is still connected."""
        with self._lock:
            return [(accepted, self._hung_up_at.get(fd)) for fd, accepted in self._accepted_at.items()]
