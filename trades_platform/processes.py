"""Child processes the platform, its tests and its benchmark start and must always stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_process(
    process: subprocess.Popen[bytes] | subprocess.Popen[str] | None,
    *,
    timeout_seconds: float = 10.0,
    group: bool = False,
) -> None:
    """SIGTERM, up to `timeout_seconds` to exit, then SIGKILL; always reaped.

    A finished process is left be. With `group`, the signals go to the process group the child
    leads (started with `start_new_session=True`), even when the child itself has exited, so that
    what it started stops too.
    """
    if process is None or (process.poll() is not None and not group):
        return
    _signal(process, signal.SIGTERM, group)
    try:
        process.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        _signal(process, signal.SIGKILL, group)
        process.wait()


def signal_group(process: subprocess.Popen[bytes] | subprocess.Popen[str], signum: int) -> None:
    """Send a signal to the process group a child leads, if anything of it is still there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _signal(
    process: subprocess.Popen[bytes] | subprocess.Popen[str], signum: int, group: bool
) -> None:
    if group:
        signal_group(process, signum)
    elif process.poll() is None:
        process.send_signal(signum)
