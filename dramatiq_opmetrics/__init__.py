"""dramatiq-opmetrics: durable operational metrics for Dramatiq worker fleets.

The public API:

- :class:`MetricsCollector`: metric rows inside your own SQLAlchemy transaction.
- :class:`MetricType`: the metric types recorded.
- :class:`QueueDepthSampler`: fleet-wide queue depth, one sample per queue and state per interval.
"""

from __future__ import annotations

from .collector import MetricsCollector
from .config import ConfigurationError
from .metric_types import MetricType
from .queue_depth_sampler import QueueDepthSampler

__all__ = ["ConfigurationError", "MetricType", "MetricsCollector", "QueueDepthSampler"]
__version__ = "0.1.0"
