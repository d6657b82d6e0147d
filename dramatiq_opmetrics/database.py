"""Engines for the metrics database, set up per backend, with timeouts wherever a thread can block.

Engines are created per process and never shared across a fork: create one after the process starts
(dramatiq's worker processes are forked from the main process).

On PostgreSQL every engine made here bounds how long the network can hold a thread:

- ``connect_timeout``: a connection attempt (a host that does not answer, a server that accepts and says
  nothing) fails after :data:`DEFAULT_CONNECT_TIMEOUT_S`;
- ``statement_timeout``: the server cancels a statement that runs longer than
  :data:`DEFAULT_STATEMENT_TIMEOUT_S` (:data:`DEFAULT_MAINTENANCE_STATEMENT_TIMEOUT_S` for the rollup,
  prune and migrations, whose statements read whole days);
- TCP keepalives and ``tcp_user_timeout``: a connection whose peer vanished (a failover, a partition that
  drops packets) is found dead after about a minute, idle or busy.

None of these notices a server that is alive in the kernel but never answers: a stopped (SIGSTOP) or
frozen PostgreSQL whose kernel still acknowledges every packet. Only the client can notice that, by a
deadline of its own: :func:`abort_connection` cuts a connection from another thread so that the call
blocked on it raises :class:`~sqlalchemy.exc.OperationalError`; the background writer does so when a
write does not answer in time (see :class:`~dramatiq_opmetrics.writer.BackgroundWriter`).

A libpq parameter already in the URL's query (``?connect_timeout=2``, or ``-c statement_timeout=...`` in
``options``) is left alone; the settings below fill in only what the URL does not set.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from psycopg.rows import namedtuple_row, tuple_row
from sqlalchemy import CompoundSelect, Connection, Engine, Select, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchModuleError

from .config import ConfigurationError, resolve_database_url, resolve_setting

#: The database backends whose migrations and queries dramatiq-opmetrics ships.
SUPPORTED_BACKENDS = ("postgresql", "sqlite")
#: The URL query parameter (PostgreSQL) that sets psycopg's ``prepare_threshold``: ``none`` turns
#: server-side prepared statements off, as PgBouncer in transaction pooling mode needs (before 1.21); a
#: number N prepares a query from its (N+1)th run on a connection (psycopg's default is 5).
PREPARE_THRESHOLD_PARAMETER = "prepare_threshold"
#: How long a SQLite connection waits for a lock held by another process, in seconds.
SQLITE_BUSY_TIMEOUT_S = 30
#: Seconds a connection attempt to PostgreSQL may take (whole seconds, at least 2: libpq's rule).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: Seconds a statement may run before PostgreSQL cancels it (0: the server's own setting): writes, claims,
#: reports, pages.
DEFAULT_STATEMENT_TIMEOUT_S = 30.0
#: Seconds a statement of the rollup, prune or migrations may run (0: the server's own setting): they read
#: whole days.
DEFAULT_MAINTENANCE_STATEMENT_TIMEOUT_S = 3600.0
#: Seconds a connection may stay idle before TCP keepalive probes start.
DEFAULT_KEEPALIVES_IDLE_S = 30.0
#: Seconds between two TCP keepalive probes.
KEEPALIVES_INTERVAL_S = 10
#: Unanswered keepalive probes after which the connection is dead.
KEEPALIVES_COUNT = 3
#: Seconds sent data may stay unacknowledged before the kernel drops the connection (0: the system's).
DEFAULT_TCP_USER_TIMEOUT_S = 30.0

#: Environment variable for ``connect_timeout_s``.
CONNECT_TIMEOUT_ENV_VAR = "OPMETRICS_CONNECT_TIMEOUT_S"
#: Environment variable for ``statement_timeout_s``.
STATEMENT_TIMEOUT_ENV_VAR = "OPMETRICS_STATEMENT_TIMEOUT_S"
#: Environment variable for ``statement_timeout_s`` of the rollup, prune and migrations.
MAINTENANCE_STATEMENT_TIMEOUT_ENV_VAR = "OPMETRICS_MAINTENANCE_STATEMENT_TIMEOUT_S"
#: Environment variable for ``keepalives_idle_s``.
KEEPALIVES_IDLE_ENV_VAR = "OPMETRICS_KEEPALIVES_IDLE_S"
#: Environment variable for ``tcp_user_timeout_s``.
TCP_USER_TIMEOUT_ENV_VAR = "OPMETRICS_TCP_USER_TIMEOUT_S"


def make_engine(
    database_url: str | URL | None = None,
    *,
    connect_timeout_s: float | None = None,
    statement_timeout_s: float | None = None,
    keepalives_idle_s: float | None = None,
    tcp_user_timeout_s: float | None = None,
    maintenance: bool = False,
    **engine_options: Any,
) -> Engine:
    """Create an engine for the metrics database (see :func:`~dramatiq_opmetrics.config.resolve_database_url`).

    SQLite connections use WAL journaling and a busy timeout so that several processes can write one file.
    PostgreSQL connections get the timeouts below (see the module documentation); other ``engine_options``
    go to :func:`sqlalchemy.create_engine` (its ``connect_args`` win over the timeouts).

    Parameters:
      database_url(str | URL | None): the metrics database; default ``$OPMETRICS_DATABASE_URL``, then
        ``$DATABASE_URL``.
      connect_timeout_s(float | None): seconds a connection attempt may take (rounded up to whole seconds,
        at least 2); default ``$OPMETRICS_CONNECT_TIMEOUT_S``, else :data:`DEFAULT_CONNECT_TIMEOUT_S` (5).
      statement_timeout_s(float | None): seconds a statement may run (0: sets none, so the server's own
        setting applies, PostgreSQL's default being no limit); default
        ``$OPMETRICS_STATEMENT_TIMEOUT_S``, else :data:`DEFAULT_STATEMENT_TIMEOUT_S` (30); with
        ``maintenance``, ``$OPMETRICS_MAINTENANCE_STATEMENT_TIMEOUT_S``, else
        :data:`DEFAULT_MAINTENANCE_STATEMENT_TIMEOUT_S` (3,600).
      keepalives_idle_s(float | None): idle seconds before TCP keepalive probes start (then one per
        :data:`KEEPALIVES_INTERVAL_S`, dead after :data:`KEEPALIVES_COUNT` unanswered); default
        ``$OPMETRICS_KEEPALIVES_IDLE_S``, else :data:`DEFAULT_KEEPALIVES_IDLE_S` (30).
      tcp_user_timeout_s(float | None): seconds sent data may stay unacknowledged (0: the system's);
        default ``$OPMETRICS_TCP_USER_TIMEOUT_S``, else :data:`DEFAULT_TCP_USER_TIMEOUT_S` (30).
      maintenance(bool): the engine runs the rollup, prune or migrations, whose statements may be long.

    Behind PgBouncer in transaction pooling mode, add ``?prepare_threshold=none`` to the URL
    (:data:`PREPARE_THRESHOLD_PARAMETER`): psycopg then never prepares statements on the server, where
    the next transaction may run on another connection. PgBouncer does not forward the ``options`` startup
    parameter either: set a schema with ``ALTER ROLE ... SET search_path`` instead of ``?options=-csearch_path``,
    and set ``statement_timeout_s`` to 0 (``$OPMETRICS_STATEMENT_TIMEOUT_S`` and
    ``$OPMETRICS_MAINTENANCE_STATEMENT_TIMEOUT_S``) with ``ALTER ROLE ... SET statement_timeout`` instead.

    Raises:
      ConfigurationError: if no database URL is given or set, it cannot be parsed, its dialect or driver is
        missing or not supported (see :func:`check_driver`), or a timeout's environment variable is not a
        number.
      ValueError: if a timeout is negative or not a number (connect and keepalive: not positive).
    """
    url = resolve_database_url(database_url)
    check_driver(url)
    if url.get_backend_name() == "sqlite":
        engine_options.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_S})
        engine = create_engine(url, **engine_options)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    timeouts = postgresql_timeouts(
        url,
        connect_timeout_s=connect_timeout_s,
        statement_timeout_s=statement_timeout_s,
        keepalives_idle_s=keepalives_idle_s,
        tcp_user_timeout_s=tcp_user_timeout_s,
        maintenance=maintenance,
    )
    engine_options["connect_args"] = {**timeouts, **engine_options.get("connect_args", {})}
    engine_options.setdefault("pool_pre_ping", True)
    url = _take_prepare_threshold(url, engine_options)
    return create_engine(url, **engine_options)


def check_driver(url: URL) -> None:
    """Refuse, with a message saying what to install or use, a URL whose dialect or driver is missing,
    not PostgreSQL or SQLite, or an asyncio driver (dramatiq-opmetrics' threads use blocking drivers).

    Raises:
      ConfigurationError: naming the problem.
    """
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise ConfigurationError(
            f"unknown database {url.drivername!r} in the metrics database URL; use postgresql+psycopg:// or sqlite://"
        ) from None
    if url.get_backend_name() not in SUPPORTED_BACKENDS:
        raise ConfigurationError(
            f"dramatiq-opmetrics stores metrics in PostgreSQL or SQLite, not {url.get_backend_name()!r}"
        )
    if dialect.is_async:
        raise ConfigurationError(
            f"{url.drivername!r} is an asyncio driver; use a blocking one (postgresql+psycopg:// or sqlite://)"
        )
    try:
        dialect.import_dbapi()
    except ImportError as error:
        raise ConfigurationError(
            f"the driver of {url.drivername!r} is not installed ({error.name or error} is missing);"
            " use postgresql+psycopg:// (installed with dramatiq-opmetrics) or sqlite://"
        ) from None


def _take_prepare_threshold(url: URL, engine_options: dict[str, Any]) -> URL:
    """Move :data:`PREPARE_THRESHOLD_PARAMETER` from the URL's query to psycopg's connection arguments."""
    if PREPARE_THRESHOLD_PARAMETER not in url.query:
        return url
    value = url.query[PREPARE_THRESHOLD_PARAMETER]
    text = (value if isinstance(value, str) else value[-1]).strip().lower()
    if text == "none":
        threshold = None
    elif text.isdigit():
        threshold = int(text)
    else:
        raise ConfigurationError(
            f"the metrics database URL's {PREPARE_THRESHOLD_PARAMETER} must be 'none' or a whole number, got {text!r}"
        )
    engine_options["connect_args"] = {**engine_options.get("connect_args", {}), "prepare_threshold": threshold}
    return url.difference_update_query([PREPARE_THRESHOLD_PARAMETER])


@contextlib.contextmanager
def connection_for(connectable: Engine | Connection) -> Iterator[Connection]:
    """``connectable`` itself if it is a connection (the caller's transaction), else a new one of the engine."""
    if isinstance(connectable, Connection):
        yield connectable
    else:
        with connectable.connect() as connection:
            yield connection


@contextlib.contextmanager
def engine_for(database_url: str | URL | None = None, **engine_options: Any) -> Iterator[Engine]:
    """:func:`make_engine` for one job: yields the engine and disposes of its connections afterwards."""
    engine = make_engine(database_url, **engine_options)
    try:
        yield engine
    finally:
        engine.dispose()


def resolve_statement_timeout_s(value: float | None = None, *, maintenance: bool = False) -> float:
    """The statement timeout in seconds an engine gets (0: none): ``value`` if given, else its environment
    variable, else its default (see :func:`make_engine`)."""
    if maintenance:
        env_var, default = MAINTENANCE_STATEMENT_TIMEOUT_ENV_VAR, DEFAULT_MAINTENANCE_STATEMENT_TIMEOUT_S
    else:
        env_var, default = STATEMENT_TIMEOUT_ENV_VAR, DEFAULT_STATEMENT_TIMEOUT_S
    return _seconds("statement_timeout_s", resolve_setting(value, env_var, default, float), zero=True)


def resolve_connect_timeout_s(value: float | None = None) -> int:
    """The connect timeout an engine gets, in the whole seconds libpq takes (at least 2)."""
    resolved = resolve_setting(value, CONNECT_TIMEOUT_ENV_VAR, DEFAULT_CONNECT_TIMEOUT_S, float)
    return max(2, math.ceil(_seconds("connect_timeout_s", resolved, zero=False)))


def postgresql_timeouts(
    url: URL,
    *,
    connect_timeout_s: float | None = None,
    statement_timeout_s: float | None = None,
    keepalives_idle_s: float | None = None,
    tcp_user_timeout_s: float | None = None,
    maintenance: bool = False,
) -> dict[str, Any]:
    """The libpq connection parameters :func:`make_engine` adds for ``url``: those the URL does not set."""
    query = url.query
    idle = resolve_setting(keepalives_idle_s, KEEPALIVES_IDLE_ENV_VAR, DEFAULT_KEEPALIVES_IDLE_S, float)
    user_timeout = resolve_setting(tcp_user_timeout_s, TCP_USER_TIMEOUT_ENV_VAR, DEFAULT_TCP_USER_TIMEOUT_S, float)
    wanted: dict[str, Any] = {
        "connect_timeout": resolve_connect_timeout_s(connect_timeout_s),
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(_seconds("keepalives_idle_s", idle, zero=False))),
        "keepalives_interval": KEEPALIVES_INTERVAL_S,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": round(_seconds("tcp_user_timeout_s", user_timeout, zero=True) * 1000),
    }
    parameters = {name: value for name, value in wanted.items() if name not in query}
    options = query.get("options", "")
    options = " ".join(options) if isinstance(options, tuple) else options
    timeout_ms = round(resolve_statement_timeout_s(statement_timeout_s, maintenance=maintenance) * 1000)
    # 0 sends no startup option at all: the server's setting applies (the role's or database's, as behind
    # PgBouncer, which refuses the ``options`` startup parameter).
    if timeout_ms and "statement_timeout" not in options:
        # The URL's own options (a search_path, say) are kept: this connect argument replaces them.
        parameters["options"] = f"{options} -c statement_timeout={timeout_ms}".strip()
    return parameters


def abort_connection(dbapi_connection: Any) -> bool:
    """Cut ``dbapi_connection``'s socket from any thread; return whether there was one to cut.

    The call blocked on it (a read the server never answers) returns at once and raises
    :class:`~sqlalchemy.exc.OperationalError`; the connection is unusable afterwards, and the pool
    replaces it. The server sees the connection close and rolls back what it had not committed.
    A SQLite connection (no socket) is left alone.
    """
    pgconn = getattr(dbapi_connection, "pgconn", None)
    if pgconn is None:
        return False
    try:
        fd = pgconn.socket
    except Exception:  # closed already: psycopg raises OperationalError
        return False
    # A socket object on a duplicate descriptor: shutting it down shuts down the connection itself, and
    # closing it leaves psycopg's own descriptor to psycopg.
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    return True


def _seconds(name: str, value: object, *, zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be {'at least 0' if zero else 'positive'}, got {value!r}")
    return float(value)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


#: PostgreSQL settings of the package's long reads and folds: their sorts and hash tables fit in memory (at
#: the default of 4 MB they spill to disk), and JIT compilation costs more than it saves on them.
LONG_READ_SETTINGS = {"work_mem": "64MB", "jit": "off"}


@contextlib.contextmanager
def local_settings(connection: Connection, settings: Mapping[str, str]) -> Iterator[None]:
    """Apply PostgreSQL ``settings`` (name to value) to the statements run inside, then put back the values
    they had: ``set_config(..., is_local => true)``, so they never outlive the current transaction, whoever
    owns it, and hold for the package's own statements only. A block that fails leaves them to the rollback
    of its transaction, which undoes them. Nothing happens on other databases."""
    if connection.dialect.name != "postgresql" or not settings:
        yield
        return
    # One round trip: the current values are read before they are set (left to right).
    previous = _set_local(connection, settings, read_first=True)
    yield
    _set_local(connection, dict(zip(settings, previous, strict=True)))


def transaction_settings(connection: Connection, settings: Mapping[str, str]) -> None:
    """Apply PostgreSQL ``settings`` (name to value) to the rest of the current transaction, for a caller that
    owns the transaction from its start to its end: :func:`local_settings` without putting anything back (one
    round trip instead of two). Nothing happens on other databases."""
    if connection.dialect.name == "postgresql" and settings:
        _set_local(connection, settings)


def _set_local(connection: Connection, settings: Mapping[str, str], *, read_first: bool = False) -> list[str]:
    """Set ``settings`` for the current transaction; their values before, if ``read_first``."""
    columns = [f"set_config(:n{index}, :v{index}, true)" for index in range(len(settings))]
    if read_first:
        columns = [f"current_setting(:n{index})" for index in range(len(settings))] + columns
    row = connection.execute(
        text("SELECT " + ", ".join(columns)),
        {
            **{f"n{index}": name for index, name in enumerate(settings)},
            **{f"v{index}": value for index, value in enumerate(settings.values())},
        },
    ).one()
    return list(row[: len(settings)]) if read_first else []


def fetch_rows(
    connection: Connection,
    query: Select[*tuple[Any, ...]] | CompoundSelect[*tuple[Any, ...]],
    *,
    named: bool = False,
) -> list[Sequence[Any]]:
    """All rows of ``query``; on PostgreSQL read in binary by the driver itself, without SQLAlchemy's
    per-row processing (for reads of tens of thousands of rows of numbers, arrays and packed histograms: about
    a third of the time). The values are the driver's (a JSON column comes as what psycopg parses it to, a
    native enum as bytes: cast it to text). With ``named``, each row's values are also its attributes, by
    the query's column labels, as in SQLAlchemy's rows."""
    if connection.dialect.name != "postgresql":
        return list(connection.execute(query))
    compiled = query.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    driver = connection.connection.driver_connection
    assert driver is not None  # a live connection
    with driver.cursor(binary=True, row_factory=namedtuple_row if named else tuple_row) as cursor:
        # The parameters as SQLAlchemy would send them (a JSON value serialised, for one).
        processors = compiled._bind_processors
        params = {}
        for name, value in compiled.construct_params().items():
            processor = processors.get(name)
            params[name] = processor(value) if callable(processor) else value
        cursor.execute(compiled.string, params)
        rows: list[Sequence[Any]] = cursor.fetchall()
        return rows


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a result is built: tens of thousands of new objects
    trigger collection after collection of every object of the process (a quarter of a day's series read
    in a big process, a third of a year-long range read's time), and none of them is garbage. Reference
    counting still frees what goes. Nested or concurrent uses leave the collector as the outermost found it.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
