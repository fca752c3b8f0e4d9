"""Stand-in writer of measurement rows, used only until `jaxalloc.calibrate.data` exists.

CSV only, the same columns and the same promises as the real writer:
one ``write`` and ``fsync`` per batch, a last line torn by a kill dropped
before appending, and the keys already measured listed for resuming.
"""

from __future__ import annotations

import csv
import os
from typing import Iterable, Mapping

REQUIRED_COLUMNS = ("task", "budget", "repeat", "correct", "service_s")
OPTIONAL_COLUMNS = ("item", "prefill_s", "decode_s", "thinking_tokens", "answer_tokens")
MEASUREMENT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS


def _repair(path: str) -> None:
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, float) else str(value)


def append_rows(path: str, rows: Iterable[Mapping]) -> int:
    """Append per-item rows to the CSV file `path` (header written when new); returns rows written."""
    rows = [dict(r) for r in rows]
    if not rows:
        return 0
    if not str(path).lower().endswith(".csv"):
        raise ValueError(f"--out = {path!r}: measurement files are .csv")
    header = None
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        _repair(path)
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), None)
    if header is None:
        header = [c for c in MEASUREMENT_COLUMNS if c in REQUIRED_COLUMNS or any(c in r for r in rows)]
    lines = [] if os.path.isfile(path) and os.path.getsize(path) > 0 else [",".join(header)]
    for row in rows:
        lines.append(",".join(_cell(row.get(c)) for c in header))
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return len(rows)


def measured_keys(path: str) -> set[tuple[str, int, int, str | None]]:
    """(task, budget, repeat, item) of every row in the CSV file `path` (empty if none)."""
    if not os.path.isfile(path):
        return set()
    _repair(path)
    with open(path, encoding="utf-8", newline="") as f:
        return {(r["task"], int(r["budget"]), int(r["repeat"]), r.get("item") or None) for r in csv.DictReader(f)}
