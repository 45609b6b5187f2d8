"""Per-stream write locks, so one stream never has two writers.

A lock is an OS file lock (``fcntl``/``flock`` through :mod:`filelock`) on
``<store>/.locks/<stream>.lock``: the kernel drops it when the holder dies, even by
SIGKILL, so a crash never leaves a stale lock behind. Who holds it (pid, host, since,
command) is written beside it for the refusal message. NFSv4 supports these locks.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from filelock import FileLock, Timeout

from avx.errors import StoreLockedError
from avx.store_schema.spec import LOCK_DIR


def _lock_file(store: Path, name: str) -> Path:
    return store / LOCK_DIR / (name.replace("/", "__") + ".lock")


class StreamLock:
    """Exclusive, non-blocking lock on one stream (or ``__meta__`` for store metadata)."""

    def __init__(self, store: Path, name: str, *, timeout: float = 0.0) -> None:
        self.store, self.name, self.timeout = Path(store), name, timeout
        self.path = _lock_file(self.store, name)
        self.info_path = self.path.with_suffix(".json")
        self._lock = FileLock(str(self.path))

    def acquire(self) -> StreamLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=self.timeout)
        except Timeout:
            holder = ""
            try:
                info = json.loads(self.info_path.read_text())
                holder = f" (pid {info['pid']} on {info['host']} since {info['since']})"
            except (OSError, ValueError, KeyError):
                pass
            raise StoreLockedError(
                f"{self.store}: stream '{self.name}' is being written by another process{holder};"
                " wait for it to finish, then re-run to resume"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
        }
        self.info_path.write_text(json.dumps(info))
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    def __enter__(self) -> StreamLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_streams(stack: ExitStack, store: Path, names: list[str]) -> None:
    """Acquire locks on all ``names`` (sorted, to avoid lock-order deadlocks) or fail."""
    for name in sorted(set(names)):
        stack.enter_context(StreamLock(store, name))
