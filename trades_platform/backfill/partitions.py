"""The backfill's partitions: UTC day x pair, and the time window each partition covers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from dagster import (
    DailyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
)

from trades_platform.settings import BackfillSettings, configured_pairs, from_environment
from trades_platform.trade import format_time_us

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_US = 86_400_000_000


def backfill_start_date() -> str:
    """First partition day (`BACKFILL_START_DATE`), as `YYYY-MM-DD`."""
    return from_environment(BackfillSettings).start_date.isoformat()


def trades_history_partitions() -> MultiPartitionsDefinition:
    """Every UTC day since the start date (up to yesterday) x every configured pair."""
    return MultiPartitionsDefinition(
        {
            # end_offset=0: the newest partition is yesterday, the last day that is over.
            "date": DailyPartitionsDefinition(
                start_date=backfill_start_date(), timezone="UTC", end_offset=0
            ),
            "pair": StaticPartitionsDefinition(configured_pairs()),
        }
    )


# Read once, when the definitions load: the partitions are part of the definitions.
TRADES_HISTORY_PARTITIONS = trades_history_partitions()


@dataclass(frozen=True, slots=True)
class PartitionWindow:
    """One partition: a pair and the half-open UTC day [start_us, end_us) it owns."""

    pair: str
    day: date
    start_us: int
    end_us: int

    @classmethod
    def from_key(cls, key: str | MultiPartitionKey) -> PartitionWindow:
        """`2024-01-02|BTC/USD` (or the MultiPartitionKey) -> its window."""
        if isinstance(key, MultiPartitionKey):
            day, pair = key.keys_by_dimension["date"], key.keys_by_dimension["pair"]
        else:
            # Dimensions are joined in name order: date, then pair.
            day, separator, pair = key.partition("|")
            if not separator or not pair:
                raise ValueError(f"partition key {key!r} is not `YYYY-MM-DD|PAIR`")
        return cls.for_day(pair, date.fromisoformat(day))

    @classmethod
    def for_day(cls, pair: str, day: date) -> PartitionWindow:
        """The window of `pair` on UTC day `day`."""
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        start_us = (start - _EPOCH) // timedelta(microseconds=1)
        return cls(pair=pair, day=day, start_us=start_us, end_us=start_us + _DAY_US)

    @property
    def start_ms(self) -> int:
        """Window start as a Kafka timestamp (ms); day boundaries are whole milliseconds."""
        return self.start_us // 1000

    @property
    def end_ms(self) -> int:
        """Window end (exclusive) as a Kafka timestamp (ms)."""
        return self.end_us // 1000

    def describe(self) -> str:
        """`BTC/USD [2024-01-02T00:00:00.000000Z, 2024-01-03T00:00:00.000000Z)`."""
        return f"{self.pair} [{format_time_us(self.start_us)}, {format_time_us(self.end_us)})"
