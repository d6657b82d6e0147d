"""Who may read what the package serves over HTTP (the dashboard, the Prometheus exporter): loopback only
unless asked otherwise, and then only with authentication.

Dramatiq's own Prometheus exposition binds every interface by default, with no authentication; these servers
do the opposite. One set of credentials, from the environment, serves both: a bearer token
(``$OPMETRICS_DASHBOARD_TOKEN``, what Prometheus sends with ``authorization: {credentials: ...}``) or basic
auth (``$OPMETRICS_DASHBOARD_USER`` and ``$OPMETRICS_DASHBOARD_PASSWORD``, Prometheus' ``basic_auth``).
Credentials are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized
from werkzeug.wrappers import Request

from .config import ConfigurationError

#: Environment variable of the bearer token.
TOKEN_ENV_VAR = "OPMETRICS_DASHBOARD_TOKEN"
#: Environment variable of the basic-auth user name.
USER_ENV_VAR = "OPMETRICS_DASHBOARD_USER"
#: Environment variable of the basic-auth password.
PASSWORD_ENV_VAR = "OPMETRICS_DASHBOARD_PASSWORD"
#: The realm named in a basic-auth challenge.
AUTH_REALM = "dramatiq-opmetrics"
#: The highest TCP port (0 asks for any free port).
MAX_PORT = 65_535


class Guarded(Protocol):
    """A WSGI application that may require authentication."""

    @property
    def requires_auth(self) -> bool: ...

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any: ...


@dataclass(frozen=True)
class Credentials:
    """What a request must send: ``Authorization: Bearer <bearer_token>``, or basic auth with
    ``basic_auth`` (user name, password); either one when both are set; nothing when neither is.

    Parameters:
      bearer_token(str | None): the token; None or empty: no bearer token.
      basic_auth(tuple[str, str] | None): the user name and password; None (or an empty one): no basic auth.
    """

    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bearer_token", self.bearer_token or None)
        object.__setattr__(self, "basic_auth", self.basic_auth if self.basic_auth and all(self.basic_auth) else None)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Credentials:
        """The credentials of :data:`TOKEN_ENV_VAR`, :data:`USER_ENV_VAR` and :data:`PASSWORD_ENV_VAR`.

        Raises:
          ConfigurationError: only one of the user name and the password is set.
        """
        user, password = environ.get(USER_ENV_VAR), environ.get(PASSWORD_ENV_VAR)
        if bool(user) != bool(password):
            raise ConfigurationError(f"set both {USER_ENV_VAR} and {PASSWORD_ENV_VAR}, or neither")
        return cls(environ.get(TOKEN_ENV_VAR) or None, (user, password) if user and password else None)

    @property
    def requires_auth(self) -> bool:
        """Whether requests must authenticate."""
        return self.bearer_token is not None or self.basic_auth is not None

    def authenticate(self, request: Request) -> None:
        """Return if ``request`` may pass.

        Raises:
          Unauthorized: it sent no valid credentials (with the challenge of the scheme expected).
        """
        if not self.requires_auth:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if self.bearer_token and scheme.lower() == "bearer" and _same(credentials.strip(), self.bearer_token):
            return
        if self.basic_auth and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            # Both compared, always, so that timing does not tell which one was wrong.
            user_ok = _same(user, self.basic_auth[0])
            if _same(password, self.basic_auth[1]) and user_ok:
                return
        scheme = "basic" if self.basic_auth else "bearer"
        raise Unauthorized(www_authenticate=WWWAuthenticate(scheme, {"realm": AUTH_REALM}))


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) resolves to loopback addresses only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_binding(app: Guarded, host: str, *, allow_remote: bool, what: str = "the dashboard") -> None:
    """Refuse to bind a non-loopback ``host`` unless ``allow_remote`` and ``app`` requires authentication.

    Parameters:
      app: the application to serve (anything with ``requires_auth``).
      host(str): the interface to bind.
      allow_remote(bool): whether another interface than loopback was asked for explicitly.
      what(str): what is served, for the error message.

    Raises:
      ConfigurationError: saying what to add.
    """
    if is_loopback(host):
        return
    if not allow_remote:
        raise ConfigurationError(
            f"{what} binds {host!r}, which is reachable from other machines; pass --allow-remote"
            f" and set {TOKEN_ENV_VAR} or {USER_ENV_VAR} and {PASSWORD_ENV_VAR}"
        )
    if not app.requires_auth:
        raise ConfigurationError(
            f"{what} binds {host!r} without authentication; set {TOKEN_ENV_VAR} (bearer token)"
            f" or {USER_ENV_VAR} and {PASSWORD_ENV_VAR} (basic auth)"
        )


def make_http_server(app: Guarded, host: str, port: int, *, allow_remote: bool, threads: int, what: str) -> Any:
    """A Waitress server for ``app`` on ``host:port`` (port 0: any free port), checked by :func:`check_binding`.

    Call its ``run()`` to serve, and :func:`stop_http_server` from another thread to stop it (``close()``
    alone stops listening, but ``run()`` goes on serving the clients' open keep-alive connections);
    ``effective_port`` is the port it listens on.

    Raises:
      ConfigurationError: ``port`` is not from 0 to :data:`MAX_PORT` (Waitress would listen on another
        port), or the binding is refused by :func:`check_binding`.
      OSError: the port cannot be bound (for example, it is in use).
    """
    from waitress.server import create_server

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        raise ConfigurationError(f"{what}'s port must be from 0 to {MAX_PORT} (0: any free port), got {port!r}")
    check_binding(app, host, allow_remote=allow_remote, what=what)
    return create_server(app, host=host, port=port, threads=threads, ident="dramatiq-opmetrics")


def stop_http_server(server: Any) -> None:
    """Stop a server of :func:`make_http_server` whose ``run()`` serves in another thread: the listening socket
    and every client connection are closed in the server's own loop thread, so ``run()`` returns (a browser
    keeps its connections open, and ``close()`` alone leaves them served)."""

    def close_all() -> None:
        for channel in list(server.active_channels.values()):
            channel.close()
        server.close()

    server.trigger.pull_trigger(close_all)
