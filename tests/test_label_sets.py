"""Label-set registration: ids for label sets, inserted once, by any number of processes at once."""

from __future__ import annotations

import multiprocessing
import queue
import random
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.label_sets import resolve_label_set_ids
from dramatiq_opmetrics.labels import make_label_set
from dramatiq_opmetrics.models import LabelSet

#: Rounds of the race, processes in each, and new label sets they all register in each round.
ROUNDS, PROCESSES, LABEL_SETS = 20, 4, 2000
#: Attempts a racing process makes at one round's registration (a deadlock is counted, then retried).
ATTEMPTS = 5
#: Seconds a racer or the test waits for the others at most.
RACE_TIMEOUT_S = 60.0


def round_label_sets(round_: int) -> list[dict[str, str]]:
    """The labels of the label sets every process registers in ``round_``: new ones each round."""
    return [{"actor": f"actor{i}", "queue": f"round{round_}"} for i in range(LABEL_SETS)]


def race(url: str, seed: int, start: Any, results: Any) -> None:
    """One racing process: each round, wait for the others, then register the round's label sets in an order
    of its own, in one transaction on an engine of its own. Puts ``(round, ids, deadlocks)`` per round, or
    ``("error", text)``."""
    try:
        engine = make_engine(url)
        shuffle = random.Random(seed).shuffle
        for round_ in range(ROUNDS):
            label_sets = [make_label_set(labels) for labels in round_label_sets(round_)]
            shuffle(label_sets)
            deadlocks = 0
            start.wait(RACE_TIMEOUT_S)
            for _attempt in range(ATTEMPTS):
                try:
                    with engine.begin() as connection:
                        ids = resolve_label_set_ids(connection, label_sets)
                    break
                except DBAPIError as error:
                    if not isinstance(error.orig, psycopg.errors.DeadlockDetected):
                        raise
                    deadlocks += 1  # a retry that hides a deadlock still counts
            else:
                raise RuntimeError(f"round {round_}: {ATTEMPTS} deadlocks in a row")
            results.put((round_, ids, deadlocks))
        engine.dispose()
    except BaseException as error:
        results.put(("error", f"{type(error).__name__}: {error}"))


@pytest.mark.postgres
def test_processes_registering_the_same_new_label_sets_in_any_order_never_deadlock_and_get_one_id_each(
    postgres_url: URL, postgres_engine: Engine
) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results = context.Queue()
    url = postgres_url.render_as_string(hide_password=False)
    racers = [context.Process(target=race, args=(url, seed, start, results)) for seed in range(PROCESSES)]
    for racer in racers:
        racer.start()
    answers: list[tuple[Any, ...]] = []
    try:
        while len(answers) < ROUNDS * PROCESSES and not any(answer[0] == "error" for answer in answers):
            answers.append(results.get(timeout=RACE_TIMEOUT_S))
    except queue.Empty:
        pass
    finally:
        for racer in racers:
            racer.join(RACE_TIMEOUT_S)
            if racer.is_alive():
                racer.kill()
    errors = [answer for answer in answers if answer[0] == "error"]
    deadlocks = sum(answer[2] for answer in answers if answer[0] != "error")
    assert not errors, (errors, f"{deadlocks} deadlocks in {len(answers)} registrations")
    assert deadlocks == 0, f"{deadlocks} deadlocks in {len(answers)} registrations"
    assert len(answers) == ROUNDS * PROCESSES

    with postgres_engine.connect() as connection:
        stored = {key: id_ for key, id_ in connection.execute(select(LabelSet.labels_key, LabelSet.id))}
        assert connection.execute(select(func.count()).select_from(LabelSet)).scalar_one() == ROUNDS * LABEL_SETS
    assert len(set(stored.values())) == len(stored) == ROUNDS * LABEL_SETS
    for round_, ids, _ in answers:
        wanted = {make_label_set(labels).labels_key for labels in round_label_sets(round_)}
        assert ids == {key: stored[key] for key in wanted}
