"""Keeps the trades topic's index fresh while a live run writes, so any start reads little."""

from __future__ import annotations

import threading
from collections.abc import Callable

from confluent_kafka import KafkaException

from trades_platform.coverage.topic_ids import ScanCost, scan_topic_ids
from trades_platform.settings import KafkaSettings

# How often a live run checkpoints every partition of the trades topic and snapshots the coverage
# log: a writer that starts reads at most about this long of the topic's newest records.
INDEX_REFRESH_SECONDS = 300.0


class IndexRefresher:
    """A thread that checkpoints the trades topic and compacts the coverage log periodically.

    Each pass reads only what was added since the last checkpoint (topic_index.py). A pass that
    fails is reported and tried again at the next interval: the index only saves reading.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        interval_seconds: float = INDEX_REFRESH_SECONDS,
        on_failure: Callable[[str], None],
    ) -> None:
        self._settings = settings
        self._interval = interval_seconds
        self._on_failure = on_failure
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="index refresher", daemon=True)
        self.passes = 0

    def start(self) -> IndexRefresher:
        """Start refreshing in the background."""
        self._thread.start()
        return self

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Stop; a pass under way is left to finish on its own (a daemon thread) after a wait."""
        self._stop.set()
        # A pass stuck on an unreachable broker must not hold the run's stop back.
        self._thread.join(timeout_seconds)

    def refresh(self) -> ScanCost:
        """One pass: checkpoint every partition read past its checkpoint; snapshot the log."""
        cost = ScanCost()
        scan_topic_ids(self._settings, [], checkpoint_after_records=1, cost=cost)
        self.passes += 1
        return cost

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except (TimeoutError, KafkaException, ValueError) as error:
                self._on_failure(
                    f"could not refresh the index of {self._settings.topic!r}: {error}"
                )
