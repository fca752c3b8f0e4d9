"""Output files: the one check that a command can write where it was told to,
and the one way a file is replaced whole (a temporary name, then a rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


class UnwritableError(ValueError):
    """An output path that cannot be written; the message names the flag, the path and why."""


def why_unwritable(path: str | os.PathLike) -> str | None:
    """Why a file cannot be written at `path`, or None if it can.

    The reasons: `it is a directory`, `no such directory FOLDER`, or what the
    system says when a probe file is created beside it (`/proc/x`: `No such file
    or directory`; a read-only folder: `Permission denied`) or when an existing
    file is opened for appending. Nothing is changed: the probe is removed, and
    appending nothing leaves a file as it was. Commands call it before any work,
    through :func:`check_writable` or with an error of their own that names the
    path and this reason.
    """
    path = Path(path)
    if path.is_dir():
        return "it is a directory"
    folder = path.absolute().parent
    if not folder.is_dir():
        return f"no such directory {folder}"
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
        if path.exists():
            with open(path, "ab"):
                pass
    except OSError as err:
        return err.strerror or str(err)
    return None


def check_writable(flag: str, path: str | os.PathLike) -> None:
    """Raise :class:`UnwritableError`, `FLAG: cannot write PATH: REASON`, if `path`
    cannot be written (:func:`why_unwritable`); the command line prints it as one
    `error:` line, before any work."""
    reason = why_unwritable(path)
    if reason is not None:
        raise UnwritableError(f"{flag}: cannot write {path}: {reason}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside `path` to write the new file under; renamed onto
    `path` when the block ends without an exception, deleted otherwise. So a kill
    or a failure never leaves `path` half written: readers see the old file or
    the new one. The caller creates the file, so it has the usual permissions
    (those of the umask), as any new file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
