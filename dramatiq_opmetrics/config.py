"""Where settings come from: explicit arguments first, then environment variables, then defaults.

Environment variables:
  ``OPMETRICS_DATABASE_URL``: the metrics database (SQLAlchemy URL); falls back to ``DATABASE_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

#: Environment variables read for the database URL, in order.
DATABASE_URL_ENV_VARS = ("OPMETRICS_DATABASE_URL", "DATABASE_URL")

T = TypeVar("T")


class ConfigurationError(Exception):
    """A setting is missing or malformed; the message says which and how to set it."""


def resolve_database_url(database_url: str | URL | None = None) -> URL:
    """Return the metrics database URL: ``database_url`` if given, else the first environment variable set.

    Plain ``postgresql://`` and ``postgres://`` URLs are given the psycopg (3) driver.

    Raises:
      ConfigurationError: if no URL is given or set, or it cannot be parsed (the password is never shown).
    """
    if database_url is None:
        for name in DATABASE_URL_ENV_VARS:
            if os.environ.get(name):
                database_url = os.environ[name]
                break
        else:
            raise ConfigurationError(
                "no metrics database configured: pass database_url=... or set OPMETRICS_DATABASE_URL"
            )
    try:
        url = make_url(database_url)
    except ArgumentError:
        raise ConfigurationError(
            "the metrics database URL cannot be parsed; expected e.g. postgresql+psycopg://user@host/db"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def redact_url(url: str | URL) -> str:
    """Render ``url`` for logs and messages with its password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def resolve_setting(value: T | None, env_var: str, default: T, parse: Callable[[str], T]) -> T:
    """Return ``value`` if given, else environment variable ``env_var`` read with ``parse`` if set, else ``default``.

    Raises:
      ConfigurationError: if ``env_var`` is set to something ``parse`` rejects (``int`` or ``float``).
    """
    if value is not None:
        return value
    raw = os.environ.get(env_var, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ConfigurationError(f"{env_var} must be a number ({parse.__name__}), got {raw!r}") from None
