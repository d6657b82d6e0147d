"""dramatiq-opmetrics: durable operational metrics for Dramatiq worker fleets.

The public API:

- :class:`MetricsCollector`: metric rows inside your own SQLAlchemy transaction.
- :class:`MetricType`: the metric types recorded.
- :class:`OpMetrics`: the middleware measuring every message, with a buffered background writer.
- :func:`record_token_usage`, :func:`record_confidence`: metrics from actor code, buffered.
- :class:`QueueDepthSampler`: fleet-wide queue depth and oldest-message age, once per interval.
- :class:`WorkerSampler`: each worker process's threads and busy threads, once per interval.
- :func:`query_metrics`, :func:`query_daily_series` and :class:`MetricStats`: statistics over any range of
  days from the daily rollup (percentiles within 1%), today included.
- :func:`register_rollup_actor`: the periodiq-scheduled nightly rollup and prune on your broker.
- :func:`query_series`, :func:`query_totals`, :func:`query_stalled` and :class:`SeriesPoint`: minute-resolution
  series and totals over any time range (from the recent tier and the raw rows not folded yet), and stalled
  queues.
"""

from __future__ import annotations

from .collector import MetricsCollector
from .config import ConfigurationError
from .metric_types import MetricType
from .middleware import OpMetrics
from .periodic import register_rollup_actor
from .query import MetricStats, query_daily_series, query_metrics
from .queue_depth_sampler import QueueDepthSampler
from .recording import record_confidence, record_token_usage
from .series import SeriesPoint, query_series, query_stalled, query_totals
from .worker_sampler import WorkerSampler

__all__ = [
    "ConfigurationError",
    "MetricStats",
    "MetricType",
    "MetricsCollector",
    "OpMetrics",
    "QueueDepthSampler",
    "SeriesPoint",
    "WorkerSampler",
    "query_daily_series",
    "query_metrics",
    "query_series",
    "query_stalled",
    "query_totals",
    "record_confidence",
    "record_token_usage",
    "register_rollup_actor",
]
__version__ = "0.1.0"
