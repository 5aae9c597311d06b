"""Child processes the platform, its tests and its benchmark start and must always stop."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str] | None) -> None:
    """SIGTERM, up to 10 s to exit, then SIGKILL; always reaped. A finished process is left be."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
