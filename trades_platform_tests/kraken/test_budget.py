"""The host-wide REST budget: separate processes really share one schedule (kraken/budget.py).

Spacing is measured on the host's monotonic clock, which every process shares: each call must
start at least one interval after the previous call of *any* process ended, and no two calls
may overlap. Run against the process-local `Pacer`, the same measurement fails (the control).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from trades_platform.kraken.budget import SharedPacer, budget_file
from trades_platform.kraken.rest import KrakenRestClient, Pacer, RestSettings
from trades_platform.settings import KrakenSettings, SettingsError, from_environment

RATE = 10.0  # calls per second: 0.1 s apart, so the tests stay short
CALL_SECONDS = 0.03  # how long each fake call takes
CALLS_PER_PROCESS = 12


def _calls(path: str, shared: bool, purpose: str, start_at: float, queue: object) -> None:
    """In a child process: make paced fake calls; report (start, end) of each."""
    pacer = SharedPacer(path, RATE, purpose=purpose) if shared else Pacer(RATE)  # type: ignore[arg-type]
    time.sleep(max(0.0, start_at - time.monotonic()))
    spans = []
    for _ in range(CALLS_PER_PROCESS):
        pacer.wait()
        began = time.monotonic()
        time.sleep(CALL_SECONDS)
        ended = time.monotonic()
        pacer.done()
        spans.append((began, ended))
    queue.put((os.getpid(), spans))  # type: ignore[attr-defined]


def _run(path: Path, shared: bool, purposes: list[str]) -> list[tuple[int, float, float]]:
    """Start one process per purpose at once; every call as (pid, start, end), by start."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start_at = time.monotonic() + 2.0  # after every child has imported and created its pacer
    children = [
        context.Process(target=_calls, args=(str(path), shared, purpose, start_at, queue))
        for purpose in purposes
    ]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    return sorted((pid, a, b) for pid, spans in results for a, b in spans)


def _gaps(calls: list[tuple[int, float, float]]) -> list[float]:
    """From each call's end to the next call's start, in the order calls started."""
    ordered = sorted(calls, key=lambda call: call[1])
    return [after[1] - before[2] for before, after in itertools.pairwise(ordered)]


def test_two_processes_share_one_budget_spaced_from_the_end_of_each_call(tmp_path: Path) -> None:
    calls = _run(tmp_path / "budget.json", shared=True, purposes=["backfill", "backfill"])
    gaps = _gaps(calls)
    first, last = min(c[1] for c in calls), max(c[2] for c in calls)
    rate = (len(calls) - 1) / (max(c[1] for c in calls) - first)
    print(
        f"{len(calls)} calls of 2 processes in {last - first:.2f}s: {rate:.2f} calls/s "
        f"(budget {RATE:g}/s), smallest end-to-start gap {min(gaps) * 1000:.1f} ms"
    )
    assert len({c[0] for c in calls}) == 2
    # Never early (the interval, from the end of the previous call, whichever process made it);
    # 1 ms for the clock reads around the sleep.
    assert min(gaps) >= 1 / RATE - 0.001
    # ... and not wasteful: the shared schedule is about as busy as one process alone would be.
    assert rate >= 0.8 / (1 / RATE + CALL_SECONDS)


def test_separate_pacers_without_the_shared_file_overrun_the_budget(tmp_path: Path) -> None:
    """The control: the measurement above fails for two process-local pacers."""
    calls = _run(tmp_path / "unused.json", shared=False, purposes=["backfill", "backfill"])
    assert min(_gaps(calls)) < 1 / RATE - 0.001


def test_heals_go_before_waiting_backfills_and_older_backfills_before_newer(
    tmp_path: Path,
) -> None:
    """Ranks on one process's clock: a heal waiting beside backfills is served first."""
    path = tmp_path / "budget.json"
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    clock = lambda: now[0]  # noqa: E731
    old = SharedPacer(path, 1.0, purpose="backfill", created=1.0, clock=clock, sleep=sleep)
    new = SharedPacer(path, 1.0, purpose="backfill", created=2.0, clock=clock, sleep=sleep)
    heal = SharedPacer(path, 1.0, purpose="heal", created=3.0, clock=clock, sleep=sleep)
    old.wait()
    old.done()
    # The new backfill and the heal both wait for the next slot; the heal is registered ahead.
    new_state = new._state  # registers a waiter by hand
    with new_state() as state:
        state["waiters"]["x"] = {"rank": [2, 2.0], "pid": os.getpid(), "host": "", "seen": 1e18}
    assert heal.wait() == pytest.approx(1.0)  # a full interval after the end, then first
    heal.done()
    with new_state() as state:
        state["waiters"].clear()
    assert new.wait() == pytest.approx(1.0)
    new.done()


def test_a_holder_that_died_in_its_call_does_not_block_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_hold_and_die, args=(str(path),))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    began = time.monotonic()
    SharedPacer(path, RATE).wait()
    # Its call never ended, so the schedule holds one interval from its start, not the hold bound.
    assert time.monotonic() - began < 1.0


def _hold_and_die(path: str) -> None:
    """Take the budget, never call done (as if killed in the call), and exit."""
    SharedPacer(path, RATE, hold_seconds=600).wait()


def test_a_call_slow_to_answer_holds_the_others_back_two_intervals_not_until_it_ends(
    tmp_path: Path,
) -> None:
    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    def clock() -> float:
        return now[0]

    path = tmp_path / "budget.json"
    heal = SharedPacer(path, 1.0, purpose="heal", hold_seconds=600, clock=clock, sleep=sleep)
    backfill = SharedPacer(path, 1.0, purpose="backfill", clock=clock, sleep=sleep)
    heal.wait()  # a heal page the server will take 100 s to answer
    assert backfill.wait() == pytest.approx(2.0, abs=0.02)
    backfill.done()
    # The slow page's answer comes at last: the next call is an interval after it.
    now[0] = 200.0
    heal.done()
    assert backfill.wait() == pytest.approx(1.0, abs=0.02)


def test_the_budget_file_is_per_server_and_per_pair(tmp_path: Path) -> None:
    one = budget_file(tmp_path, "https://api.kraken.com")
    assert one == budget_file(tmp_path, "https://api.kraken.com/")
    assert one != budget_file(tmp_path, "http://127.0.0.1:8765")
    assert one != budget_file(tmp_path, "https://api.kraken.com", "XBTUSD")


def test_clients_pace_per_ip_by_default_and_per_pair_when_set(tmp_path: Path) -> None:
    def client(scope: str) -> KrakenRestClient:
        return KrakenRestClient(
            RestSettings(url="http://kraken.test", budget_dir=str(tmp_path), budget_scope=scope)
        )

    ip = client("ip")
    assert ip._pacer_for("XBTUSD") is ip._pacer_for(None)
    per_pair = client("pair")
    by_pair = per_pair._pacer_for("XBTUSD")
    assert by_pair is not per_pair._pacer_for("ETHUSD")
    assert isinstance(by_pair, SharedPacer)
    assert by_pair.path == budget_file(tmp_path, "http://kraken.test", "XBTUSD")
    with pytest.raises(ValueError, match="budget_scope"):
        RestSettings(budget_scope="host")


def test_budget_settings_default_and_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KRAKEN_REST_BUDGET_SCOPE", raising=False)
    monkeypatch.delenv("KRAKEN_REST_BUDGET_DIR", raising=False)
    settings = from_environment(KrakenSettings)
    assert settings.rest_budget_scope == "ip"
    assert os.path.isabs(settings.rest_budget_dir)
    monkeypatch.setenv("KRAKEN_REST_BUDGET_SCOPE", "pair")
    assert from_environment(KrakenSettings).rest_budget_scope == "pair"
    monkeypatch.setenv("KRAKEN_REST_BUDGET_SCOPE", "host")
    with pytest.raises(SettingsError, match="KRAKEN_REST_BUDGET_SCOPE='host'"):
        from_environment(KrakenSettings)
    monkeypatch.setenv("KRAKEN_REST_BUDGET_SCOPE", "ip")
    monkeypatch.setenv("KRAKEN_REST_BUDGET_DIR", "relative/dir")
    with pytest.raises(SettingsError, match=r"KRAKEN_REST_BUDGET_DIR='relative/dir'.*absolute"):
        from_environment(KrakenSettings)


def test_a_budget_directory_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    # A file where the directory should be: no user, root included, can create it.
    in_the_way = tmp_path / "budget"
    in_the_way.write_text("not a directory")
    with pytest.raises(OSError, match=r"KRAKEN_REST_BUDGET_DIR=.*cannot create"):
        SharedPacer(in_the_way / "budget.json", 1.0)
