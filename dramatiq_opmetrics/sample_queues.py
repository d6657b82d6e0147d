"""The ``sample-queues`` sidecar: fleet-wide queue depth from a process of its own, written to the database.

For people who run sampling outside their workers (or in addition: the claim keeps it to one sample per
queue and state per interval, whoever takes it). It also keeps the recent tier current
(:class:`~dramatiq_opmetrics.recent_tier.RecentTierFolder`), sharing the claims of the workers' folders, so a
fleet whose workers do not fold (``recent_fold_interval_s=0``) still has a current tier; ``fold=False``
(``--no-fold``) turns that off.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import dramatiq
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from .config import ConfigurationError
from .database import engine_for
from .middleware import recent_tier_settings
from .models import IntervalClaim
from .queue_depth_sampler import DEFAULT_QUEUE_DEPTH_INTERVAL_S, QueueDepthSampler, describe_error, fleet_claim
from .recent_tier import RecentTierFolder
from .samples import Sample
from .writer import write_samples

logger = logging.getLogger(__name__)


def load_broker(spec: str) -> dramatiq.Broker:
    """Import ``module:attribute`` (the current directory is importable) and return that broker.

    Raises:
      ConfigurationError: if the spec is malformed, the module cannot be imported or the attribute is not
        a Dramatiq broker.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--broker must look like module:attribute (e.g. myapp.tasks:broker), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(f"cannot import the broker's module {module_name!r}: {error}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, dramatiq.Broker):
        raise ConfigurationError(f"{spec} is a {type(target).__name__}, not a Dramatiq broker")
    return target


class DatabaseSink:
    """Writes each pass's samples to the metrics database in one transaction.

    Parameters:
      engine(Engine): an engine on the migrated metrics database.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(self, new_samples: Sequence[Sample]) -> None:
        """Write ``new_samples`` and commit."""
        with self.engine.begin() as connection:
            write_samples(connection, new_samples)


def run_sample_queues(
    broker_spec: str,
    *,
    database_url: str | None = None,
    interval_s: float = DEFAULT_QUEUE_DEPTH_INTERVAL_S,
    once: bool = False,
    queues: Sequence[str] = (),
    fold: bool = True,
) -> int:
    """Sample the queues of the broker ``broker_spec`` into the metrics database; return the exit status.

    With ``once``, sample the current interval (unless another process already did) and return; a broker
    error is one line on standard error and status 2 (database errors propagate to the command line).
    Otherwise sample every ``interval_s`` seconds until SIGTERM or SIGINT, logging and skipping intervals
    during an outage. Sidecars and workers running ``OpMetrics`` share the claims, so together they still
    write one sample per queue and state per interval.

    Until stopped (not with ``once``), it also folds the recent tier, unless ``fold`` is False or
    ``$OPMETRICS_RECENT_FOLD_INTERVAL_S`` is 0: every ``$OPMETRICS_RECENT_FOLD_INTERVAL_S`` seconds (default
    60), keeping ``$OPMETRICS_RECENT_RETENTION_DAYS`` days of buckets (default 3), the settings the workers'
    middleware reads (:func:`~dramatiq_opmetrics.middleware.recent_tier_settings`); one process of the
    fleet, sidecar or worker, folds per interval. A failed fold is logged once for its interval.

    Raises:
      ConfigurationError: a bad broker, ``--interval``, ``--queue`` or fold setting.
    """
    broker = load_broker(broker_spec)
    try:
        fold_interval_s, retention_days = recent_tier_settings()
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    with engine_for(database_url) as engine:
        with engine.connect() as connection:  # unreachable or not migrated: a clear error now, not later
            connection.execute(select(IntervalClaim.job).limit(1))
        try:
            sampler = QueueDepthSampler(
                broker, DatabaseSink(engine), interval_s=interval_s, queues=queues, engine=engine
            )
        except ValueError as error:
            raise ConfigurationError(f"bad --interval or --queue: {error}") from None
        if not sampler.supported:
            sampler.start()  # logs that the broker is not supported
            print(f"queue depth is not supported for {type(broker).__name__}; nothing to sample", file=sys.stderr)
            return 1
        if once:
            try:
                written = sampler.sample()
            except SQLAlchemyError:
                raise
            except Exception as error:
                print(f"dramatiq-opmetrics: error: cannot read the broker: {describe_error(error)}", file=sys.stderr)
                return 2
            finally:
                sampler.stop()
            if written is None:
                print("this interval was already sampled by another process")
            else:
                print(f"sampled {len(sampler.queues())} queues: {len(written)} samples")
            return 0
        folder = None
        if fold and fold_interval_s:
            claim = fleet_claim(broker, engine)
            folder = RecentTierFolder(engine, interval_s=fold_interval_s, retention_days=retention_days, claim=claim)
        return _run_until_stopped(sampler, folder)


def _run_until_stopped(sampler: QueueDepthSampler, folder: RecentTierFolder | None) -> int:
    stopped = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        sampler.start()
        if folder is not None:
            folder.start()
        folding = f" and folding the recent tier every {folder.interval_s:g} s" if folder is not None else ""
        print(
            f"sampling {len(sampler.queues())} queues every {sampler.interval_s:g} s{folding}; stop with Ctrl-C",
            flush=True,
        )
        stopped.wait()
    finally:
        sampler.stop()
        if folder is not None:
            folder.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
