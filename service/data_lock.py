"""One process at a time per data directory: the server and the CLI's writing commands exclude each other.

An OS file lock (``filelock``, flock on POSIX) on ``<data dir>/.lock``: it is released by the kernel
when its holder dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


class DataDirBusy(Exception):
    pass


@contextmanager
def hold_data_dir(data_dir: Path, holder: str):
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir / ".lock"
    lock = FileLock(lock_path, is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DataDirBusy(f"data directory {data_dir} is in use by another process (a running server or a "
                          f"prompt-adapters command); stop it before running {holder}") from None
    try:
        yield
    finally:
        lock.release()
