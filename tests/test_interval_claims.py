from __future__ import annotations

import datetime as dt
import threading

import pytest
import redis
from conftest import REDIS_URL
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, func, select

from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.interval_claims import (
    DATABASE_CLAIM_RETENTION,
    REDIS_CLAIM_MIN_TTL_MS,
    DatabaseIntervalClaim,
    LocalIntervalClaim,
    RedisIntervalClaim,
    interval_start,
)
from dramatiq_opmetrics.models import IntervalClaim as IntervalClaimRow

START = dt.datetime(2026, 11, 27, 12, 0, 15, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("at", "interval_s", "expected"),
    [
        (dt.datetime(2026, 11, 27, 12, 0, 29, 999000, tzinfo=dt.UTC), 15, START),
        (START, 15, START),
        (dt.datetime(2026, 11, 27, 12, 0, 16, tzinfo=dt.UTC), 2.5, dt.datetime(2026, 11, 27, 12, 0, 15, tzinfo=dt.UTC)),
        (
            dt.datetime(2026, 11, 27, 13, 0, 16, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            60,
            START - dt.timedelta(seconds=15),
        ),
    ],
)
def test_interval_start_is_the_latest_wall_clock_multiple_of_the_interval(
    at: dt.datetime, interval_s: float, expected: dt.datetime
) -> None:
    assert interval_start(at, interval_s) == expected


def claim_together(claims: list[RedisIntervalClaim] | list[DatabaseIntervalClaim]) -> list[bool]:
    """Every one of ``claims`` claims the interval at START at the same moment, each in a thread of its own;
    return what they got, sorted."""
    results: list[bool] = []
    barrier = threading.Barrier(len(claims))

    def claim(one: RedisIntervalClaim | DatabaseIntervalClaim) -> None:
        barrier.wait()
        results.append(one.claim("queue_depth", START, 15))

    threads = [threading.Thread(target=claim, args=(one,)) for one in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(results)


def test_only_one_of_many_redis_claimers_wins_an_interval(redis_broker: RedisBroker) -> None:
    clients = [redis.Redis.from_url(REDIS_URL) for _ in range(8)]
    results = claim_together([RedisIntervalClaim(client, redis_broker.namespace) for client in clients])
    for client in clients:
        client.close()
    assert results == [False] * 7 + [True]


def test_a_late_redis_claim_of_an_interval_already_sampled_fails(redis_broker: RedisBroker) -> None:
    claims = RedisIntervalClaim(redis_broker.client, redis_broker.namespace)
    assert claims.claim("queue_depth", START, 15)
    assert not claims.claim("queue_depth", START, 15)
    assert claims.claim("queue_depth", START + dt.timedelta(seconds=15), 15)
    assert claims.claim("rollup", START, 15)


def test_a_redis_claim_key_lives_in_the_brokers_namespace_and_expires(redis_broker: RedisBroker) -> None:
    claims = RedisIntervalClaim(redis_broker.client, redis_broker.namespace)
    claims.claim("queue_depth", START, 3600)
    key = claims.key("queue_depth", START)
    assert key.startswith(f"{redis_broker.namespace}:")
    assert 3_600_000 < redis_broker.client.pttl(key) <= 7_200_000
    claims.claim("queue_depth", START, 1)
    assert 0 < redis_broker.client.pttl(claims.key("queue_depth", START)) <= 7_200_000
    claims.claim("queue_depth", START + dt.timedelta(seconds=1), 1)
    assert (
        REDIS_CLAIM_MIN_TTL_MS - 5000
        < redis_broker.client.pttl(claims.key("queue_depth", START + dt.timedelta(seconds=1)))
        <= REDIS_CLAIM_MIN_TTL_MS
    )


def test_a_database_claim_succeeds_once_per_job_and_interval_even_after_the_first_committed(engine: Engine) -> None:
    first, second = DatabaseIntervalClaim(engine), DatabaseIntervalClaim(engine)
    assert first.claim("queue_depth:stub", START, 15)
    assert not second.claim("queue_depth:stub", START, 15)
    assert not first.claim("queue_depth:stub", START, 15)
    assert second.claim("queue_depth:stub", START + dt.timedelta(seconds=15), 15)
    assert second.claim("queue_depth:other", START, 15)


def test_database_claims_race_to_exactly_one_winner_across_connections(engine: Engine) -> None:
    engines = [make_engine(engine.url) for _ in range(4)]
    results = claim_together([DatabaseIntervalClaim(own) for own in engines])
    for own in engines:
        own.dispose()
    assert results == [False, False, False, True]


def test_the_winner_prunes_claims_older_than_the_retention(engine: Engine) -> None:
    claims = DatabaseIntervalClaim(engine)
    old = START - DATABASE_CLAIM_RETENTION - dt.timedelta(seconds=15)
    claims.claim("queue_depth", old, 15)
    claims.claim("other", old, 15)
    claims.claim("queue_depth", START - DATABASE_CLAIM_RETENTION, 15)
    claims.claim("queue_depth", START, 15)
    with engine.connect() as connection:
        rows = connection.execute(select(IntervalClaimRow.job, IntervalClaimRow.interval_start)).all()
        assert connection.execute(select(func.count()).select_from(IntervalClaimRow)).scalar_one() == 3
    assert sorted(rows) == [
        ("other", old),
        ("queue_depth", START - DATABASE_CLAIM_RETENTION),
        ("queue_depth", START),
    ]


def test_a_local_claim_gives_each_interval_once_and_never_an_earlier_one() -> None:
    claims = LocalIntervalClaim()
    assert claims.claim("queue_depth", START, 15)
    assert not claims.claim("queue_depth", START, 15)
    assert not claims.claim("queue_depth", START - dt.timedelta(seconds=15), 15)
    assert claims.claim("queue_depth", START + dt.timedelta(seconds=15), 15)
    assert claims.claim("rollup", START, 15)
