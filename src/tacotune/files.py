"""Writing files so that a reader never sees half of one, and a full disk says so.

Every file another process may read while it is being replaced (checkpoints, manifests,
auto.json, registry metadata) is written to a temporary file in the same directory,
flushed to disk and renamed over the target. A failed write removes its temporary file;
"no space left on device" becomes a `DiskFullError` naming the device and the size.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tacotune.errors import TacotuneError


class DiskFullError(TacotuneError):
    """A write failed because the filesystem is full."""


@contextlib.contextmanager
def atomic_writer(path: Path, *, size_hint: int = 0) -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` only when the block ends without an exception.

    `size_hint` (bytes) is what the error message says was needed if the disk fills up.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise disk_full(path, size_hint) from error
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically."""
    data = text.encode("utf-8")
    with atomic_writer(path, size_hint=len(data)) as f:
        f.write(data)


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    """Replace `path` with `data` as JSON (UTF-8, non-ASCII kept, NaN refused) atomically."""
    text = json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False)
    write_text_atomic(path, text + "\n")


def copy_file_atomic(source: Path, destination: Path) -> None:
    """Make `destination` an independent copy of `source` (its own bytes, never a hard link:
    a link shares them, so damage to one file would be damage to both), written atomically."""
    with (
        source.open("rb") as read,
        atomic_writer(destination, size_hint=source.stat().st_size) as write,
    ):
        shutil.copyfileobj(read, write, length=2**22)


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes (OSError if it cannot be read)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def disk_full(path: Path, needed_bytes: int) -> DiskFullError:
    """The error for a write of `needed_bytes` to `path` that found the disk full."""
    free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    needed = f" (needed ~{max(needed_bytes, 1) / 2**20:.0f} MB, free {free / 2**20:.0f} MB)"
    return DiskFullError(
        f"no space left on the device holding {path.parent}{needed if needed_bytes else ''}; "
        "free some space (old runs, step checkpoints) and run the command again"
    )


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
