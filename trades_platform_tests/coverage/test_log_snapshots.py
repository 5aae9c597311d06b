"""What a snapshot of the coverage log keeps and drops (on the broker: test_topic_index)."""

from __future__ import annotations

from typing import Any

import orjson

from trades_platform.coverage.log_snapshots import (
    STALE_HOLDER_SECONDS,
    LogView,
    snapshot_parts,
    snapshot_records,
)

NOW_MS = 1_796_000_000_000


def _view(*records: tuple[str, Any]) -> LogView:
    log = [
        (offset, key.encode(), orjson.dumps(value)) for offset, (key, value) in enumerate(records)
    ]
    return LogView(log, len(log), None, len(log), len(log))


def _kept(view: LogView) -> dict[str, tuple[int, Any]]:
    return {
        key.decode(): (offset, orjson.loads(value))
        for offset, key, value in snapshot_records(view, now_ms=NOW_MS)
    }


def _claim(owner: str, **extra: Any) -> dict[str, Any]:
    return {"pair": "BTC/USD", "owner": owner, "acquired_ms": NOW_MS - 1000, **extra}


def _beat(owner: str, beat: int, **extra: Any) -> dict[str, Any]:
    return {"owner": owner, "beat": beat, "heartbeat_ms": NOW_MS - 500, **extra}


def test_keeps_the_latest_record_of_each_key_at_its_original_offset() -> None:
    kept = _kept(
        _view(
            ("live-claim|BTC/USD|a", _claim("a")),
            ("live-beat|BTC/USD|a", _beat("a", 1, from_id=10)),
            ("live-beat|BTC/USD|a", _beat("a", 2, from_id=10)),
            ("index|0", {"next_offset": 5}),
            ("index|0", {"next_offset": 9}),
        )
    )
    assert kept == {
        "live-claim|BTC/USD|a": (0, _claim("a")),
        "live-beat|BTC/USD|a": (2, _beat("a", 2, from_id=10)),
        "index|0": (4, {"next_offset": 9}),
    }


def test_drops_released_and_long_silent_holders_and_what_no_reader_uses() -> None:
    stale_ms = NOW_MS - int(STALE_HOLDER_SECONDS * 1000) - 1
    kept = _kept(
        _view(
            ("window|BTC/USD|done", _claim("done", start_us=0, end_us=1)),
            ("window-beat|BTC/USD|done", _beat("done", 3)),
            ("window|BTC/USD|done", _claim("done", start_us=0, end_us=1, released=True)),
            ("live-claim|BTC/USD|gone", _claim("gone", acquired_ms=stale_ms)),
            ("live-beat|BTC/USD|gone", _beat("gone", 9, heartbeat_ms=stale_ms)),
            ("live-beat|BTC/USD|orphan", _beat("orphan", 1)),
            ("something-else", {"a": 1}),
            ("live-claim|BTC/USD|alive", _claim("alive")),
        )
    )
    assert list(kept) == ["live-claim|BTC/USD|alive"]


def test_a_record_readers_would_skip_does_not_replace_the_good_one_before_it() -> None:
    kept = _kept(
        _view(
            ("live-claim|BTC/USD|a", _claim("a")),
            ("live-beat|BTC/USD|a", _beat("a", 1, from_id=10)),
            ("live-beat|BTC/USD|a", {"owner": "a", "beat": "two"}),
            ("live-beat|BTC/USD|a", [1, 2]),
        )
    )
    assert kept["live-beat|BTC/USD|a"] == (1, _beat("a", 1, from_id=10))


def test_a_big_snapshot_is_split_into_parts_of_the_same_snapshot() -> None:
    records = [(f"index|{partition}", {"payload": "x" * 50_000}) for partition in range(20)]
    parts = snapshot_parts(_view(*records))
    assert len(parts) == 3
    values = [value for _, value in parts]
    assert {value["snapshot"] for value in values} == {values[0]["snapshot"]}
    assert [value["part"] for value in values] == [0, 1, 2]
    assert {value["as_of"] for value in values} == {19}
    assert sum(len(value["records"]) for value in values) == 20
