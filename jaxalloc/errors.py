"""Exceptions shared across the package."""

from __future__ import annotations


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during long work that keeps what it finished.

    `str(err)` says what was kept and how to go on, e.g. ``"3 of 8 blocks kept;
    run the same command to resume"``; the command line prints it as one line,
    ``interrupted: ...``, and exits with status 130. It is a
    :class:`KeyboardInterrupt`, so code that does not know it still stops.
    """


class ProblemError(ValueError):
    """A problem or profile value is invalid; the message names field and value."""
