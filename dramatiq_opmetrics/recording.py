"""Metrics that only actor code knows: ``record_token_usage`` and ``record_confidence``.

Both go into the same buffer as the :class:`~dramatiq_opmetrics.OpMetrics` middleware's samples. Inside an
actor they are labelled with the current actor and queue (the middleware sets the context around each
message); outside an actor they use the writer of the last ``OpMetrics`` made in this process.

The context is a :class:`~contextvars.ContextVar` set in the worker thread, so async actors need nothing
more: Dramatiq's ``AsyncIO`` middleware hands the coroutine to its event loop thread with
``asyncio.run_coroutine_threadsafe``, whose ``call_soon_threadsafe`` copies the worker thread's context into
the task, and tasks and ``asyncio.to_thread`` copy it further. Only threads that do not copy contexts
(``threading.Thread``, ``loop.run_in_executor``) lose it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

from . import samples
from .config import ConfigurationError

#: Takes the samples of one recording call.
SampleSink = Callable[[Sequence[samples.Sample]], None]


class SampleTarget(Protocol):
    """Something that takes samples and writes them eventually (the middleware)."""

    def add_samples(self, new_samples: Sequence[samples.Sample]) -> None:
        """Buffer ``new_samples`` for writing."""


#: While an actor runs, a tuple whose first three items are where its samples go (a
#: :class:`SampleTarget`), the actor's name and the canonical queue; the middleware sets it around each
#: message and keeps its own items after these. Anything else (None by default) means "not in an actor".
current_actor: ContextVar[object] = ContextVar("dramatiq_opmetrics_current_actor", default=None)

_default_target: weakref.ReferenceType[SampleTarget] | None = None


def set_default_target(target: SampleTarget) -> None:
    """Make ``target`` take the samples recorded outside an actor (``OpMetrics`` does this when made)."""
    global _default_target
    _default_target = weakref.ref(target)


def record_token_usage(model: str, prompt_tokens: int, completion_tokens: int, **labels: str) -> None:
    """Record the prompt and completion tokens of one call to language model ``model``.

    Inside an actor the samples are labelled with ``actor`` and ``queue`` automatically (``labels`` may
    override them or add more). Buffered: returns at once and never touches the database.

    Example::

        @dramatiq.actor
        def summarise(document_id):
            response = client.chat.completions.create(model="gpt-4o-mini", messages=...)
            record_token_usage("gpt-4o-mini", response.usage.prompt_tokens, response.usage.completion_tokens)

    Raises:
      ValueError: for a token count that is not an integer in [0, 2**53], a ``model`` that is not a
        non-empty string (None included), or bad labels (nothing is recorded).
      ConfigurationError: outside an actor, when no ``OpMetrics`` middleware was made in this process.
    """
    target, merged = _target_and_labels(labels)
    actor = merged.pop("actor", None)
    target.add_samples(samples.token_usage(model, prompt_tokens, completion_tokens, actor=actor, **merged))


def record_confidence(value: float, **labels: str) -> None:
    """Record a confidence score ``value`` in [0, 1], labelled with its bucket (``bucket=0.9-1.0``).

    Inside an actor the sample is labelled with ``actor`` and ``queue`` automatically (``labels`` may
    override them or add more). Buffered: returns at once and never touches the database.

    Raises:
      ValueError: for a value outside [0, 1], NaN, or bad labels (nothing is recorded).
      ConfigurationError: outside an actor, when no ``OpMetrics`` middleware was made in this process.
    """
    target, merged = _target_and_labels(labels)
    target.add_samples(samples.confidence(value, **merged))


def _target_and_labels(labels: dict[str, str]) -> tuple[SampleTarget, dict[str, Any]]:
    context = current_actor.get()
    if type(context) is tuple:
        return context[0], {"actor": context[1], "queue": context[2], **labels}
    target = _default_target() if _default_target is not None else None
    if target is None:
        raise ConfigurationError(
            "no metrics writer is configured in this process: add the middleware to your broker, for example"
            " broker.add_middleware(OpMetrics(database_url=...)), before recording metrics outside an actor"
        )
    return target, dict(labels)
