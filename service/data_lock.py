"""One process at a time per data directory: the server and the CLI's writing commands exclude each other.

Scaled out (``PAS_SCALE_OUT``, PostgreSQL) the API and worker processes share the directory instead:
each holds a shared lock on the same file (``share_data_dir``), so any number of them run together
while an embedded server or a writing CLI command (an exclusive holder) still excludes them all.

An OS file lock (``filelock``, flock on POSIX) on ``<data dir>/.lock``: it is released by the kernel
when its holder dies, so a crash never leaves a stale lock behind. A server also writes where it
listens to ``<data dir>/server.json``, so the CLI can ask it instead of refusing; that file is only
believed while the lock is held (a crashed server's file is stale and ignored).
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager, suppress
from pathlib import Path


class DataDirBusy(Exception):
    pass


SERVER_FILE = "server.json"


def reachable_url(host: str, port: int) -> str:
    """The URL a local client uses for a server bound to ``host`` (a wildcard address means this machine)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def holding_server_url(data_dir: Path) -> str | None:
    """The URL of the server that holds ``data_dir`` now; None when no server does (free, or a CLI holds it).

    The same flock that ``hold_data_dir`` (filelock) and ``share_data_dir`` take, tried and let go at once;
    plain fcntl because filelock's import (it loads asyncio) is a tenth of a CLI search's start."""
    try:
        fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return None  # no data directory: nobody serves it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # held: by a server (which wrote its file) or by a CLI command (which has none)
    else:  # free: nobody serves it, whatever a stale file says; it is dropped while the lock is ours
        with suppress(OSError):
            (data_dir / SERVER_FILE).unlink()
        return None
    finally:
        os.close(fd)  # releases the lock if it was taken
    try:
        return json.loads((data_dir / SERVER_FILE).read_text(encoding="utf-8"))["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def hold_data_dir(data_dir: Path, holder: str, server_url: str | None = None):
    """Hold the data directory; a server passes its ``server_url`` to announce it while it holds it."""
    from filelock import FileLock, Timeout  # here: a CLI search's server look-up does without it

    data_dir.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir / ".lock"
    lock = FileLock(lock_path, is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DataDirBusy(f"data directory {data_dir} is in use by another process (a running server or a "
                          f"prompt-adapters command); stop it before running {holder}") from None
    server_file = data_dir / SERVER_FILE
    try:
        if server_url is not None:
            server_file.write_text(json.dumps({"url": server_url}), encoding="utf-8")
        else:  # one a crashed server left behind would point the CLI at nothing
            with suppress(OSError):
                server_file.unlink()
        yield
    finally:
        if server_url is not None:
            with suppress(OSError):
                server_file.unlink()
        lock.release()


@contextmanager
def share_data_dir(data_dir: Path, holder: str):
    """Scaled out: hold the data directory together with the other API and worker processes."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # The same flock an exclusive holder (filelock) takes, in shared mode: the two exclude each other.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DataDirBusy(f"data directory {data_dir} is held by an embedded server or a prompt-adapters "
                          f"command; stop it before running {holder} scaled out") from None
    try:
        yield
    finally:
        os.close(fd)  # releases the lock
