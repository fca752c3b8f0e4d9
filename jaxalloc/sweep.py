"""Sweeps over many operating points: grids, blocks, devices, storage, resume.

A sweep is the Cartesian product of axes, each a field of the problem and the
values it takes: a scalar field (`arrival_rate`, `alpha`, `max_tokens`) or one
task's parameter written `FIELD:TASK` (`b:gsm8k`, `t0:0`, `prob:aime`; for
`prob` the other tasks' shares are rescaled so that they still sum to 1).
Points are numbered in C order (the last axis varies fastest).

The engine solves the points in *blocks* of equal size (the last one padded
with a real point), so it is compiled once; each block is split evenly over
the local devices (`shard_map` over a 1-D mesh) and, on each device, solved
in chunks of vmapped points by :func:`jaxalloc.solve.solve_batch`. Inside a
block nothing raises: points unstable even at ℓ = 0 or not converged are rows
with that status.

With an output path, every finished block is written at once to
`OUT.parts/block-NNNNNN.arrow` (Arrow IPC, written to a temporary name and
renamed, so a kill never leaves a corrupt part), while the final Parquet file
is streamed from the same tables, one row group per block, in a background
thread. A sweep started again with the same arguments finds the finished
parts, computes only the missing blocks, and writes a Parquet file identical
to that of an uninterrupted run; when it is complete the parts are removed.

Several processes (several hosts under `jax.distributed`, or several local
processes) split the blocks round robin: process p of P computes blocks
p, p + P, ... and writes their parts; process 0 then waits for every part and
writes the Parquet file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .model import Problem, ProblemError, validate
from .objective import mean_accuracy, mean_system_time, moments, utilization
from .solution import Status
from .solve import chunk_layout, get_solver, map_chunks, solve_batch
from .solvers.integer import MAX_ENUMERATE_TASKS, integer_budgets

SCALAR_FIELDS = ("arrival_rate", "alpha", "max_tokens")
PER_TASK_FIELDS = ("prob", "A", "b", "D", "t0", "c")
SWEEP_ENUMERATE_TASKS = 8
"""With `integer="auto"`, sweeps enumerate the 2^N floor/ceil candidates
(eq. 39) up to this N (2^N candidates per point add up over 10^6 points)..."""
SWEEP_COORDINATE_TASKS = 64
"""... use the coordinate search up to this N, and rounding (eq. 40) beyond
(the search scores N flips per step and may take many steps at N = 1024)."""
CHUNK_ELEMENTS = 24576  # points × tasks vmapped together: 4096 points at N = 6, fastest on a 2-core CPU
DEFAULT_BLOCK = 1 << 17  # points per compiled call, and per row group of the output ...
BLOCK_ELEMENTS = 1 << 22  # ... and at most this many points × tasks (32 MiB per float64 array of budgets)


class SweepError(ValueError):
    """A bad sweep specification; the message names the axis and the value."""


# ---------------------------------------------------------------- axes


def parse_range(text: str, name: str = "axis") -> np.ndarray:
    """Values of `START:STOP:NUM` (linear, like `numpy.linspace`) or
    `START:STOP:NUM:log` (geometric); NUM = 1 gives START alone.

    Raises :class:`SweepError` naming `name` and the text for anything else:
    not three or four parts, non-numbers, STOP < START, NUM ≤ 0, log with
    START ≤ 0.
    """
    parts = text.split(":")
    scale = "lin"
    if len(parts) == 4:
        scale = parts.pop().strip().lower()
    try:
        if len(parts) != 3 or scale not in ("lin", "log"):
            raise ValueError
        start, stop = float(parts[0]), float(parts[1])
        num = int(parts[2])
    except ValueError:
        raise SweepError(f"{name} = {text!r}: expected START:STOP:NUM or START:STOP:NUM:log, e.g. 0.01:0.2:1000") from None
    if not (math.isfinite(start) and math.isfinite(stop)):
        raise SweepError(f"{name} = {text!r}: START and STOP must be finite numbers")
    if stop < start:
        raise SweepError(f"{name} = {text!r}: STOP ({stop:g}) < START ({start:g})")
    if num <= 0:
        raise SweepError(f"{name} = {text!r}: NUM = {num} must be >= 1")
    if scale == "log":
        if start <= 0:
            raise SweepError(f"{name} = {text!r}: a log axis needs START > 0")
        return np.geomspace(start, stop, num)
    return np.linspace(start, stop, num)


@dataclass(frozen=True)
class Axis:
    """One swept field: `name` as given (`alpha`, `b:gsm8k`), the problem field,
    the task index for a per-task field (else None), and the values."""

    name: str
    field: str
    task: int | None
    values: np.ndarray = field(repr=False)


def _task_index(problem: Problem, name: str, key: str) -> int:
    if key in problem.names:
        return problem.names.index(key)
    try:
        k = int(key)
    except ValueError:
        raise SweepError(f"axis {name!r}: unknown task {key!r} (tasks: {', '.join(problem.names)})") from None
    if not 0 <= k < problem.num_tasks:
        raise SweepError(f"axis {name!r}: task index {k} out of range 0..{problem.num_tasks - 1}")
    return k


def make_axes(problem: Problem, axes: Mapping[str, Any]) -> list[Axis]:
    """Check and normalise sweep axes (name → 1-D values, or a range string).

    Every value must give a valid problem when put in the base problem (except
    for queue stability, which becomes a per-point status); the error names
    the axis and the first bad value.
    """
    if not axes:
        raise SweepError("sweep: give at least one axis, e.g. arrival_rate=0.01:0.2:100")
    out, seen = [], set()
    for name, spec in axes.items():
        values = parse_range(spec, name) if isinstance(spec, str) else np.asarray(spec, dtype=np.float64)
        if values.ndim != 1 or values.size == 0:
            raise SweepError(f"axis {name!r}: expected a non-empty 1-D array of values, got shape {values.shape}")
        fld, _, key = name.partition(":")
        if fld in SCALAR_FIELDS and not key:
            task = None
        elif fld in PER_TASK_FIELDS and key:
            task = _task_index(problem, name, key)
        else:
            raise SweepError(
                f"axis {name!r}: expected one of {', '.join(SCALAR_FIELDS)} or FIELD:TASK with FIELD in "
                f"{', '.join(PER_TASK_FIELDS)} (e.g. b:{problem.names[0]})"
            )
        if (fld, task) in seen:
            raise SweepError(f"axis {name!r}: the same field is swept twice")
        seen.add((fld, task))
        bad = ~np.isfinite(values)
        if bad.any():
            raise SweepError(f"axis {name!r}: value {values[bad][0]} is not a finite number")
        if fld == "prob" and not ((values > 0) & (values < 1)).all():
            v = values[~((values > 0) & (values < 1))][0]
            raise SweepError(f"axis {name!r}: prob = {v:g} must be in (0, 1)")
        for v in (values.min(), values.max()):  # the rules are intervals: the extremes decide
            try:
                validate(_with_values(problem, [(fld, task)], [np.float64(v)]), stability=False)
            except ProblemError as err:
                raise SweepError(f"axis {name!r}: value {v:g} is invalid: {err}") from None
        out.append(Axis(name, fld, task, values))
    return out


def _with_values(problem: Problem, targets, values) -> Problem:
    """`problem` with each (field, task) of `targets` set to the matching value
    (arrays with a leading batch axis, or scalars); works on concrete values and
    under jit. Per-task fields come back with a batch axis before the task axis."""
    changes: dict[str, Any] = {}
    for (fld, task), v in zip(targets, values):
        if task is None:
            changes[fld] = v
            continue
        base = changes.get(fld, getattr(problem, fld))
        base = jnp.broadcast_to(base, (*jnp.shape(v), problem.num_tasks))
        if fld == "prob":  # keep Σπ = 1: the other shares keep their proportions
            rest = 1.0 - base[..., task]
            base = base * ((1.0 - v) / rest)[..., None]
        changes[fld] = base.at[..., task].set(v)
    return problem.replace(**changes)


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep computes and how it is cut into blocks (see the module docstring)."""

    problem: Problem
    axes: tuple[Axis, ...]
    method: str
    integer: str
    block: int
    chunk: int
    devices: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.values.size for a in self.axes)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def num_blocks(self) -> int:
        return -(-self.size // self.block)

    @property
    def dtype(self):
        return self.problem.A.dtype

    def fingerprint(self) -> str:
        """A hash of everything that determines the output rows."""
        from . import __version__
        from .model import problem_to_toml

        h = hashlib.sha256()
        head = dict(version=__version__, method=self.method, integer=self.integer, block=self.block,
                    chunk=self.chunk, dtype=str(self.dtype), axes=[a.name for a in self.axes])
        h.update(json.dumps(head, sort_keys=True).encode())
        h.update(problem_to_toml(self.problem).encode())
        for a in self.axes:
            h.update(np.ascontiguousarray(a.values, np.float64).tobytes())
        return h.hexdigest()

    def column_names(self) -> list[str]:
        names = self.problem.names
        return ([a.name for a in self.axes] + [f"budget_{t}" for t in names]
                + [f"integer_budget_{t}" for t in names]
                + ["objective", "accuracy", "mean_system_time", "utilization", "status", "kkt_residual", "iterations"])


def plan_sweep(problem: Problem, axes: Mapping[str, Any], *, method: str = "newton", integer: str = "auto",
               dtype=None, block: int | None = None, chunk: int | None = None, devices: int | None = None) -> SweepPlan:
    """Check a sweep and fix its block layout. Arguments as in :func:`sweep`."""
    validate(problem, stability=False)
    get_solver(method)  # unknown method: ValueError naming it
    if integer not in ("auto", "enumerate", "round", "coordinate"):
        raise SweepError(f"integer = {integer!r}: expected auto, enumerate, round or coordinate")
    if integer == "auto":
        n = problem.num_tasks
        integer = "enumerate" if n <= SWEEP_ENUMERATE_TASKS else "coordinate" if n <= SWEEP_COORDINATE_TASKS else "round"
    if integer == "enumerate" and problem.num_tasks > MAX_ENUMERATE_TASKS:
        raise SweepError(f"integer = 'enumerate': N = {problem.num_tasks} tasks exceeds {MAX_ENUMERATE_TASKS} "
                         "(2^N candidates per point); use coordinate")
    if dtype is not None:
        problem = problem.astype(dtype)
    axis_list = tuple(make_axes(problem, axes))
    devices = jax.local_device_count() if devices is None else int(devices)
    if devices < 1 or devices > jax.local_device_count():
        raise SweepError(f"devices = {devices}: this process has {jax.local_device_count()} local devices")
    size = math.prod(a.values.size for a in axis_list)
    if chunk is None:  # working arrays of about CHUNK_ELEMENTS values stay in cache
        chunk = max(16, min(4096, 1 << int(math.log2(max(1, CHUNK_ELEMENTS // problem.num_tasks)))))
    if int(chunk) < 1:
        raise SweepError(f"chunk = {chunk}: must be >= 1")
    if block is None:  # equal blocks of equal chunks, with the least padding
        want = min(DEFAULT_BLOCK, max(1, BLOCK_ELEMENTS // problem.num_tasks))
        per_block = -(-size // -(-size // want))
        chunk = chunk_layout(per_block, devices, int(chunk))
        block = chunk * devices * -(-per_block // (chunk * devices))
    else:
        if int(block) < 1:
            raise SweepError(f"block = {block}: must be >= 1")
        chunk = max(1, min(int(chunk), -(-size // devices), -(-int(block) // devices)))
        per_block = devices * chunk
        block = per_block * max(1, min(-(-int(block) // per_block), -(-size // per_block)))
    return SweepPlan(problem, axis_list, method, integer, block, chunk, devices)


# ---------------------------------------------------------------- computing a block


def _point_columns(problem: Problem, solution, integer: str) -> dict:
    """The derived columns of one point (vmapped)."""
    ell = solution.budgets
    m1, m2 = moments(problem, ell)
    stable = solution.status != Status.UNSTABLE_QUEUE
    return dict(
        integer_budgets=jnp.where(stable, integer_budgets(problem, ell, integer), 0.0),
        accuracy=mean_accuracy(problem, ell),
        mean_system_time=jnp.where(stable, mean_system_time(problem.arrival_rate, m1, m2), jnp.inf),
        utilization=utilization(problem.arrival_rate, m1),
    )


def _compute_block(problem: Problem, values: tuple, start, targets: tuple, shape: tuple, solver, integer: str,
                   block: int, chunk: int, devices: int) -> dict:
    """Columns of points start .. start + block − 1 (indices past the end repeat the last point).

    They come out as the table stores them, so that the host wraps the device
    buffers without copying (:func:`_block_table`): the swept values, one row
    per task for the budgets ((N, block) arrays), integer budgets as integers,
    status codes as int8."""
    size = math.prod(shape)
    itype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    flat = jnp.minimum(start + jnp.arange(block, dtype=itype), size - 1)
    strides = np.cumprod((1,) + shape[::-1][:-1])[::-1]
    lane_values = tuple(v[(flat // int(s)) % n] for v, s, n in zip(values, strides, shape))

    def one_chunk(vals):
        lanes = _with_values(problem, targets, vals)
        fields = {f: getattr(lanes, f) for f in {fld for fld, _ in targets}}
        sol = solve_batch(problem, fields, solver)
        extra = jax.vmap(lambda f, s: _point_columns(problem.replace(**f), s, integer))(fields, sol)
        return dict(budgets=sol.budgets, objective=sol.objective, kkt_residual=sol.kkt_residual,
                    iterations=sol.iterations, status=sol.status, **extra)

    out = map_chunks(one_chunk, lane_values, chunk, devices)
    out["budgets"] = out["budgets"].T
    out["integer_budgets"] = out["integer_budgets"].T.astype(itype)
    out["status"] = out["status"].astype(jnp.int8)
    out["axes"] = lane_values
    return out


_compute_block_jit = eqx.filter_jit(_compute_block)


def _host_parts(x, axis: int = 0) -> list[np.ndarray]:
    """A device array as NumPy views of its shards along `axis`, in order (no copy
    on a CPU; a replicated array gives one part)."""
    parts = {}
    for shard in x.addressable_shards:
        parts.setdefault(shard.index[axis].start or 0, shard.data)
    return [np.asarray(parts[k]) for k in sorted(parts)]


def _block_table(plan: SweepPlan, index: int, out: dict):
    """The rows of block `index` as a pyarrow Table (padding dropped), its columns
    made of the device buffers (see :func:`_compute_block`)."""
    import pyarrow as pa

    n = min(plan.block, plan.size - index * plan.block)
    column = lambda parts: pa.chunked_array(parts).slice(0, n)
    cols: dict[str, Any] = {a.name: column(_host_parts(v)) for a, v in zip(plan.axes, out["axes"])}
    for kind, prefix in (("budgets", "budget_"), ("integer_budgets", "integer_budget_")):
        parts = _host_parts(out[kind], axis=1)
        if kind == "integer_budgets":  # int32 without jax_enable_x64
            parts = [p.astype(np.int64, copy=False) for p in parts]
        for k, t in enumerate(plan.problem.names):
            cols[prefix + t] = column([p[k] for p in parts])
    labels = pa.array([s.label for s in Status])
    for name in ("objective", "accuracy", "mean_system_time", "utilization", "status", "kkt_residual", "iterations"):
        parts = _host_parts(out[name])
        if name == "status":
            parts = [pa.DictionaryArray.from_arrays(pa.array(p), labels) for p in parts]
        cols[name] = column(parts)
    return pa.table(cols)


# ---------------------------------------------------------------- storage


class _PartStore:
    """Finished blocks as Arrow IPC files under `OUT.parts/`, keyed by the plan's fingerprint."""

    def __init__(self, out: Path, plan: SweepPlan, resume: bool, create: bool = True):
        self.out, self.plan = out, plan
        self.dir = out.with_name(out.name + ".parts")
        self.fingerprint = plan.fingerprint()
        spec = self.dir / "sweep.json"
        if self.dir.exists() and create:
            same = spec.exists() and json.loads(spec.read_text()).get("fingerprint") == self.fingerprint
            if not (same and resume):
                shutil.rmtree(self.dir)
        if create and not self.dir.exists():
            self.dir.mkdir(parents=True)
            tmp = spec.with_suffix(".tmp")
            tmp.write_text(json.dumps(dict(fingerprint=self.fingerprint, blocks=plan.num_blocks,
                                           points=plan.size, columns=plan.column_names())))
            os.replace(tmp, spec)

    def path(self, i: int) -> Path:
        return self.dir / f"block-{i:06d}.arrow"

    def done(self, i: int) -> bool:
        return self.path(i).exists()

    def write(self, i: int, table) -> None:
        import pyarrow as pa

        tmp = self.path(i).with_suffix(f".tmp{os.getpid()}")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, self.path(i))

    def read(self, i: int):
        import pyarrow as pa

        with pa.memory_map(str(self.path(i)), "r") as source:
            return pa.ipc.open_file(source).read_all()


_META_KEY = b"jaxalloc.sweep"


def _finished_fingerprint(path: Path) -> str | None:
    """The fingerprint stored in a complete sweep's Parquet file, if any."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[_META_KEY])["fingerprint"]
    except (OSError, KeyError, ValueError):
        return None


class _ParquetStream:
    """The final Parquet file, one row group per block, renamed into place when
    complete; its schema metadata holds the plan's fingerprint and axes."""

    def __init__(self, out: Path, plan: SweepPlan):
        self.out, self.tmp, self.writer = out, out.with_name(out.name + ".tmp"), None
        self.meta = {_META_KEY: json.dumps(dict(fingerprint=plan.fingerprint(), shape=list(plan.shape),
                                                axes=[a.name for a in plan.axes], method=plan.method,
                                                integer=plan.integer, dtype=str(plan.dtype))).encode()}

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        table = table.replace_schema_metadata(self.meta)
        if self.writer is None:
            self.writer = pq.ParquetWriter(str(self.tmp), table.schema, compression="snappy",
                                           use_dictionary=["status"], write_statistics=True)
        self.writer.write_table(table, row_group_size=table.num_rows)

    def close(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.out)


# ---------------------------------------------------------------- the driver


def _status_counts(table) -> np.ndarray:
    """Rows per :class:`Status` code of a table's dictionary-encoded `status` column."""
    codes = table.column("status").combine_chunks().indices.to_numpy()
    return np.bincount(codes, minlength=len(Status))


def _count_labels(counts) -> dict[str, int]:
    return {s.label: int(counts[s]) for s in Status if counts[s]}


@dataclass
class SweepResult:
    """What :func:`sweep` returns.

    **Fields:** `plan` (:class:`SweepPlan`), `path` (the Parquet file, or None),
    `table` (a pyarrow Table of all rows when no path was given, else None),
    `status_counts` (label → rows, over the blocks this process computed or
    read), `seconds` (wall time of this call), `computed_points` (points
    solved by this call; fewer than the sweep's on a resume), `complete`
    (the output holds every row; False on a process other than 0).
    """

    plan: SweepPlan
    path: Path | None
    table: Any
    status_counts: dict[str, int]
    seconds: float
    computed_points: int
    complete: bool

    @property
    def points_per_second(self) -> float:
        return self.computed_points / self.seconds if self.seconds > 0 else float("nan")

    def to_table(self):
        """All rows as a pyarrow Table (read from the file if there is one)."""
        if self.table is not None:
            return self.table
        import pyarrow.parquet as pq

        return pq.read_table(self.path)

    def grid(self, column: str) -> np.ndarray:
        """A column reshaped to the sweep's grid (axes in order), for plotting."""
        import pyarrow.parquet as pq

        data = self.table.column(column) if self.table is not None else pq.read_table(self.path, columns=[column]).column(0)
        return np.asarray(data.to_numpy(zero_copy_only=False)).reshape(self.plan.shape)

    def summary(self) -> dict[str, Any]:
        return dict(path=None if self.path is None else str(self.path), points=self.plan.size,
                    shape=list(self.plan.shape), axes=[a.name for a in self.plan.axes], method=self.plan.method,
                    dtype=str(self.plan.dtype), blocks=self.plan.num_blocks, devices=self.plan.devices,
                    computed_points=self.computed_points,
                    seconds=self.seconds, points_per_second=self.points_per_second,
                    status_counts=self.status_counts, complete=self.complete)


def _progress_bar(total: int, initial: int, enabled: bool | None, desc: str):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, unit="pt", unit_scale=True,
                desc=desc, file=sys.stderr, smoothing=0.1)


def sweep(problem: Problem, axes: Mapping[str, Any], *, method: str = "newton", integer: str = "auto",
          dtype=None, out: str | os.PathLike | None = None, resume: bool = True, progress: bool | None = None,
          block: int | None = None, chunk: int | None = None, devices: int | None = None,
          process_index: int | None = None, process_count: int | None = None,
          on_block: Callable[[int], None] | None = None) -> SweepResult:
    """Solve every point of a grid of operating points.

    **Arguments:**

    - `problem`: the base problem; fields not swept keep its values.
    - `axes`: name → values (1-D array) or a range string `START:STOP:NUM[:log]`;
      names are `arrival_rate`, `alpha`, `max_tokens` or `FIELD:TASK` (see
      the module docstring). The grid is their Cartesian product, C order.
    - `method`: solver name (default "newton").
    - `integer`: integer budgets: "auto" (eq. 39 enumeration up to
      :data:`SWEEP_ENUMERATE_TASKS` tasks, coordinate search up to
      :data:`SWEEP_COORDINATE_TASKS`, rounding beyond), "enumerate", "round"
      (eq. 40) or "coordinate".
    - `dtype`: e.g. `jnp.float32` for speed (about 2× on a CPU; budgets agree
      with float64 to a few hundredths of a token); default the problem's.
    - `out`: Parquet path; without it the rows are returned in memory.
    - `resume`: reuse finished blocks of an interrupted run of the same sweep.
    - `progress`: show a progress bar (default: when stderr is a terminal).
    - `block`, `chunk`, `devices`: points per compiled call (and per row
      group), points vmapped together, local devices to use (default all).
      By default the blocks hold at most 2^17 points and 2^22 points × tasks
      (so memory stays bounded at any N), all of equal size, cut into equal
      chunks of at most about 24,576 / N points, so that padding is small.
    - `process_index`, `process_count`: this process's share of the blocks
      (default `jax.process_index()` / `jax.process_count()`); needs `out`.
    - `on_block`: called with each block index when its part is written.

    **Returns:** a :class:`SweepResult`. Bad axes raise :class:`SweepError`,
    a bad base problem :class:`~jaxalloc.model.ProblemError`.
    """
    t_start = time.perf_counter()
    plan = plan_sweep(problem, axes, method=method, integer=integer, dtype=dtype, block=block, chunk=chunk,
                      devices=devices)
    p_index = jax.process_index() if process_index is None else int(process_index)
    p_count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= p_index < p_count:
        raise SweepError(f"process_index = {p_index}: must be in 0..{p_count - 1}")
    if p_count > 1 and out is None:
        raise SweepError("sweep: several processes need an output path (out=...)")
    path = None if out is None else Path(out)
    if path is not None and path.suffix != ".parquet":
        raise SweepError(f"out = {str(path)!r}: expected a .parquet file name")
    if path is not None and not path.parent.is_dir():
        raise SweepError(f"out = {str(path)!r}: directory {str(path.parent)!r} does not exist")

    if path is not None and resume and path.exists() and _finished_fingerprint(path) == plan.fingerprint():
        import pyarrow.parquet as pq  # the same sweep is already complete: nothing to do

        counts = _status_counts(pq.read_table(path, columns=["status"]))
        return SweepResult(plan, path, None, _count_labels(counts), time.perf_counter() - t_start, 0, True)
    solver = get_solver(method)
    values = tuple(jnp.asarray(a.values, plan.dtype) for a in plan.axes)
    targets = tuple((a.field, a.task) for a in plan.axes)
    mine = [i for i in range(plan.num_blocks) if i % p_count == p_index]
    store = None if path is None else _PartStore(path, plan, resume, create=p_index == 0 or p_count == 1)
    if store is not None and not store.dir.exists():  # another process creates it
        _wait_for(lambda: (store.dir / "sweep.json").exists(), "the parts directory")
        store = _PartStore(path, plan, resume, create=False)
    todo = [i for i in mine if store is None or not store.done(i)]
    final = path is not None and p_index == 0
    stream = _ParquetStream(path, plan) if final and p_count == 1 else None

    counts = np.zeros(len(Status), np.int64)
    tables: list = []
    rows = lambda blocks: sum(min(plan.block, plan.size - i * plan.block) for i in blocks)
    bar = _progress_bar(rows(mine), rows(set(mine) - set(todo)), progress, f"sweep {plan.size:,} points")
    work: queue.Queue = queue.Queue(maxsize=2)  # bounds memory: at most two blocks in flight
    errors: list[BaseException] = []

    def consume():
        try:
            while (item := work.get()) is not None:
                i, result = item
                table = store.read(i) if result is None else _block_table(plan, i, result)
                if result is not None:
                    if store is not None:
                        store.write(i, table)
                    bar.update(table.num_rows)
                    if on_block is not None:
                        on_block(i)
                counts[:] += _status_counts(table)
                if stream is not None:
                    stream.write(table)
                elif store is None:
                    tables.append(table)
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)
            while work.get() is not None:
                pass

    writer = threading.Thread(target=consume, daemon=True)
    writer.start()
    todo_set = set(todo)
    try:
        for i in (range(plan.num_blocks) if stream is not None or store is None else mine):
            if errors:
                break
            if i not in todo_set:
                if stream is not None:
                    work.put((i, None))
                continue
            start = jnp.asarray(i * plan.block, jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
            result = _compute_block_jit(plan.problem, values, start, targets, plan.shape, solver, plan.integer,
                                        plan.block, plan.chunk, plan.devices)
            work.put((i, result))
    finally:
        work.put(None)
        writer.join()
        bar.close()
    if errors:
        raise errors[0]

    if stream is not None:
        stream.close()
    elif final:  # several processes: wait for all parts, then write the file from them
        _wait_for(lambda: all(store.done(i) for i in range(plan.num_blocks)), "the other processes' blocks")
        stream = _ParquetStream(path, plan)
        counts[:] = 0
        for i in range(plan.num_blocks):
            table = store.read(i)
            counts[:] += _status_counts(table)
            stream.write(table)
        stream.close()
    complete = store is None or final  # in memory, or the process that wrote the file
    if complete and store is not None:
        shutil.rmtree(store.dir, ignore_errors=True)

    import pyarrow as pa

    table = pa.concat_tables(tables) if store is None else None
    return SweepResult(plan, path, table, _count_labels(counts),
                       time.perf_counter() - t_start, rows(todo), complete)


def _wait_for(ready: Callable[[], bool], what: str, timeout: float | None = None) -> None:
    timeout = float(os.environ.get("JAXALLOC_SWEEP_WAIT", "86400")) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SweepError(f"sweep: gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.2)
