"""One REST budget for every process of a host: a pacing schedule in a small file, under `flock`.

Kraken's public REST limit is about one call per second per IP. Each `KrakenRestClient` used
to pace only itself, so a live run healing gaps and a backfill (or two backfills) together went
over it. `SharedPacer` keeps the schedule in a file under `KRAKEN_REST_BUDGET_DIR`, one file per
REST server (and, with `KRAKEN_REST_BUDGET_SCOPE=pair`, per pair for Trades calls), so every
process of the host that talks to that server takes its turn from the same schedule.

It keeps the property of the process-local `Pacer`: a call starts `1/rate` after the previous
call was *answered* (its headers arrived; its end if it failed without an answer), whichever
process made it, and no call starts while another one is in flight, for up to two intervals
after that one started: a call in flight longer has reached the server long since, and a page
Kraken is slow to answer (a stuck heal) must not hold every backfill back with it.
Calls landing early are what a strict server-side limiter rejects, and they would, were calls
only spaced by their starts: a call's answer can take longer than the interval.

Who goes next, when several wait: the best rank (`Rank`): heals before backfills (a heal holds
live trades back), then the client created first. Favouring the oldest backfill makes runs
finish one after another instead of all at the same time, so the next run's start-up (process,
imports, lease, topic scan) overlaps another run's paging and the budget does not sit idle.

State survives its writers: a process that dies in a call is skipped once its pid is gone (same
host) or its call's bound passed; a waiter that stopped polling drops out after
`WAITER_STALE_SECONDS`. Times are `time.monotonic()`, which on Linux (CLOCK_MONOTONIC) is one
clock for every process of the host. Processes on other hosts never see the file: see
ARCHITECTURE.md "Costs and limits" for splitting a budget between hosts.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

# How often a waiter looks again while another call is in flight or a better-ranked waiter
# goes first: the slack this adds after a call is at most this.
POLL_SECONDS = 0.01
# A waiter not seen polling for this long is gone (killed, interrupted) and no longer ranks.
WAITER_STALE_SECONDS = 2.0
# A call in flight longer than its bound plus this is over for the others, pid alive or not.
HOLD_MARGIN_SECONDS = 5.0
# A call in flight holds the others back this many intervals after it started, no longer: it
# reached the server long before (a page the server takes 100 s to answer must not stop every
# other process for 100 s), and the next call is still an interval after it arrived.
IN_FLIGHT_HOLD_INTERVALS = 2.0

BudgetScope = Literal["ip", "pair"]
Purpose = Literal["heal", "backfill", "other"]
_PURPOSE_RANK = {"heal": 0, "other": 1, "backfill": 2}
_HOST = socket.gethostname()

__all__ = [
    "BudgetScope",
    "Purpose",
    "SharedPacer",
    "budget_file",
]


@dataclass(frozen=True, order=True)
class Rank:
    """Who goes first among waiters: lower first (purpose, then the client's creation)."""

    purpose: int
    created: float


def budget_file(directory: str | os.PathLike[str], url: str, pair: str | None = None) -> Path:
    """The schedule's file for the REST server at `url` (and `pair`, when paced per pair)."""
    key = url.rstrip("/") if pair is None else f"{url.rstrip('/')}|{pair}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(directory) / f"kraken-rest-{digest}.json"


class SharedPacer:
    """At most `rate` calls per second for every process using the same file (see the module).

    The interface of `kraken.rest.Pacer`: `wait` before a call, `done` after it, `push_back`
    after a rate-limit answer, `pending` to know how long `wait` would sleep.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        rate: float,
        *,
        purpose: Purpose = "other",
        hold_seconds: float = 60.0,
        created: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.path = Path(path)
        self.interval = 1.0 / rate
        self._hold_seconds = hold_seconds
        self._clock = clock
        self._sleep = sleep
        self._token = uuid.uuid4().hex
        self._rank = Rank(_PURPOSE_RANK[purpose], clock() if created is None else created)
        _ensure_directory(self.path.parent)

    def wait(self) -> float:
        """Sleep until this process's turn (see the module); return the seconds slept."""
        slept = 0.0
        try:
            while True:
                with self._state() as state:
                    now = self._clock()
                    _prune(state, now)
                    waiters: dict[str, Any] = state["waiters"]
                    waiters.pop(self._token, None)
                    ahead = [w for w in waiters.values() if Rank(*w["rank"]) < self._rank]
                    free_at = float(state["next_at"])
                    in_flight = _holds_back(state["holder"], now)
                    if not in_flight and now >= free_at and not ahead:
                        state["holder"] = {
                            "token": self._token,
                            "pid": os.getpid(),
                            "host": _HOST,
                            "until": now + self._hold_seconds + HOLD_MARGIN_SECONDS,
                            "holds_back_until": now + IN_FLIGHT_HOLD_INTERVALS * self.interval,
                        }
                        # Until `done`, a call in flight holds the next one back a full interval.
                        state["next_at"] = now + self.interval
                        return slept
                    waiters[self._token] = {
                        "rank": [self._rank.purpose, self._rank.created],
                        "pid": os.getpid(),
                        "host": _HOST,
                        "seen": now,
                    }
                    busy = in_flight or ahead or now >= free_at
                    delay = POLL_SECONDS if busy else min(free_at - now, WAITER_STALE_SECONDS / 2)
                self._sleep(delay)
                slept += delay
        except BaseException:
            self._forget()
            raise

    def done(self, answered_at: float | None = None) -> None:
        """The call that `wait` let through has ended; it was answered at `answered_at` (clock)."""
        with self._state() as state:
            now = self._clock()
            at = now if answered_at is None else min(answered_at, now)
            holder = state["holder"]
            if holder is not None and holder.get("token") == self._token:
                state["holder"] = None
            state["next_at"] = max(float(state["next_at"]), at + self.interval)

    def push_back(self, seconds: float) -> None:
        """Hold every process's next call back at least `seconds` from now (a rate limit)."""
        with self._state() as state:
            state["next_at"] = max(float(state["next_at"]), self._clock() + seconds)

    def pending(self) -> float:
        """The seconds until the schedule lets a call start (ignoring other waiters)."""
        with self._state() as state:
            return max(0.0, float(state["next_at"]) - self._clock())

    def _forget(self) -> None:
        try:
            with self._state() as state:
                state["waiters"].pop(self._token, None)
                holder = state["holder"]
                if holder is not None and holder.get("token") == self._token:
                    state["holder"] = None
        except OSError:
            pass  # the directory went away: nothing left to tidy

    @contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        """The schedule, read and written back under an exclusive lock on its file."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = _read_all(fd)
            state = _parse(raw)
            before = orjson.dumps(state)
            yield state
            after = orjson.dumps(state)
            if after != before or not raw:
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, after)
        finally:
            os.close(fd)  # releases the lock too


def _ensure_directory(directory: Path) -> None:
    """Create the budget directory (only this user may write it); a clear error otherwise."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            error.errno or errno.EACCES,
            f"KRAKEN_REST_BUDGET_DIR={str(directory)!r}: cannot create the REST budget directory "
            f"({error.strerror or error}); point it at a writable directory shared by the host's "
            "processes",
        ) from None
    if not os.access(directory, os.W_OK):
        raise PermissionError(
            errno.EACCES,
            f"KRAKEN_REST_BUDGET_DIR={str(directory)!r} is not writable by this user; point it "
            "at a writable directory shared by the host's processes",
        )


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes) -> dict[str, Any]:
    """The state in the file; a missing, torn or foreign file starts a fresh schedule."""
    try:
        state = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        state = None
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("next_at"), int | float)
        or not isinstance(state.get("waiters"), dict)
        or not (state.get("holder") is None or isinstance(state.get("holder"), dict))
    ):
        return {"next_at": 0.0, "holder": None, "waiters": {}}
    return state


def _alive(entry: dict[str, Any]) -> bool:
    """Whether the process of a holder or waiter can still be running (checked on this host)."""
    if entry.get("host") != _HOST:
        return True  # another host (or container) sharing the directory: only its bounds apply
    pid = entry.get("pid")
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _holds_back(holder: dict[str, Any] | None, now: float) -> bool:
    """Whether a call in flight still holds the next call back (IN_FLIGHT_HOLD_INTERVALS)."""
    if holder is None:
        return False
    until = holder.get("holds_back_until")
    return not isinstance(until, int | float) or now < until


def _prune(state: dict[str, Any], now: float) -> None:
    """Drop a holder or waiters that are gone: dead processes, passed bounds, stale polls."""
    holder = state["holder"]
    if holder is not None and (
        not isinstance(holder.get("until"), int | float)
        or holder["until"] < now
        or not _alive(holder)
    ):
        state["holder"] = None
    waiters = state["waiters"]
    for token in list(waiters):
        waiter = waiters[token]
        seen = waiter.get("seen") if isinstance(waiter, dict) else None
        rank = waiter.get("rank") if isinstance(waiter, dict) else None
        if (
            not isinstance(seen, int | float)
            or now - seen > WAITER_STALE_SECONDS
            or not (isinstance(rank, list) and len(rank) == 2)
            or not _alive(waiter)
        ):
            del waiters[token]
