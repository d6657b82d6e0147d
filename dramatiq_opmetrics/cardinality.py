"""``LabelSetCap``: at most so many distinct label sets per metric type in one process; the rest are folded.

Labels must stay few and bounded, but one actor labelling each call with a user or document id makes a
new label set per call: each costs memory in every process that records it (the buffer's, the writer's and
the middleware's caches hold it for good), a row in the label-set table and a daily row per metric type.
So each process keeps at most ``max_label_sets_per_metric`` distinct label sets per metric type (default
:data:`DEFAULT_MAX_LABEL_SETS_PER_METRIC`, sized for real fleets: 1,000 actors on 10 queues). Beyond that,
a sample with a label set not kept yet is not dropped but *folded*: written under the one overflow label
set :data:`OVERFLOW_LABEL_SET` (``{"opmetrics_overflow": "true"}``), so every count and sum of its metric
type stays right and only its labels are lost. Label sets kept before the cap was reached keep being
recorded as they are. One warning per metric type per ``warning_interval_s`` says how many samples were
folded and names the label with the most distinct values, the one to fix.

The cap is per process and for its lifetime: a worker that restarts starts afresh. A process's caches of
label sets hold at most ``max_label_sets_per_metric`` label sets per metric type that has labels of its own
(about :data:`LABEL_SET_BYTES` bytes each), so their memory stays bounded whatever the labels.

Checking a label set already kept is one dict lookup, without a lock; only a label set not seen yet takes
the lock. The processed-message samples (``wait_time``, ``processing_time`` and ``skipped``) share one
label set per actor and queue, counted under ``processing_time``.
"""

from __future__ import annotations

import logging
import threading
import time

from .labels import LabelSet, make_label_set

#: Distinct label sets per metric type a process records before it folds new ones into the overflow set.
DEFAULT_MAX_LABEL_SETS_PER_METRIC = 10_000
#: Environment variable for ``max_label_sets_per_metric``.
MAX_LABEL_SETS_ENV_VAR = "OPMETRICS_MAX_LABEL_SETS_PER_METRIC"
#: The label that marks the overflow label set.
OVERFLOW_LABEL = "opmetrics_overflow"
#: The label set that samples beyond the cap are written under.
OVERFLOW_LABEL_SET = make_label_set({OVERFLOW_LABEL: "true"})
#: At most one warning about folded samples per metric type per this many seconds.
DEFAULT_FOLD_WARNING_INTERVAL_S = 30.0
#: Bytes of memory a label set of a few short labels kept for one metric type costs at most, summed over every
#: cache of a worker process (buffer, writer, middleware, this cap): measured by ``tests/test_cardinality.py``.
LABEL_SET_BYTES = 1_000

logger = logging.getLogger(__name__)


class LabelSetCap:
    """Keeps at most ``max_label_sets_per_metric`` distinct label sets per metric type; folds the rest.

    Example::

        cap = LabelSetCap(max_label_sets_per_metric=1_000)
        label_set = cap.admit("prompt_tokens", sample.label_set)  # the overflow label set beyond the cap

    Parameters:
      max_label_sets_per_metric(int): distinct label sets kept per metric type; default
        :data:`DEFAULT_MAX_LABEL_SETS_PER_METRIC` (10,000).
      warning_interval_s(float): at most one warning per metric type per this many seconds; default
        :data:`DEFAULT_FOLD_WARNING_INTERVAL_S` (30).

    Raises:
      ValueError: if ``max_label_sets_per_metric`` is not a positive integer or ``warning_interval_s`` is
        not a positive number.
    """

    def __init__(
        self,
        max_label_sets_per_metric: int = DEFAULT_MAX_LABEL_SETS_PER_METRIC,
        *,
        warning_interval_s: float = DEFAULT_FOLD_WARNING_INTERVAL_S,
    ) -> None:
        value = max_label_sets_per_metric
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_label_sets_per_metric must be a positive integer, got {value!r}")
        interval = warning_interval_s
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval < float("inf"):
            raise ValueError(f"warning_interval_s must be a positive number of seconds, got {interval!r}")
        self.max_label_sets_per_metric = value
        self.warning_interval_s = float(interval)
        #: Per metric type, the labels keys kept.
        self._kept: dict[str, set[str]] = {}
        #: Per metric type, the distinct values of each label among the label sets kept (to name the culprit).
        self._values: dict[str, dict[str, set[str]]] = {}
        #: Samples folded into the overflow label set since this cap was made, per metric type.
        self.folded_total: dict[str, int] = {}
        self._unwarned: dict[str, int] = {}
        self._next_warning_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def admit(self, metric_type: str, label_set: LabelSet, samples: int = 1) -> LabelSet:
        """``label_set`` if it is kept for ``metric_type`` (a :class:`MetricType` value), else the overflow
        label set, counting ``samples`` folded samples."""
        kept = self._kept.get(metric_type)
        if kept is not None and label_set.labels_key in kept:
            return label_set
        return self._admit_new(metric_type, label_set, samples)

    def kept_count(self, metric_type: str) -> int:
        """How many label sets are kept for ``metric_type``."""
        return len(self._kept.get(metric_type, ()))

    def _admit_new(self, metric_type: str, label_set: LabelSet, samples: int) -> LabelSet:
        with self._lock:
            kept = self._kept.setdefault(metric_type, set())
            if label_set.labels_key in kept or label_set is OVERFLOW_LABEL_SET:
                return label_set
            if len(kept) < self.max_label_sets_per_metric:
                values = self._values.setdefault(metric_type, {})
                for key, value in label_set.labels.items():
                    values.setdefault(key, set()).add(value)
                kept.add(label_set.labels_key)
                return label_set
            self.folded_total[metric_type] = self.folded_total.get(metric_type, 0) + samples
            self._unwarned[metric_type] = self._unwarned.get(metric_type, 0) + samples
            now = time.monotonic()
            if now < self._next_warning_at.get(metric_type, 0.0):
                return OVERFLOW_LABEL_SET
            self._next_warning_at[metric_type] = now + self.warning_interval_s
            folded = self._unwarned.pop(metric_type)
            culprit, distinct = max(
                ((key, len(found)) for key, found in self._values.get(metric_type, {}).items()),
                key=lambda item: item[1],
                default=("(none)", 0),
            )
        logger.warning(
            "Folded %d %s samples into the overflow label set {%s: true} (%d in all): this process keeps at"
            " most %d label sets per metric type (max_label_sets_per_metric). Label %r has the most distinct"
            " values (%d); labels must stay few and bounded (no user, document or message ids).",
            folded,
            metric_type,
            OVERFLOW_LABEL,
            self.folded_total[metric_type],
            self.max_label_sets_per_metric,
            culprit,
            distinct,
            extra={
                "event": "label_sets_folded",
                "metric_type": metric_type,
                "folded": folded,
                "label": culprit,
                "distinct_values": distinct,
            },
        )
        return OVERFLOW_LABEL_SET
