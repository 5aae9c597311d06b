"""Scenarios of the live job that come out the same at any hour.

From about 23:50 UTC on, a backfill may reach the trades of the day about to end
(`backfill_may_reach`), so a live run's claims wait their grace period, one pair after the other,
before it writes; the feed goes on meanwhile and its trades are written afterwards. A scenario
bounded in seconds then ends with fewer trades, and a fault that fires on a schedule hits the
waiting run instead of a streaming one. So: bound runs by trades, `grace_backlog` more than the
scenario needs (a bound in seconds, `grace_seconds` more), and switch faults on with
`once_every_pair_is_written`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from trades_platform.coverage.claims import CLAIM_GRACE_SECONDS
from trades_platform.live.progress import RUN_TOTALS_PREFIX
from trades_platform.live.tail import backfill_may_reach
from trades_platform.settings import KafkaSettings
from trades_platform.testing.topic import ids_by_pair, read_topic

# A live run's start before its first claim: the claim acquisition, the wait for its turn and
# the topic scan.
_START_SECONDS = 5.0
# A run's claims come within this long of `grace_backlog` being asked.
_LOOKAHEAD_US = 120 * 1_000_000


def grace_seconds(pairs: int) -> float:
    """How long a live run started now may take to make its claims: its start and their graces.

    Zero away from midnight UTC, where no claim on the feed's trades of the moment waits (the
    start is then not worth counting); ask right before the run.
    """
    now_us = int(time.time() * 1_000_000)
    # The window the claims may fall in is shorter than the grace window: its ends tell.
    if not any(backfill_may_reach(at, now_us=at) for at in (now_us, now_us + _LOOKAHEAD_US)):
        return 0.0
    return _START_SECONDS + CLAIM_GRACE_SECONDS * pairs


def grace_backlog(pairs: int, trades_per_second: float) -> int:
    """Trades a live run started now may find piled up once its claims are made (see above)."""
    return int(grace_seconds(pairs) * trades_per_second * pairs)


@contextmanager
def once_every_pair_is_written(
    broker: str, topic: str, pairs: Sequence[str], action: Callable[[], object]
) -> Iterator[threading.Event]:
    """Call `action` from a thread once every pair has trades in the topic; the event says it did.

    That is after the run's claims and any grace period they waited, so whatever `action` does
    (a fault switched on) meets a streaming run at any hour.
    """
    done = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        admin = AdminClient(KafkaSettings(broker_address=broker).client_config())
        while not stop.wait(0.2):
            try:
                if topic not in admin.list_topics(timeout=10).topics:
                    continue  # not created by the run yet; reading it would create it
                records = read_topic(broker, topic, idle_seconds=0.2, max_seconds=2)
            except (KafkaException, RuntimeError):
                continue  # a broker slow to answer: ask again
            if set(ids_by_pair(records)) >= set(pairs):
                action()
                done.set()
                return

    thread = threading.Thread(target=watch, name="once-every-pair-is-written", daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(15)


def live_run_totals(lines: Iterable[str]) -> dict[str, int | float]:
    """The live op's last "Run totals" (`LiveProgress.totals`) among log messages or CLI lines.

    Raises AssertionError when there is none or it is not a JSON object of numbers, so a test
    that reads it fails with what it found instead.
    """
    found = [line for line in lines if RUN_TOTALS_PREFIX in line]
    assert found, "the live op never logged its run totals"
    text = found[-1].rsplit(RUN_TOTALS_PREFIX, 1)[1].strip()
    totals = json.loads(text)
    assert isinstance(totals, dict), text
    assert all(
        isinstance(value, int | float) and not isinstance(value, bool) for value in totals.values()
    ), text
    return totals
