"""Engines for the metrics database: drivers checked up front, psycopg's prepared statements configurable."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.engine import URL

from dramatiq_opmetrics.config import ConfigurationError
from dramatiq_opmetrics.database import check_driver, make_engine, postgresql_timeouts


@pytest.mark.postgres
@pytest.mark.parametrize(("value", "threshold"), [("none", None), ("None", None), ("0", 0), ("12", 12)])
def test_prepare_threshold_in_the_url_goes_to_psycopg_and_not_to_the_server(
    postgres_url: URL, value: str, threshold: int | None
) -> None:
    engine = make_engine(postgres_url.update_query_dict({"prepare_threshold": value}))
    try:
        assert "prepare_threshold" not in engine.url.query
        with engine.connect() as connection:
            assert connection.connection.dbapi_connection.prepare_threshold == threshold  # type: ignore[union-attr]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_without_the_parameter_psycopg_keeps_its_default(postgres_url: URL) -> None:
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert connection.connection.dbapi_connection.prepare_threshold == 5  # type: ignore[union-attr]
    finally:
        engine.dispose()


def test_a_bad_prepare_threshold_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="prepare_threshold must be 'none' or a whole number, got 'never'"):
        make_engine("postgresql+psycopg://u@127.0.0.1/db?prepare_threshold=never")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("foo://x/y", "unknown database 'foo'"),
        ("mysql+pymysql://u@h/db", "PostgreSQL or SQLite, not 'mysql'"),
        ("postgresql+asyncpg://u@h/db", "'postgresql+asyncpg' is an asyncio driver"),
        ("sqlite+aiosqlite:///x.db", "'sqlite+aiosqlite' is an asyncio driver"),
        ("postgresql+pg8000://u@h/db", "the driver of 'postgresql+pg8000' is not installed (pg8000 is missing)"),
    ],
)
def test_a_missing_unknown_or_unsupported_driver_is_refused_before_connecting(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        make_engine(url)


def test_the_drivers_dramatiq_opmetrics_installs_pass_the_check() -> None:
    from sqlalchemy.engine import make_url

    check_driver(make_url("postgresql+psycopg://u@h/db"))
    check_driver(make_url("sqlite:///x.db"))


def test_a_statement_timeout_of_0_sends_no_startup_option_so_the_servers_setting_applies() -> None:
    url = URL.create("postgresql+psycopg", host="127.0.0.1", database="app")
    assert "options" not in postgresql_timeouts(url, statement_timeout_s=0)
    assert postgresql_timeouts(url, statement_timeout_s=2.5)["options"] == "-c statement_timeout=2500"
    with_schema = url.update_query_dict({"options": "-csearch_path=metrics"})
    assert postgresql_timeouts(with_schema, statement_timeout_s=0).get("options") is None
