"""dramatiq-opmetrics: durable operational metrics for Dramatiq worker fleets.

The public API:

- :class:`MetricsCollector`: metric rows inside your own SQLAlchemy transaction.
- :class:`MetricType`: the metric types recorded.
- :func:`query_metrics`, :func:`query_daily_series` and :class:`MetricStats`: statistics over any range of
  days from the daily rollup (percentiles within 1%), today included.
- :class:`QueueDepthSampler`: fleet-wide queue depth, one sample per queue and state per interval.
"""

from __future__ import annotations

from .collector import MetricsCollector
from .config import ConfigurationError
from .metric_types import MetricType
from .query import MetricStats, query_daily_series, query_metrics
from .queue_depth_sampler import QueueDepthSampler

__all__ = [
    "ConfigurationError",
    "MetricStats",
    "MetricType",
    "MetricsCollector",
    "QueueDepthSampler",
    "query_daily_series",
    "query_metrics",
]
__version__ = "0.1.0"
