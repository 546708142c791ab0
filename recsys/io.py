"""Atomic file writes: a reader (or a crash) never sees a half-written file, and a failed write leaves nothing.

Every writer goes to a temporary name beside the target and renames it over the target; a disk error (full
disk, read-only file system, a folder where the file should be) becomes one :class:`~recsys.errors.RecsysError`
line naming the path, and the temporary file is removed.
"""

import errno
import json
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from recsys.errors import RecsysError


def disk_error(path: str, e: OSError) -> RecsysError:
    """One line for a failed write of ``path``."""
    if e.errno == errno.ENOSPC:
        return RecsysError(f"{path}: no space left on the device")
    if e.errno == errno.EROFS:
        return RecsysError(f"{path}: cannot write on a read-only file system")
    if e.errno == errno.EISDIR or os.path.isdir(path):
        return RecsysError(f"{path}: is a folder; a file was to be written there")
    return RecsysError(f"{path}: cannot write ({e.strerror or e})")


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path to write ``path``'s content to; renamed over ``path`` when the block succeeds, removed
    when it fails."""
    if os.path.isdir(path):
        raise RecsysError(f"{path}: is a folder; a file was to be written there")
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise disk_error(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_with(path: str, write: Callable[[str], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _write_with(path, write)


def write_json_atomic(path: str, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, default=float) + "\n")


def write_parquet_atomic(path: str, table: Any) -> None:
    """Write a pyarrow table as Parquet to ``path`` atomically."""
    import pyarrow.parquet as pq

    _write_with(path, lambda tmp: pq.write_table(table, tmp))
