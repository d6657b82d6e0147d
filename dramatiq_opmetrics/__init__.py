"""dramatiq-opmetrics: durable operational metrics for Dramatiq worker fleets.

The public API:

- :class:`MetricsCollector`: metric rows inside your own SQLAlchemy transaction.
- :class:`MetricType`: the metric types recorded.
- :class:`OpMetrics`: the middleware measuring every message, with a buffered background writer.
- :func:`record_token_usage`, :func:`record_confidence`: metrics from actor code, buffered.
- :class:`QueueDepthSampler`: fleet-wide queue depth, one sample per queue and state per interval.
"""

from __future__ import annotations

from .collector import MetricsCollector
from .config import ConfigurationError
from .metric_types import MetricType
from .middleware import OpMetrics
from .queue_depth_sampler import QueueDepthSampler
from .recording import record_confidence, record_token_usage

__all__ = [
    "ConfigurationError",
    "MetricType",
    "MetricsCollector",
    "OpMetrics",
    "QueueDepthSampler",
    "record_confidence",
    "record_token_usage",
]
__version__ = "0.1.0"
