"""The read-only web dashboard: the fleet's health at a glance (``pip install dramatiq-opmetrics[dashboard]``).

Run it with ``dramatiq-opmetrics dashboard``, or mount :func:`create_app`'s WSGI application in your own
web application. This subpackage needs the ``dashboard`` extra (Jinja2, Werkzeug, Waitress); the rest of
dramatiq-opmetrics never imports it, so workers do not need web dependencies.
"""

from __future__ import annotations

from .app import DashboardApp, create_app
from .server import keep_warm, serve

__all__ = ["DashboardApp", "create_app", "keep_warm", "serve"]
