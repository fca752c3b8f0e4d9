"""The measurement format that `jaxalloc calibrate fit` reads and `calibrate measure` writes.

A measurement file is CSV (``.csv``) or Parquet (``.parquet``, ``.pq``) in one of two
forms, told apart by their columns:

- **items**, one row per answered benchmark item (what a measuring tool writes):

  | column | type | meaning |
  |---|---|---|
  | `task` | text | task type, e.g. ``GSM8K`` (required) |
  | `budget` | integer ≥ 0 | enforced thinking budget ℓ, tokens (required) |
  | `repeat` | integer ≥ 0 | index of the independent run (required) |
  | `correct` | 0/1 or true/false | whether the answer was graded correct (required) |
  | `service_s` | number ≥ 0 | end-to-end service time of the query, seconds (required) |
  | `item` | text | benchmark item id (optional; lets a measuring tool resume) |
  | `prefill_s`, `decode_s` | number ≥ 0 | time to first token, decoding time (optional) |
  | `thinking_tokens`, `answer_tokens` | integer ≥ 0 | tokens generated (optional) |

- **aggregated**, one row per (task, budget), for people who only have a table:
  `task`, `budget`, `accuracy` (in [0, 1]), `n` (answers behind it, ≥ 1), and optionally
  `service_s` (mean service time at that budget, seconds; needed to fit t0 and c).

In CSV, lines starting with ``#`` before or between rows are comments and blank lines
are skipped; optional columns may have empty cells (not measured). A literal NaN is
never accepted. :func:`read_measurements` checks every value and raises
:class:`CalibrationError` naming the file, row, column and value.

:func:`append_rows` is the writer a measuring tool uses: it validates whole batches
before writing, writes CSV rows with one ``write`` and ``fsync``, and repairs a last line
torn by a kill; :func:`measured_keys` lists what a file already holds so a run can resume
(:func:`resume_keys`: after that repair). A Parquet file also carries schema metadata
(:func:`parquet_metadata`), where ``calibrate measure`` keeps its settings.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..files import replacing

REQUIRED_COLUMNS = ("task", "budget", "repeat", "correct", "service_s")
OPTIONAL_COLUMNS = ("item", "prefill_s", "decode_s", "thinking_tokens", "answer_tokens")
MEASUREMENT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
AGGREGATED_REQUIRED = ("task", "budget", "accuracy", "n")
AGGREGATED_OPTIONAL = ("service_s",)
AGGREGATED_COLUMNS = AGGREGATED_REQUIRED + AGGREGATED_OPTIONAL
MIN_BUDGETS = 3  # A, b and D need three distinct budgets

_KINDS = {
    "task": "text", "item": "text", "budget": "count", "repeat": "count", "thinking_tokens": "count",
    "answer_tokens": "count", "n": "positive", "correct": "bool", "accuracy": "fraction",
    "service_s": "seconds", "prefill_s": "seconds", "decode_s": "seconds",
}
_PARQUET_SUFFIXES = (".parquet", ".pq")


class CalibrationError(ValueError):
    """Invalid measurements or fit options; the message names the field and the value."""


@dataclass(frozen=True)
class Measurements:
    """Validated measurement rows, column by column.

    **Fields:**

    - `form`: ``"items"`` or ``"aggregated"``.
    - `data`: column name → NumPy array, one entry per row. Text columns are object
      arrays; `budget`, `repeat`, `n` int64; `correct` bool; other numbers float64, with
      NaN for an empty cell of an optional column (not measured).
    - `source`: where the rows came from (for messages).
    """

    form: str
    data: Mapping[str, np.ndarray]
    source: str = "measurements"

    def __len__(self) -> int:
        return len(self.data["task"])

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task names in order of first appearance."""
        return tuple(dict.fromkeys(self.data["task"].tolist()))


class TaskTable(NamedTuple):
    """One task's measurements, reduced to what the fits need.

    - `budgets`: the distinct budgets ℓ_j, ascending, shape (m,).
    - `successes`, `trials`: correct answers and answers at each budget (successes may
      be fractional in the aggregated form: accuracy × n).
    - `service_budgets`, `service_times`: one entry per row (items form) or per budget
      (aggregated form, means); None when the file has no service times.
    - `service_counts`: None for rows; the answers n behind each mean (aggregated form).
    """

    name: str
    budgets: np.ndarray
    successes: np.ndarray
    trials: np.ndarray
    service_budgets: np.ndarray | None
    service_times: np.ndarray | None
    service_counts: np.ndarray | None


# ----------------------------------------------------------------- value checks


def _show(raw: Any) -> str:
    if isinstance(raw, str):
        return raw if raw and raw == raw.strip() and "," not in raw else repr(raw)
    return str(raw)


def _number(raw: Any) -> float:
    """A finite or non-finite float from a cell, or ValueError."""
    if isinstance(raw, (int, float, np.integer, np.floating)) and not isinstance(raw, bool):
        return float(raw)
    return float(str(raw).strip())


def _convert(column: str, raw: Any, where: str) -> Any:
    """The checked value of one cell, or None for an empty cell (`where` labels the row)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    kind = _KINDS[column]
    bad = lambda why: CalibrationError(f"{where}: {column} = {_show(raw)}: {why}")
    if kind == "text":
        text = str(raw).strip()
        if (column == "task" and any(ch in text for ch in '"\\')) or any(ord(ch) < 32 for ch in text):
            raise bad("must not contain quotes, backslashes or control characters (it becomes a profile name)")
        return text
    if kind == "bool":
        text = str(raw).strip().lower()
        if isinstance(raw, (bool, np.bool_)):
            return bool(raw)
        if text in ("1", "true", "1.0"):
            return True
        if text in ("0", "false", "0.0"):
            return False
        raise bad("must be 0 or 1 (or true/false)")
    try:
        value = _number(raw)
    except (ValueError, TypeError):
        raise bad("must be a number") from None
    if not math.isfinite(value):
        raise bad("must be a finite number")
    if kind in ("count", "positive"):
        if value != int(value):
            raise bad("must be a whole number")
        lowest = 1 if kind == "positive" else 0
        if value < lowest:
            raise bad(f"must be >= {lowest}")
        return int(value)
    if kind == "fraction" and not 0 <= value <= 1:
        raise bad("must be in [0, 1]")
    if value < 0:
        raise bad("must be >= 0 (a time)")
    return value


def _form(columns: Iterable[str], source: str) -> str:
    cols = list(columns)
    seen = set()
    for c in cols:
        if c in seen:
            raise CalibrationError(f"{source}: column {c!r} appears twice in the header")
        seen.add(c)
    items, aggregated = "correct" in seen, bool({"accuracy", "n"} & seen)
    if items and aggregated:
        raise CalibrationError(
            f"{source}: columns correct (per-item rows) and accuracy/n (aggregated rows) cannot be mixed"
        )
    if not items and not aggregated:
        raise CalibrationError(
            f"{source}: columns {', '.join(cols) or '(none)'}: need correct (per-item rows: "
            f"{', '.join(REQUIRED_COLUMNS)}) or accuracy and n (aggregated rows: {', '.join(AGGREGATED_REQUIRED)})"
        )
    form = "items" if items else "aggregated"
    required, allowed = (
        (REQUIRED_COLUMNS, MEASUREMENT_COLUMNS) if items else (AGGREGATED_REQUIRED, AGGREGATED_COLUMNS)
    )
    for c in cols:
        if c not in allowed:
            raise CalibrationError(f"{source}: column {c!r}: unknown column ({form} form allows {', '.join(allowed)})")
    for c in required:
        if c not in seen:
            raise CalibrationError(f"{source}: column {c}: missing ({form} form needs {', '.join(required)})")
    return form


def _build(form: str, raw_columns: Mapping[str, list], labels: list[str], source: str) -> Measurements:
    """Check every cell of raw columns (lists of cell values) and build :class:`Measurements`."""
    if not labels:
        raise CalibrationError(f"{source}: no measurement rows")
    required = REQUIRED_COLUMNS if form == "items" else AGGREGATED_COLUMNS if "service_s" in raw_columns else AGGREGATED_REQUIRED
    data: dict[str, np.ndarray] = {}
    for column, cells in raw_columns.items():
        values = [_convert(column, raw, f"{source}: {where}") for raw, where in zip(cells, labels)]
        if column in required:
            for v, where in zip(values, labels):
                if v is None:
                    raise CalibrationError(f"{source}: {where}: {column} is empty (a required column)")
        kind = _KINDS[column]
        if kind == "text":
            data[column] = np.array(values, dtype=object)
        elif kind == "bool":
            data[column] = np.array(values, dtype=bool)
        elif column in required and kind in ("count", "positive"):
            data[column] = np.array(values, dtype=np.int64)
        else:
            data[column] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if form == "aggregated":
        seen: dict[tuple[str, int], str] = {}
        for task, budget, where in zip(data["task"], data["budget"], labels):
            if (task, budget) in seen:
                raise CalibrationError(
                    f"{source}: {where}: task {task!r} budget {budget} repeats {seen[task, budget]} "
                    "(aggregated rows: one per task and budget)"
                )
            seen[task, budget] = where
    return Measurements(form=form, data=data, source=source)


# ------------------------------------------------------------------- reading


def _read_csv_lines(path: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and row labels ("line N") of a CSV file, comments and blank lines skipped."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark from spreadsheets
        numbered = [(k, line) for k, line in enumerate(f, start=1) if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise CalibrationError(f"{path}: empty file (no header)")
    parsed = list(csv.reader([line for _, line in numbered]))
    header = [h.strip() for h in parsed[0]]
    rows, labels = [], []
    for (lineno, _), row in zip(numbered[1:], parsed[1:]):
        if len(row) != len(header):
            raise CalibrationError(f"{path}: line {lineno}: {len(row)} fields, the header has {len(header)}")
        rows.append(row)
        labels.append(f"line {lineno}")
    return header, rows, labels


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise CalibrationError("Parquet files need pyarrow: pip install pyarrow") from None
    return pq


def _read_parquet(path: Path) -> tuple[list[str], dict[str, list], list[str]]:
    pq = _pyarrow_parquet()
    import pyarrow as pa

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise CalibrationError(f"{path}: cannot read as Parquet: {' '.join(str(err).split())}") from None
    header = list(table.column_names)
    columns = {name: table.column(name).to_pylist() for name in header}
    for name, cells in columns.items():  # a NaN cell in Parquet is a value, not a missing cell
        columns[name] = [c if not (isinstance(c, float) and math.isnan(c)) else "nan" for c in cells]
    return header, columns, [f"row {k}" for k in range(1, table.num_rows + 1)]


def read_measurements(path: str | Path) -> Measurements:
    """Read and check a measurement file (CSV or Parquet, items or aggregated form).

    **Arguments:**

    - `path`: a ``.csv``, ``.parquet`` or ``.pq`` file.

    **Returns:** :class:`Measurements`. Raises :class:`CalibrationError` naming the row,
    column and value for: a missing file, an unknown extension, unknown or missing
    columns, mixed forms, non-numbers, NaN, negative times or counts, `correct` other
    than 0/1, accuracies outside [0, 1], duplicate aggregated rows, no rows.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".csv" and suffix not in _PARQUET_SUFFIXES:
        raise CalibrationError(f"measurements: {path}: unknown format {suffix or '(no extension)'!r} (use .csv or .parquet)")
    if not path.is_file():
        raise CalibrationError(f"measurements: file not found: {path}")
    try:
        if suffix == ".csv":
            header, rows, labels = _read_csv_lines(path)
            form = _form(header, str(path))
            raw = {name: [row[k] for row in rows] for k, name in enumerate(header)}
        else:
            header, raw, labels = _read_parquet(path)
            form = _form(header, str(path))
    except UnicodeDecodeError:
        raise CalibrationError(f"{path}: not UTF-8 text (is it really CSV?)") from None
    except OSError as err:
        raise CalibrationError(f"measurements: cannot read {path}: {err.strerror or err}") from None
    return _build(form, raw, labels, str(path))


def measurements_from_rows(rows: Iterable[Mapping[str, Any]], source: str = "rows") -> Measurements:
    """Check in-memory rows (mappings column → value) as :func:`read_measurements` checks a file."""
    rows = list(rows)
    header = list(dict.fromkeys(k for row in rows for k in row))
    form = _form(header, source)
    raw = {c: [row.get(c) for row in rows] for c in header}
    return _build(form, raw, [f"rows[{k}]" for k in range(len(rows))], source)


# ------------------------------------------------------------------- writing


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _csv_header(path: Path) -> list[str] | None:
    """The header of an existing CSV file, or None if it has no header yet."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                return [h.strip() for h in next(csv.reader([line]))]
    return None


def _repair_torn_line(path: Path) -> None:
    """Drop a last line without its newline (a write cut short by a kill)."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def append_rows(path: str | Path, rows: Iterable[Mapping[str, Any]],
                metadata: Mapping[str, str] | None = None) -> int:
    """Append per-item rows (items form) to a measurement file, creating it if needed.

    Every row is checked first (column names from :data:`MEASUREMENT_COLUMNS`, the
    required ones present, values as :func:`read_measurements` checks them); nothing is
    written if any row is bad. A new file gets the required columns and the optional
    ones that occur in `rows`; an existing file keeps its header and a row may not add
    columns to it (missing optional values are left empty). CSV rows are written with
    one ``write`` followed by ``fsync``, after dropping a last line left without its
    newline by an interrupted run; Parquet (not appendable) is rewritten through a
    temporary file and an atomic rename.

    **Arguments:**

    - `path`: ``.csv`` (recommended for measuring runs) or ``.parquet``.
    - `rows`: mappings column → value, e.g. ``{"task": "GSM8K", "budget": 256,
      "repeat": 0, "correct": True, "service_s": 3.91, "item": "gsm8k-17"}``.
    - `metadata`: Parquet only (ignored for CSV): key → text stored in the file's
      schema metadata, merged into what the file already has (which every append
      keeps); read back with :func:`parquet_metadata`.

    **Returns:** the number of rows written.
    """
    path = Path(path)
    rows = [dict(r) for r in rows]
    suffix = path.suffix.lower()
    if suffix != ".csv" and suffix not in _PARQUET_SUFFIXES:
        raise CalibrationError(f"{path}: unknown format {suffix or '(no extension)'!r} (use .csv or .parquet)")
    for k, row in enumerate(rows):
        for c in row:
            if c not in MEASUREMENT_COLUMNS:
                raise CalibrationError(f"rows[{k}]: column {c!r}: unknown column (allowed: {', '.join(MEASUREMENT_COLUMNS)})")
        for c in REQUIRED_COLUMNS:
            if row.get(c) is None:
                raise CalibrationError(f"rows[{k}]: column {c}: missing (required: {', '.join(REQUIRED_COLUMNS)})")
    if not rows:
        return 0
    checked = measurements_from_rows(rows, source="rows")  # every value checked, nothing written yet
    del checked
    present = [c for c in MEASUREMENT_COLUMNS if any(c in row for row in rows)]
    if suffix == ".csv":
        header = _csv_header(path) if path.is_file() else None
        if header is not None:
            _form(header, str(path))
            extra = [c for c in present if c not in header]
            if extra:
                raise CalibrationError(f"{path}: column {extra[0]!r} is not in the file's header ({', '.join(header)})")
            _repair_torn_line(path)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if header is None:
            header = present
            writer.writerow(header)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in header])
        with open(path, "a", newline="", encoding="utf-8") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        return len(rows)
    return _append_parquet(path, rows, present, metadata or {})


_ARROW_TYPES = {"text": "string", "count": "int64", "bool": "bool_", "seconds": "float64"}


def _append_parquet(path: Path, rows: list[dict], present: list[str], metadata: Mapping[str, str]) -> int:
    import pyarrow as pa

    pq = _pyarrow_parquet()
    old = None
    kept: dict[bytes, bytes] = {}
    if path.is_file():
        old = pq.read_table(path)
        _form(old.column_names, str(path))
        extra = [c for c in present if c not in old.column_names]
        if extra:
            raise CalibrationError(f"{path}: column {extra[0]!r} is not in the file's columns ({', '.join(old.column_names)})")
        present = list(old.column_names)
        kept = dict(old.schema.metadata or {})
    kept.update({str(k).encode(): str(v).encode() for k, v in metadata.items()})
    schema = pa.schema([(c, getattr(pa, _ARROW_TYPES[_KINDS[c]])()) for c in present], metadata=kept or None)
    new = pa.table({c: [row.get(c) for row in rows] for c in present}, schema=schema)
    table = new if old is None else pa.concat_tables([old.cast(schema), new])
    with replacing(path) as tmp:
        pq.write_table(table, str(tmp))
    return len(rows)


def parquet_metadata(path: str | Path) -> dict[str, str]:
    """The schema metadata (key → text) of a Parquet file; empty for a missing file or one without any."""
    path = Path(path)
    if not path.is_file():
        return {}
    pq = _pyarrow_parquet()
    import pyarrow as pa

    try:
        raw = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as err:
        raise CalibrationError(f"{path}: cannot read as Parquet: {' '.join(str(err).split())}") from None
    return {k.decode(): v.decode() for k, v in raw.items()}


def measured_keys(path: str | Path) -> set[tuple[str, int, int, str | None]]:
    """The (task, budget, repeat, item) of every row already in an items-form file.

    An empty set if the file does not exist yet; `item` is None where the file has no
    `item` column or the cell is empty. A measuring tool skips these keys on restart.
    """
    path = Path(path)
    if not path.is_file() or (path.suffix.lower() == ".csv" and _csv_header(path) is None):
        return set()
    m = read_measurements(path)
    if m.form != "items":
        raise CalibrationError(f"{path}: aggregated rows; a measuring run appends per-item rows")
    items = m.data.get("item", np.full(len(m), None, dtype=object))
    return {
        (t, int(b), int(r), None if i is None else str(i))
        for t, b, r, i in zip(m.data["task"], m.data["budget"], m.data["repeat"], items)
    }


def resume_keys(path: str | Path) -> set[tuple[str, int, int, str | None]]:
    """:func:`measured_keys` of a file a measuring run is about to append to, after dropping a
    last CSV line torn by a kill (the row is measured again)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        _repair_torn_line(path)
    return measured_keys(path)


# ---------------------------------------------------------------- per task


def task_tables(m: Measurements) -> list[TaskTable]:
    """Per task (in order of first appearance): counts per budget and service times.

    Raises :class:`CalibrationError` when a task has fewer than three distinct budgets
    (the three accuracy parameters A, b, D could not be told apart).
    """
    tables = []
    task_col = m.data["task"]
    for name in m.tasks:
        mask = task_col == name
        budgets_rows = m.data["budget"][mask].astype(np.float64)
        budgets, inverse = np.unique(budgets_rows, return_inverse=True)
        if budgets.size < MIN_BUDGETS:
            shown = ", ".join(f"{b:g}" for b in budgets)
            raise CalibrationError(
                f"{m.source}: task {name!r}: {budgets.size} distinct budget(s) ({shown}): "
                f"at least {MIN_BUDGETS} are needed to fit A, b and D"
            )
        if m.form == "items":
            trials = np.bincount(inverse, minlength=budgets.size).astype(np.float64)
            successes = np.bincount(inverse, weights=m.data["correct"][mask].astype(np.float64), minlength=budgets.size)
            svc = (budgets_rows, m.data["service_s"][mask], None)
        else:
            order = np.argsort(budgets_rows)
            trials = m.data["n"][mask][order].astype(np.float64)
            successes = m.data["accuracy"][mask][order] * trials
            svc = (budgets, m.data["service_s"][mask][order], trials) if "service_s" in m.data else (None, None, None)
        tables.append(TaskTable(name, budgets, successes, trials, *svc))
    return tables
