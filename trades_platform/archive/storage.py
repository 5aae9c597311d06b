"""Where archive files live (`ARCHIVE_URL`): a local directory or any fsspec URL.

Layout under the base: `<dataset>/<PAIR-KEY>/<YYYY-MM-DD>.parquet`, e.g.
`trades/BTC-USD/2024-01-02.parquet` and `candles_1m/BTC-USD/2024-01-02.parquet`, so one
pair's days are one directory that pandas, pyarrow or DuckDB read as one table.

A file appears whole or not at all. Locally it is written to a hidden temporary file in the same
directory (readers of a directory skip names starting with `.`), flushed to disk, then renamed
over the old one (`os.replace`, atomic on POSIX). Object stores have no rename, but a PUT of a
whole object is atomic there (readers see the old object or the new one), so remote files are
uploaded in one PUT. A file whose bytes would not change is left alone.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs

from trades_platform.backfill.partitions import PartitionWindow
from trades_platform.trade import message_key_for

TRADES_DATASET = "trades"
CANDLES_DATASET = "candles_1m"


@dataclass(frozen=True)
class WrittenFile:
    """What a write left behind."""

    url: str
    size: int
    sha256: str
    rewritten: bool  # False: the file already held exactly these bytes


class ArchiveStore:
    """The archive's base location and the one way files are written to and read from it."""

    def __init__(self, url: str) -> None:
        """`url`: a local path (relative to the working directory) or an fsspec URL."""
        if "://" not in url:
            # Resolved once here: a run's later chdir cannot move the archive.
            url = os.path.abspath(url)
        self.url = url.rstrip("/")
        fs, root = url_to_fs(self.url)
        self._fs: Any = fs
        self._root: str = root.rstrip("/")
        self._local = "file" in _protocols(fs)

    def day_url(self, dataset: str, window: PartitionWindow) -> str:
        """The file of one dataset, pair and day, as a URL (a path when local)."""
        return f"{self.url}/{self._relative(dataset, window)}"

    def write(self, dataset: str, window: PartitionWindow, data: bytes) -> WrittenFile:
        """Put `data` in place atomically; leave an identical file untouched."""
        path = f"{self._root}/{self._relative(dataset, window)}"
        digest = hashlib.sha256(data).hexdigest()
        written = WrittenFile(self.day_url(dataset, window), len(data), digest, rewritten=True)
        existing = self._read_or_none(path)
        if existing is not None and hashlib.sha256(existing).hexdigest() == digest:
            return WrittenFile(written.url, written.size, digest, rewritten=False)
        directory = path.rsplit("/", 1)[0]
        self._fs.makedirs(directory, exist_ok=True)
        if self._local:
            _replace_local(path, data)
        else:
            self._fs.pipe_file(path, data)
        return written

    def read(self, dataset: str, window: PartitionWindow) -> bytes | None:
        """The file's bytes, or None when there is none."""
        return self._read_or_none(f"{self._root}/{self._relative(dataset, window)}")

    def _read_or_none(self, path: str) -> bytes | None:
        try:
            data: bytes = self._fs.cat_file(path)
        except FileNotFoundError:
            return None
        return data

    @staticmethod
    def _relative(dataset: str, window: PartitionWindow) -> str:
        return f"{dataset}/{message_key_for(window.pair)}/{window.day.isoformat()}.parquet"


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _replace_local(path: str, data: bytes) -> None:
    """Temp file beside the target, fsync, rename over it, fsync the directory."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        # A run interrupted mid-write leaves no temporary file behind (nor a partial target).
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    # The rename itself survives a crash only once the directory entry is on disk.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
