"""Exclusive ``flock``s, which the kernel drops when their holder dies, even by SIGKILL, so a crash never
leaves anything locked: one process per search folder, and one at a time creating a new MLflow store."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import UserError

LOCK_NAME = ".search.lock"


@contextmanager
def search_lock(directory: Path, name: str) -> Iterator[None]:
    """Hold ``directory``'s lock for the block; raise a `UserError` at once if another process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            raise UserError(
                f"search {name!r} is already running ({holder}) in {directory}; wait for it to "
                "finish or stop it, then rerun this command to resume"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold the lock file ``path`` for the block, waiting for any other holder first."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
