"""dramatiq-opmetrics: durable operational metrics for Dramatiq worker fleets.

The public API:

- :class:`MetricsCollector`: metric rows inside your own SQLAlchemy transaction.
- :class:`MetricType`: the metric types recorded.
"""

from __future__ import annotations

from .collector import MetricsCollector
from .config import ConfigurationError
from .metric_types import MetricType

__all__ = ["ConfigurationError", "MetricType", "MetricsCollector"]
__version__ = "0.1.0"
