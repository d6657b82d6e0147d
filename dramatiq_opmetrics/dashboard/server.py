"""Serving the dashboard: loopback only unless asked otherwise, and then only with authentication.

Dramatiq's own Prometheus exposition binds every interface by default; the dashboard does the opposite.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..http_serving import MAX_PORT, check_binding, is_loopback, make_http_server
from .app import DashboardApp
from .charts import DEFAULT_RANGE_DAYS, RANGE_DAYS
from .pages import overview

#: The interface the dashboard binds when none is given.
DEFAULT_HOST = "127.0.0.1"
#: The TCP port the dashboard listens on when none is given.
DEFAULT_PORT = 8070
#: Worker threads answering requests.
DEFAULT_THREADS = 4
#: Seconds between two rounds of preparing the overviews in the background (see :func:`keep_warm`).
DEFAULT_KEEP_WARM_INTERVAL_S = 60.0

logger = logging.getLogger(__name__)

__all__ = ["MAX_PORT", "check_binding", "is_loopback", "keep_warm", "make_server", "serve"]


def make_server(
    app: DashboardApp,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    allow_remote: bool = False,
    threads: int = DEFAULT_THREADS,
) -> Any:
    """A Waitress server for ``app`` on ``host:port`` (port 0: any free port), checked by :func:`check_binding`.

    Call its ``run()`` to serve and :func:`~dramatiq_opmetrics.http_serving.stop_http_server` (from another
    thread) to stop; ``effective_port`` is the port it listens on.

    Raises:
      ConfigurationError: ``port`` is not from 0 to :data:`MAX_PORT` (Waitress would listen on another
        port), or the binding is refused by :func:`check_binding`.
      OSError: the port cannot be bound (for example, it is in use).
    """
    return make_http_server(app, host, port, allow_remote=allow_remote, threads=threads, what="the dashboard")


def keep_warm(app: DashboardApp, stop: threading.Event, interval_s: float = DEFAULT_KEEP_WARM_INTERVAL_S) -> None:
    """Until ``stop`` is set, prepare every ``interval_s`` seconds what the overview of each range keeps
    between requests (after a start, midnight or a rollup: the rolled-up days' trends), so that visitors do
    not wait for it. The default range comes first. Failures are logged, never raised.

    ``dramatiq-opmetrics dashboard`` runs it in a background thread; when mounting the app in your own web
    application, run it in one too::

        threading.Thread(target=keep_warm, args=(app, threading.Event()), daemon=True).start()
    """
    ranges = [DEFAULT_RANGE_DAYS, *(days for days in RANGE_DAYS if days != DEFAULT_RANGE_DAYS)]
    while not stop.is_set():
        for days in ranges:
            if stop.is_set():
                return
            try:
                overview.view(app.data, days)
            except Exception:
                logger.warning("Could not prepare the dashboard's %s-day overview in advance.", days, exc_info=True)
        stop.wait(interval_s)


def serve(
    app: DashboardApp,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    allow_remote: bool = False,
    threads: int = DEFAULT_THREADS,
) -> None:
    """Serve ``app`` on ``host:port`` until interrupted (see :func:`make_server`)."""
    server = make_server(app, host, port, allow_remote=allow_remote, threads=threads)
    stop = threading.Event()
    threading.Thread(target=keep_warm, args=(app, stop), name="opmetrics-dashboard-keep-warm", daemon=True).start()
    logger.info("Dashboard listening on http://%s:%s/", host, server.effective_port)
    print(f"dramatiq-opmetrics dashboard on http://{host}:{server.effective_port}/ (Ctrl-C stops it)", flush=True)
    try:
        server.run()
    finally:
        stop.set()
        server.close()
