"""Writing files so that a reader never sees half of one, and a full disk says so.

Every file another process may read while it is being replaced (checkpoints, manifests,
auto.json, registry metadata) is written to a temporary file of its own in the same directory,
flushed to disk and renamed over the target. A failed write removes its temporary file;
"no space left on device" becomes a `DiskFullError` naming the device and the size.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO, Any

from tacotune.errors import TacotuneError


class DiskFullError(TacotuneError):
    """A write failed because the filesystem is full."""


class OutputError(TacotuneError):
    """An output path named by the user cannot be written."""


@contextlib.contextmanager
def atomic_writer(path: Path, *, size_hint: int = 0) -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` only when the block ends without an exception.

    `size_hint` (bytes) is what the error message says was needed if the disk fills up.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own: two processes replacing the same file (two `prepare`s sharing a
    # cache) each rename a whole file of theirs, the last one wins
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with full_disk_is_an_error(path, size_hint):
            with tmp.open("xb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


@contextlib.contextmanager
def full_disk_is_an_error(path: Path, size_hint: int = 0) -> Iterator[None]:
    """Turn "no space left on device" inside the block into a `DiskFullError` naming the
    device that holds `path` (and `size_hint` bytes needed, if known)."""
    try:
        yield
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise disk_full(path, size_hint) from error
        raise


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


def check_output_file(path: Path, flag: str, suffixes: Collection[str]) -> None:
    """Refuse, before any work is done, an output file that could not be written: a
    directory, a name without one of `suffixes`, a path under a file, a directory that
    cannot be written in. `flag` names the option in the message."""
    if path.is_dir():
        raise OutputError(
            f"{flag} {path} is a directory; give a file name such as {path / 'out.wav'}"
        )
    if path.suffix.lower() not in suffixes:
        found = f"the extension {path.suffix!r}" if path.suffix else "no extension"
        *others, last = suffixes
        ending = f"{', '.join(others)} or {last}" if others else last
        raise OutputError(f"{flag} {path} has {found}; give a file name ending in {ending}")
    _check_creatable(path.parent, flag, path)


def check_output_directory(path: Path, flag: str) -> None:
    """Refuse, before any work is done, an output directory that could not be written."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a directory; give a directory")
    _check_creatable(path, flag, path)


def _check_creatable(directory: Path, flag: str, target: Path) -> None:
    """`directory` exists and takes a new file, or can be created: its nearest existing
    ancestor is a directory that takes one (tried with a temporary file, which works
    whoever runs it, root included)."""
    existing = directory.absolute()
    while not existing.exists():
        if existing.is_symlink():  # pointing nowhere (or in a loop): mkdir cannot follow it
            raise OutputError(
                f"{flag} {target}: {existing} is a symbolic link to {os.readlink(existing)}, "
                f"which does not exist; create that directory, or give another {flag}"
            )
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"{flag} {target}: {existing} is a file, so nothing can be created under it"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".tacotune-probe-"):
            pass
    except OSError as error:
        raise OutputError(
            f"{flag} {target}: cannot write in {existing} ({error.strerror or error})"
        ) from error


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
