"""Output files: the one check that a command can write where it was told to."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def why_unwritable(path: str | os.PathLike) -> str | None:
    """Why a file cannot be written at `path`, or None if it can.

    The reasons: `it is a directory`, `no such directory FOLDER`, or what the
    system says when a probe file is created beside it (`/proc/x`: `No such file
    or directory`; a read-only folder: `Permission denied`) or when an existing
    file is opened for appending. Nothing is changed: the probe is removed, and
    appending nothing leaves a file as it was. Commands call it before any work
    and raise their own error naming the flag, the path and this reason.
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
