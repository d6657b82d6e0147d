"""A TCP proxy a test can stop and start, to make a shared server unreachable for one client only."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from pathlib import Path

#: Where the kernel's range of local ports for outgoing connections starts, when it does not say.
DEFAULT_EPHEMERAL_LOW = 32768
#: Ports tried by :func:`free_port` before it gives up.
PORT_ATTEMPTS = 200
_PICKER = random.SystemRandom()  # not the random module's own generator, which a test may seed


def ephemeral_low() -> int:
    """Where the kernel's range of local ports for outgoing connections starts (Linux's
    ``ip_local_port_range``)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to right now, picked at random below the kernel's
    ephemeral range: a server a test stops and starts again on it (a throwaway PostgreSQL cluster, a proxy)
    never finds it taken meanwhile by the local end of an outgoing connection, which the kernel picks from
    that range only (a port the kernel handed out for port 0 was such a port: a restart once failed with
    "Address already in use")."""
    low = ephemeral_low()
    candidates = range(max(1024, low - 20_000), low)
    if len(candidates) < 1000:  # a machine whose ephemeral range starts low: let the kernel choose
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
            return port
    for _ in range(PORT_ATTEMPTS):
        port = _PICKER.choice(candidates)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in {candidates.start}-{candidates.stop - 1}")


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port`` while started.

    :meth:`stop` closes the listening socket and cuts every open connection, so clients see the server as
    down (connection refused, broken connections); :meth:`start` listens again on the same port.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, destination: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                destination.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, destination):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
