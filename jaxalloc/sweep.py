"""Sweeps over many operating points: grids, blocks, devices, storage, resume.

A sweep is the Cartesian product of axes, each a field of the problem and the
values it takes: a scalar field (`arrival_rate`, `alpha`, `max_tokens`), a
parameter of the problem's server (`servers` for fifo, `max_batch` and
`batch_slowdown` for batching; the integer ones take whole numbers, and the
server is resized to hold the largest, see :meth:`~jaxalloc.servers.Server.resized`)
or one task's parameter written `FIELD:TASK`, TASK as the profile names it or its
index (`b:GSM8K`, `t0:0`, `prob:AIME`; for `prob` the other tasks' shares are
rescaled so that they still sum to 1).
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

Ctrl-C (a KeyboardInterrupt) while blocks are computed keeps every finished
block: the blocks already computed are still written, and the sweep raises
:class:`jaxalloc.errors.Interrupted` saying how many blocks it kept; the same
call resumes.

Several processes (several hosts under `jax.distributed`, or several local
processes) split the blocks round robin: process p of P computes blocks
p, p + P, ... and writes their parts; process 0 then waits for every part and
writes the Parquet file. They meet only in `OUT.parts/`, so several hosts need
`out` on a filesystem they all share. Without one, process 0 waits for parts it
never sees and gives up after `JAXALLOC_SWEEP_WAIT` seconds (default a day)
with an error naming the missing blocks. The protocol:

- Process 0 alone creates, clears and finally removes `OUT.parts/`. It keeps
  the folder if its `sweep.json` names this sweep (the fingerprint of
  everything that determines the rows) and resume is on; otherwise it discards
  the folder (renamed aside, then deleted) and starts a new *run*: an empty
  folder whose `sweep.json` holds the fingerprint and a new run id.
- A part holds the fingerprint, the run id and its block index in its Arrow
  schema metadata, and counts as finished only if it reads back with all three
  and the block's number of rows. Anything else (a leftover of another sweep or
  of an earlier run, a truncated file) is computed again and overwritten, never
  trusted; process 0 never deletes a part of the current run.
- The other processes wait for a `sweep.json` with this sweep's fingerprint (one
  with another fingerprint is a leftover that process 0 has yet to replace) and
  write their parts under its run id. With resume off such a file may still be
  the previous run's, so a process other than 0 then asks process 0 to admit it
  (a `join-I.json` request) and starts only once `sweep.json` lists it: the
  folder is then the one process 0 set up for this run. Start every process
  with the same arguments.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import queue
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .errors import Interrupted
from .files import replacing, why_unwritable
from .model import Problem, ProblemError, validate
from .objective import load, mean_accuracy
from .quantiles import check_supported, level_name, supported, system_time_quantiles
from .report import server_system_time
from .servers import SWEEPABLE
from .solution import Status
from .solve import chunk_layout, get_solver, map_chunks, solve_batch
from .solvers.integer import MAX_ENUMERATE_TASKS, integer_budgets

SCALAR_FIELDS = ("arrival_rate", "alpha", "max_tokens")
SERVER_FIELDS = SWEEPABLE
"""Server parameters that can be axes (those of the problem's server kind): `servers`, `max_batch`, `batch_slowdown`, `admission`."""
INTEGER_FIELDS = ("servers", "max_batch")
"""Axes whose values must be whole numbers (the server is resized to hold the largest)."""
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


QUANTILE_LEVELS = (0.95, 0.99)
"""The system-time quantiles a sweep stores, overall, at each point's continuous ℓ*: columns `p95`, `p99`."""
QUANTILE_METHODS = ("auto", "lundberg", "exact", "none")
"""`quantiles=` of :func:`sweep`: "auto" is "lundberg" for one FIFO server (the asymptote: fast, p99 within
0.5% of the exact inversion from a load of 0.17 up) and "exact" for priority; "none" stores no quantile."""


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
    """One swept field: `name` as given (`alpha`, `b:GSM8K`), the problem field,
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


def _server_axis(problem: Problem, name: str, values: np.ndarray) -> None:
    """Check an axis over a server parameter: one of the server's kind, whole numbers where it must be."""
    server = problem.server
    if name not in server.fields:
        has = f"it has: {', '.join(server.fields)}" if server.fields else "it has no parameter that can be an axis"
        raise SweepError(f"axis {name!r}: not a parameter of this profile's {server.kind!r} server ({has}; "
                         "choose the server with --server or the profile's [server] table)")
    if name in INTEGER_FIELDS:
        bad = (values != np.round(values)) | (values < 1)
        if bad.any():
            raise SweepError(f"axis {name!r}: value {values[bad][0]:g} is not an integer >= 1 ({name} takes whole "
                             f"numbers; e.g. {name}=1:8:8)")


def resized_for_axes(problem: Problem, axes) -> Problem:
    """`problem` with its server able to hold the largest value of each integer
    server axis (`servers`, `max_batch`; :meth:`~jaxalloc.servers.Server.resized`).
    `axes`: :class:`Axis` objects or (name, values) pairs."""
    size = 0
    for a in axes:
        fld, values = (a.field, a.values) if isinstance(a, Axis) else a
        if fld in INTEGER_FIELDS and fld in problem.server.fields:
            size = max(size, int(np.max(values)))
    return problem if size < 1 else problem.replace(server=problem.server.resized(size))


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
        if fld in SCALAR_FIELDS + SERVER_FIELDS and not key:
            task = None
        elif fld in PER_TASK_FIELDS and key:
            task = _task_index(problem, name, key)
        else:
            raise SweepError(
                f"axis {name!r}: expected one of {', '.join(SCALAR_FIELDS + SERVER_FIELDS)} or FIELD:TASK with FIELD "
                f"in {', '.join(PER_TASK_FIELDS)} (e.g. b:{problem.names[0]})"
            )
        if (fld, task) in seen:
            raise SweepError(f"axis {name!r}: the same field is swept twice")
        seen.add((fld, task))
        bad = ~np.isfinite(values)
        if bad.any():
            raise SweepError(f"axis {name!r}: value {values[bad][0]} is not a finite number")
        if fld in SERVER_FIELDS:
            _server_axis(problem, fld, values)
        if fld == "prob" and not ((values > 0) & (values < 1)).all():
            v = values[~((values > 0) & (values < 1))][0]
            raise SweepError(f"axis {name!r}: prob = {v:g} must be in (0, 1)")
        base = resized_for_axes(problem, [(fld, values)])
        for v in (values.min(), values.max()):  # the rules are intervals: the extremes decide
            try:
                validate(_with_values(base, [(fld, task)], [np.float64(v)]), stability=False)
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
    quantiles: str | None = None
    """The quantile method of the columns p95 and p99 ("lundberg" or "exact"), None without them."""

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

    def rows(self, blocks) -> int:
        """Points in the given blocks (the last block may be short)."""
        return sum(min(self.block, self.size - i * self.block) for i in blocks)

    def fingerprint(self) -> str:
        """A hash of everything that determines the output rows."""
        from . import __version__
        from .model import problem_to_toml

        h = hashlib.sha256()
        head = {"version": __version__, "method": self.method, "integer": self.integer, "block": self.block,
                    "chunk": self.chunk, "dtype": str(self.dtype), "axes": [a.name for a in self.axes]}
        if self.quantiles is not None:  # a sweep without quantile columns keeps its fingerprint
            head["quantiles"] = self.quantiles
        h.update(json.dumps(head, sort_keys=True).encode())
        h.update(problem_to_toml(self.problem).encode())
        for a in self.axes:
            h.update(np.ascontiguousarray(a.values, np.float64).tobytes())
        return h.hexdigest()

    def quantile_columns(self) -> list[str]:
        """`p95`, `p99` (:data:`QUANTILE_LEVELS`), or none without quantiles."""
        return [] if self.quantiles is None else [level_name(q) for q in QUANTILE_LEVELS]

    def point_columns(self) -> list[str]:
        """The columns of one number per point that follow the budgets."""
        return (["objective", "accuracy", "mean_system_time", *self.quantile_columns(), "utilization", "status",
                 "kkt_residual", "iterations"])

    def column_names(self) -> list[str]:
        names = self.problem.names
        return ([a.name for a in self.axes] + [f"budget_{t}" for t in names]
                + [f"integer_budget_{t}" for t in names] + self.point_columns())


def _method_name(problem: Problem, method) -> str:
    """The solver name a plan records (and its fingerprint holds): `method`, or for
    None / "auto" the default solver of the problem's server ("newton" for the
    paper's, so that default sweeps keep their fingerprint)."""
    import importlib

    solve_module = importlib.import_module("jaxalloc.solve")  # the module (the package's `solve` is the function)

    solver_for = getattr(solve_module, "solver_for", None)
    if solver_for is None:
        return "newton" if method in (None, "auto") else method
    return solve_module.method_name(solver_for(problem, None if method == "auto" else method))


def sweep_quantile_method(problem: Problem, quantiles: str | None) -> str | None:
    """The quantile method a sweep of `problem` uses for its columns p95 and p99, None for no columns:
    `quantiles` None or "none"; "auto" on a server without quantiles (see :func:`missing_quantiles`).
    An explicit "lundberg" or "exact" the server cannot do is a
    :class:`~jaxalloc.quantiles.QuantileError` naming the server."""
    if quantiles is None or quantiles == "none":
        return None
    if quantiles not in QUANTILE_METHODS:
        raise SweepError(f"quantiles = {quantiles!r}: expected one of {', '.join(QUANTILE_METHODS)}")
    if quantiles == "auto":
        if not supported(problem):
            return None
        return "lundberg" if problem.server.kind == "fifo" else "exact"
    check_supported(problem, quantiles)
    return quantiles


def missing_quantiles(problem: Problem) -> str | None:
    """Why a sweep of `problem` (its server resized for the axes: :attr:`SweepPlan.problem`) has no
    quantile columns under "auto": the server's reason, or None when it has them."""
    try:
        check_supported(problem)
    except ProblemError as err:
        return str(err)
    return None


def plan_sweep(problem: Problem, axes: Mapping[str, Any], *, method: str = "auto", integer: str = "auto",
               quantiles: str | None = "auto", dtype=None, block: int | None = None, chunk: int | None = None,
               devices: int | None = None) -> SweepPlan:
    """Check a sweep and fix its block layout. Arguments as in :func:`sweep`."""
    validate(problem, stability=False)
    get_solver(method)  # unknown method: ValueError naming it
    method = _method_name(problem, method)
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
    problem = resized_for_axes(problem, axis_list)
    quantile_method = sweep_quantile_method(problem, quantiles)  # after resizing: servers > 1 have none
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
    return SweepPlan(problem, axis_list, method, integer, block, chunk, devices, quantile_method)


# ---------------------------------------------------------------- computing a block


def _overall_quantiles(problem: Problem, ell, method: str):
    """The :data:`QUANTILE_LEVELS` quantiles of the system time at ℓ (L,), computed in float64 where
    JAX has it (the transform inversion needs it), returned in ℓ's dtype; +inf where the queue is unstable."""
    wide = jnp.float64 if jax.config.jax_enable_x64 else ell.dtype
    q = system_time_quantiles(problem.astype(wide), ell.astype(wide), QUANTILE_LEVELS, method).overall
    return q.astype(ell.dtype)


def _point_columns(problem: Problem, solution, integer: str, quantiles: str | None) -> dict:
    """The derived columns of one point (vmapped)."""
    ell = solution.budgets
    stable = solution.status != Status.UNSTABLE_QUEUE
    out = {
        "integer_budgets": jnp.where(stable, integer_budgets(problem, ell, integer), 0.0),
        "accuracy": mean_accuracy(problem, ell),
        "mean_system_time": jnp.where(stable, server_system_time(problem, ell), jnp.inf),
        "utilization": load(problem, ell),  # λE[S] / capacity (ρ of eq. 4 for one server)
    }
    if quantiles is not None:
        q = _overall_quantiles(problem, ell, quantiles)
        for i, level in enumerate(QUANTILE_LEVELS):
            out[level_name(level)] = jnp.where(stable, q[i], jnp.inf)
    return out


def _compute_block(problem: Problem, values: tuple, start, targets: tuple, shape: tuple, solver, integer: str,
                   quantiles: str | None, block: int, chunk: int, devices: int) -> dict:
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
        fields = {f: getattr(lanes.server if f in SERVER_FIELDS else lanes, f) for f in {fld for fld, _ in targets}}
        sol = solve_batch(problem, fields, solver)
        # each point's columns on the server its budgets were solved for (a priority "auto"
        # server: the order chosen at that point)
        extra = jax.vmap(lambda f, s: _point_columns(problem.replace(**f).replace(server=s.server), s, integer,
                                                     quantiles))(fields, sol)
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

    n = plan.rows([index])
    column = lambda parts: pa.chunked_array(parts).slice(0, n)
    cols: dict[str, Any] = {a.name: column(_host_parts(v)) for a, v in zip(plan.axes, out["axes"])}
    for kind, prefix in (("budgets", "budget_"), ("integer_budgets", "integer_budget_")):
        parts = _host_parts(out[kind], axis=1)
        if kind == "integer_budgets":  # int32 without jax_enable_x64
            parts = [p.astype(np.int64, copy=False) for p in parts]
        for k, t in enumerate(plan.problem.names):
            cols[prefix + t] = column([p[k] for p in parts])
    labels = pa.array([s.label for s in Status])
    for name in plan.point_columns():
        parts = _host_parts(out[name])
        if name == "status":
            parts = [pa.DictionaryArray.from_arrays(pa.array(p), labels) for p in parts]
        cols[name] = column(parts)
    return pa.table(cols)


# ---------------------------------------------------------------- storage

_PART_KEY = b"jaxalloc.part"
_META_KEY = b"jaxalloc.sweep"


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _read_json(path: Path) -> dict:
    """The JSON object in `path`; {} if it is missing or not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    """Write `path` whole (:func:`jaxalloc.files.replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data))


def _remove_dir(folder: Path) -> None:
    """Delete `folder`, renamed aside first: a process still writing into it
    can neither make the deletion fail nor write into its successor."""
    aside = folder.with_name(f"{folder.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


class _PartStore:
    """Finished blocks as Arrow IPC files under `OUT.parts/` (the protocol
    between processes is in the module docstring).

    `spec` is the content of `sweep.json`, which only process 0 writes: the
    sweep's fingerprint, the run id, and `joined` (process index → the request
    id of each process admitted, see :meth:`join`)."""

    def __init__(self, out: Path, plan: SweepPlan, spec: dict):
        self.plan, self.spec, self.dir = plan, spec, _parts_dir(out)

    @classmethod
    def create(cls, out: Path, plan: SweepPlan, resume: bool) -> tuple[_PartStore, int]:
        """Process 0's side: keep the folder if it holds this sweep and `resume`,
        else start a new run in an empty folder. Returns the store and the number
        of finished blocks of a different sweep that were discarded."""
        folder, fingerprint = _parts_dir(out), plan.fingerprint()
        old = _read_json(folder / "sweep.json")
        if resume and old.get("fingerprint") == fingerprint and "run" in old:
            return cls(out, plan, old), 0
        discarded = 0
        if folder.exists():
            if old.get("fingerprint") != fingerprint:  # with --no-resume the same sweep's blocks are no news
                discarded = sum(1 for _ in folder.glob("block-*.arrow"))
            _remove_dir(folder)
        folder.mkdir(exist_ok=True)
        store = cls(out, plan, {"fingerprint": fingerprint, "run": uuid.uuid4().hex, "blocks": plan.num_blocks,
                                "points": plan.size, "columns": plan.column_names(), "joined": {}})
        store._write_spec()
        return store, discarded

    @classmethod
    def join(cls, out: Path, plan: SweepPlan, resume: bool, index: int) -> _PartStore | None:
        """The side of process `index` > 0: wait (up to JAXALLOC_SWEEP_WAIT s) for
        process 0's `sweep.json` of this sweep and take its run; None if this
        sweep's finished Parquet file turns up instead (with `resume`). Without
        `resume`, the `sweep.json` must also list this call's request, which it
        writes as `join-<index>.json` (again whenever that file is gone with a
        folder process 0 discarded, or holds an earlier call's request) and
        process 0 answers (:meth:`admit`)."""
        folder, fingerprint = _parts_dir(out), plan.fingerprint()
        request_id = None if resume else uuid.uuid4().hex
        request = folder / f"join-{index}.json"

        def ready():
            if resume and _finished_fingerprint(out) == fingerprint:
                return "finished"
            spec = _read_json(folder / "sweep.json")
            if spec.get("fingerprint") != fingerprint or "run" not in spec:
                return None  # nothing yet, or a leftover of another sweep that process 0 will replace
            if request_id is None or spec.get("joined", {}).get(str(index)) == request_id:
                return spec
            if _read_json(request).get("request") != request_id:  # none yet, or a stopped call's
                with contextlib.suppress(FileNotFoundError):  # the folder is being replaced: next time
                    _write_json(request, {"fingerprint": fingerprint, "request": request_id})
            return None

        def waiting() -> str:
            spec = _read_json(folder / "sweep.json")
            why = ("it holds no sweep.json" if not spec else
                   "its sweep.json is of a different sweep" if spec.get("fingerprint") != fingerprint else
                   "process 0 has not admitted this run started with resume off")
            return (f"process 0 to start this sweep in {str(folder)!r} ({why}); process 0 must run the same "
                    "sweep, with out on a filesystem every host sees")

        found = _wait_for(ready, waiting)
        return None if found == "finished" else cls(out, plan, found)

    def admit(self) -> None:
        """Process 0: list the join requests of this sweep in `sweep.json`."""
        joined = self.spec.setdefault("joined", {})
        new = {}
        for request in self.dir.glob("join-*.json"):
            data, index = _read_json(request), request.stem.removeprefix("join-")
            if data.get("fingerprint") == self.spec["fingerprint"] and joined.get(index) != data.get("request"):
                new[index] = data.get("request")
        if new:
            joined.update(new)
            self._write_spec()

    def same_run(self) -> bool:
        """False if process 0 has since started another run of this sweep (it
        was started with resume off, this process with resume on)."""
        now = _read_json(self.dir / "sweep.json")
        return now.get("fingerprint") != self.spec["fingerprint"] or now.get("run") == self.spec["run"]

    def _write_spec(self) -> None:
        _write_json(self.dir / "sweep.json", self.spec)

    def path(self, i: int) -> Path:
        return self.dir / f"block-{i:06d}.arrow"

    def _tag(self, i: int) -> dict:
        return {"fingerprint": self.spec["fingerprint"], "run": self.spec["run"], "block": i}

    def valid(self, i: int) -> bool:
        """Block `i` has a part of this run: its metadata match and it has the block's rows."""
        import pyarrow as pa

        try:
            table = self.read(i)
            tag = json.loads((table.schema.metadata or {}).get(_PART_KEY, b"null"))
        except (OSError, ValueError, pa.ArrowException):  # missing, truncated, not Arrow
            return False
        return tag == self._tag(i) and table.num_rows == self.plan.rows([i])

    def write(self, i: int, table) -> None:
        import pyarrow as pa

        table = table.replace_schema_metadata({_PART_KEY: json.dumps(self._tag(i))})
        with (replacing(self.path(i)) as tmp, pa.OSFile(str(tmp), "wb") as sink,
              pa.ipc.new_file(sink, table.schema) as writer):
            writer.write_table(table)

    def read(self, i: int):
        import pyarrow as pa

        with pa.memory_map(str(self.path(i)), "r") as source:
            return pa.ipc.open_file(source).read_all()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _finished_fingerprint(path: Path) -> str | None:
    """The fingerprint stored in a complete sweep's Parquet file, if any."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[_META_KEY])["fingerprint"]
    except (OSError, KeyError, ValueError):
        return None


class _ParquetStream:
    """The final Parquet file, one row group per block, written under a
    temporary name and renamed into place when complete (a context manager: on
    an exception the temporary file is deleted); its schema metadata holds the
    plan's fingerprint and axes."""

    def __init__(self, out: Path, plan: SweepPlan):
        self.out, self.tmp, self.writer = out, out.with_name(out.name + ".tmp"), None
        self.meta = {_META_KEY: json.dumps({"fingerprint": plan.fingerprint(), "shape": list(plan.shape),
                                                "axes": [a.name for a in plan.axes], "method": plan.method,
                                                "integer": plan.integer, "quantiles": plan.quantiles,
                                                "dtype": str(plan.dtype)}).encode()}

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        table = table.replace_schema_metadata(self.meta)
        if self.writer is None:
            self.writer = pq.ParquetWriter(str(self.tmp), table.schema, compression="snappy",
                                           use_dictionary=["status"], write_statistics=True)
        self.writer.write_table(table, row_group_size=table.num_rows)

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb) -> None:
        if self.writer is not None:
            self.writer.close()
        if kind is None:
            os.replace(self.tmp, self.out)
        else:
            self.tmp.unlink(missing_ok=True)


def _check_out(path: Path) -> None:
    """Raise SweepError unless `path` names a Parquet file in an existing folder."""
    if path.suffix != ".parquet":
        raise SweepError(f"out = {str(path)!r}: expected a .parquet file name")
    if not path.parent.is_dir():
        raise SweepError(f"out = {str(path)!r}: directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise SweepError(f"out = {str(path)!r}: is a directory")


def _check_writable(path: Path) -> None:
    """Raise SweepError, before any work, unless `path` (and the parts folder beside it) can be written."""
    reason = why_unwritable(path)
    if reason is not None:
        raise SweepError(f"out = {str(path)!r}: cannot write it: {reason}")


def _out_error(path: Path, what: str, err: OSError) -> SweepError:
    return SweepError(f"out = {str(path)!r}: {what}: {err.strerror or err}")


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
    (the output holds every row; False on a process other than 0),
    `already_complete` (the file already held this sweep: nothing was done),
    `discarded_blocks` (finished blocks of a different sweep found in
    `OUT.parts/` and deleted), `replaced_file` (the output file held a
    different sweep, now replaced).
    """

    plan: SweepPlan
    path: Path | None
    table: Any
    status_counts: dict[str, int]
    seconds: float
    computed_points: int
    complete: bool
    already_complete: bool = False
    discarded_blocks: int = 0
    replaced_file: bool = False

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
        return {"path": None if self.path is None else str(self.path), "points": self.plan.size,
                    "shape": list(self.plan.shape), "axes": [a.name for a in self.plan.axes], "method": self.plan.method,
                    "quantile_method": self.plan.quantiles,
                    "dtype": str(self.plan.dtype), "blocks": self.plan.num_blocks, "devices": self.plan.devices,
                    "computed_points": self.computed_points,
                    "seconds": self.seconds, "points_per_second": self.points_per_second,
                    "status_counts": self.status_counts, "complete": self.complete,
                    "already_complete": self.already_complete, "discarded_blocks": self.discarded_blocks,
                    "replaced_file": self.replaced_file}


def _progress_bar(total: int, initial: int, enabled: bool | None, desc: str):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, unit="pt", unit_scale=True,
                desc=desc, file=sys.stderr, smoothing=0.1)


def sweep(problem: Problem, axes: Mapping[str, Any], *, method: str = "auto", integer: str = "auto",
          quantiles: str | None = "auto", dtype=None, out: str | os.PathLike | None = None, resume: bool = True, progress: bool | None = None,
          block: int | None = None, chunk: int | None = None, devices: int | None = None,
          process_index: int | None = None, process_count: int | None = None,
          on_block: Callable[[int], None] | None = None) -> SweepResult:
    """Solve every point of a grid of operating points.

    **Arguments:**

    - `problem`: the base problem; fields not swept keep its values.
    - `axes`: name → values (1-D array) or a range string `START:STOP:NUM[:log]`;
      names are `arrival_rate`, `alpha`, `max_tokens` or `FIELD:TASK` (see
      the module docstring). The grid is their Cartesian product, C order.
    - `method`: solver name; "auto" (default): the default solver of the
      problem's server ("newton" for fifo and batching, "projected-newton"
      for priority), recorded by that name.
    - `integer`: integer budgets: "auto" (eq. 39 enumeration up to
      :data:`SWEEP_ENUMERATE_TASKS` tasks, coordinate search up to
      :data:`SWEEP_COORDINATE_TASKS`, rounding beyond), "enumerate", "round"
      (eq. 40) or "coordinate".
    - `quantiles`: the method of the columns `p95` and `p99` (the overall
      system time's quantiles at each point's continuous ℓ*, +inf where the
      queue is unstable; :mod:`jaxalloc.quantiles`): "auto" (default:
      "lundberg" for one FIFO server, "exact" for priority, no columns for a
      server without quantiles, see :func:`missing_quantiles`), "lundberg",
      "exact", or "none" (no columns). Part of the fingerprint.
    - `dtype`: e.g. `jnp.float32` for speed (about 2× on a CPU; budgets agree
      with float64 to a few hundredths of a token); default the problem's.
    - `out`: Parquet path; without it the rows are returned in memory.
    - `resume`: reuse finished blocks of an interrupted run of the same sweep
      (and return at once if `out` already holds it).
    - `progress`: show a progress bar (default: when stderr is a terminal).
    - `block`, `chunk`, `devices`: points per compiled call (and per row
      group), points vmapped together, local devices to use (default all).
      By default the blocks hold at most 2^17 points and 2^22 points × tasks
      (so memory stays bounded at any N), all of equal size, cut into equal
      chunks of at most about 24,576 / N points, so that padding is small.
    - `process_index`, `process_count`: this process's share of the blocks
      (default `jax.process_index()` / `jax.process_count()`); needs `out`.
    - `on_block`: called with each block index when its part is written
      (in a background thread; what it raises stops the sweep).

    **Returns:** a :class:`SweepResult`. Bad axes raise :class:`SweepError`,
    a bad base problem :class:`~jaxalloc.model.ProblemError`; so does an `out`
    that cannot be written (:class:`SweepError`, before any work, or when a
    write fails). Ctrl-C raises :class:`jaxalloc.errors.Interrupted` once the
    finished blocks are written.
    """
    t_start = time.perf_counter()
    plan = plan_sweep(problem, axes, method=method, integer=integer, quantiles=quantiles, dtype=dtype, block=block,
                      chunk=chunk, devices=devices)
    p_index = jax.process_index() if process_index is None else int(process_index)
    p_count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= p_index < p_count:
        raise SweepError(f"process_index = {p_index}: must be in 0..{p_count - 1}")
    if p_count > 1 and out is None:
        raise SweepError("sweep: several processes need an output path (out=...)")
    path = None if out is None else Path(out)
    if path is not None:
        _check_out(path)
        if resume and _finished_fingerprint(path) == plan.fingerprint():
            return _finished_result(plan, path, t_start)
        _check_writable(path)
    try:
        return _run(plan, path, resume, p_index, p_count, progress, on_block, t_start)
    except OSError as err:
        if path is None:
            raise
        raise _out_error(path, "writing failed", err) from err


def _finished_result(plan: SweepPlan, path: Path, t_start: float) -> SweepResult:
    """The result of a sweep whose file is already complete: nothing to do."""
    import pyarrow.parquet as pq

    counts = _status_counts(pq.read_table(path, columns=["status"]))
    return SweepResult(plan, path, None, _count_labels(counts), time.perf_counter() - t_start, 0, True,
                       already_complete=True)


def _run(plan: SweepPlan, path: Path | None, resume: bool, p_index: int, p_count: int, progress, on_block,
         t_start: float) -> SweepResult:
    """:func:`sweep` after its checks: set up the parts, solve this process's
    blocks, and (process 0) write the Parquet file."""
    first, several = p_index == 0, p_count > 1
    store, discarded, replaced = None, 0, False
    if path is not None and first:
        replaced = path.exists() and _finished_fingerprint(path) != plan.fingerprint()
        store, discarded = _PartStore.create(path, plan, resume)
    elif path is not None:
        store = _PartStore.join(path, plan, resume, p_index)
        if store is None:  # process 0 finished the file meanwhile
            return _finished_result(plan, path, t_start)
    mine = range(p_index, plan.num_blocks, p_count)
    done = {i for i in mine if resume and store is not None and store.valid(i)}
    finished: list[int] = []
    bar = _progress_bar(plan.rows(mine), plan.rows(done), progress, f"sweep {plan.size:,} points")
    try:
        with contextlib.ExitStack() as stack:
            if first and several:
                stack.enter_context(_admitting(store))
            stream = stack.enter_context(_ParquetStream(path, plan)) if path is not None and not several else None
            with _Writer(plan, store, stream, bar, on_block, finished) as writer:
                _solve_blocks(plan, mine, done, writer)
            counts = _gather(store, path, plan, p_count) if first and several else writer.counts
    except KeyboardInterrupt as err:
        if store is None:
            raise
        who = f" (process {p_index} of {p_count})" if several else ""
        raise Interrupted(f"{len(done) + len(finished)} of {len(mine)} blocks kept{who}; "
                          "run the same command to resume") from err
    finally:
        bar.close()
    if store is not None and first:
        store.remove()
    elif store is not None and not store.same_run():
        raise SweepError(f"sweep: process 0 started this sweep over (resume off) while process {p_index} ran "
                         "with resume on: start every process with the same arguments")
    import pyarrow as pa

    table = pa.concat_tables(writer.tables) if store is None else None
    return SweepResult(plan, path, table, _count_labels(counts), time.perf_counter() - t_start,
                       plan.rows(set(mine) - done), store is None or first,
                       discarded_blocks=discarded, replaced_file=replaced)


class _Writer:
    """A background thread that stores each computed block while the next one
    computes: as a part, as a row group of `stream`, or in `tables` (in memory).
    A context manager: on leaving it, even by an exception (Ctrl-C included),
    every block handed over is stored before the thread stops.

    `finished` collects the blocks computed and stored; `counts` the status
    counts of every block handed over; `error` the first exception, after
    which the thread only drains the queue, except after a KeyboardInterrupt
    (from `on_block`): like Ctrl-C, that one still lets it store the blocks
    already computed."""

    def __init__(self, plan: SweepPlan, store: _PartStore | None, stream: _ParquetStream | None, bar,
                 on_block, finished: list[int]):
        self.plan, self.store, self.stream, self.bar, self.on_block = plan, store, stream, bar, on_block
        self.finished = finished
        self.counts = np.zeros(len(Status), np.int64)
        self.tables: list = []
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=2)  # bounds memory: at most two blocks waiting
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def put(self, i: int, result: dict | None) -> None:
        """Hand over block `i`: its computed columns, or None to read its part."""
        self._queue.put((i, result))

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb) -> None:
        """Store every block handed over (unless the thread stopped), stop the
        thread, and raise its error unless an exception is already on its way."""
        self._queue.put(None)
        self._thread.join()
        if kind is None and self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is None or isinstance(self.error, KeyboardInterrupt):
                try:
                    self._store(*item)
                except BaseException as err:  # noqa: BLE001 - raised again in the main thread
                    self.error = self.error or err

    def _store(self, i: int, result: dict | None) -> None:
        table = self.store.read(i) if result is None else _block_table(self.plan, i, result)
        if result is not None:
            if self.store is not None:
                self.store.write(i, table)
            self.finished.append(i)
            self.bar.update(table.num_rows)
            if self.on_block is not None and self.error is None:
                self.on_block(i)
        self.counts += _status_counts(table)
        if self.stream is not None:
            self.stream.write(table)
        elif self.store is None:
            self.tables.append(table)


def _solve_blocks(plan: SweepPlan, blocks, done: set[int], writer: _Writer) -> None:
    """Compute `blocks` in order and hand them to `writer` (a block in `done` as
    None: its part is read back), until the writer fails."""
    solver = get_solver(plan.method)
    values = tuple(jnp.asarray(a.values, plan.dtype) for a in plan.axes)
    targets = tuple((a.field, a.task) for a in plan.axes)
    itype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    for i in blocks:
        if writer.error is not None:
            break
        if i in done:
            writer.put(i, None)
            continue
        writer.put(i, _compute_block_jit(plan.problem, values, jnp.asarray(i * plan.block, itype), targets,
                                         plan.shape, solver, plan.integer, plan.quantiles, plan.block, plan.chunk,
                                         plan.devices))


@contextlib.contextmanager
def _admitting(store: _PartStore):
    """Process 0 of several: answer join requests (:meth:`_PartStore.admit`)
    every 0.2 s while the body runs."""
    stop = threading.Event()

    def loop():
        while True:
            with contextlib.suppress(OSError):  # e.g. a full disk: the waiting process says so in the end
                store.admit()
            if stop.wait(0.2):
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _gather(store: _PartStore, path: Path, plan: SweepPlan, p_count: int) -> np.ndarray:
    """Process 0 of several: wait for every block's part of this run, then write
    the Parquet file from them. Returns the status counts."""
    ready: set[int] = set()

    def all_ready() -> bool:
        ready.update(i for i in range(plan.num_blocks) if i not in ready and store.valid(i))
        return len(ready) == plan.num_blocks

    def waiting() -> str:
        missing = sorted(set(range(plan.num_blocks)) - ready)
        owners = sorted({i % p_count for i in missing})
        return (f"block{'s' if len(missing) > 1 else ''} {_some(missing)} (process{'es' if len(owners) > 1 else ''} "
                f"{_some(owners)}) in {str(store.dir)!r}; several hosts need out on a filesystem they all share")

    _wait_for(all_ready, waiting)
    counts = np.zeros(len(Status), np.int64)
    with _ParquetStream(path, plan) as stream:
        for i in range(plan.num_blocks):
            table = store.read(i)
            counts += _status_counts(table)
            stream.write(table)
    return counts


def _some(numbers: list[int], most: int = 10) -> str:
    """`1, 3, 5`, or the first `most` and how many in all."""
    text = ", ".join(map(str, numbers[:most]))
    return text if len(numbers) <= most else f"{text}, ... ({len(numbers)} in all)"


def _wait_for(ready: Callable[[], Any], what: Callable[[], str]) -> Any:
    """Call `ready` every 0.2 s until it returns something true, and return that;
    after JAXALLOC_SWEEP_WAIT seconds (default a day) raise :class:`SweepError`
    saying what it waited for (`what()`)."""
    text = os.environ.get("JAXALLOC_SWEEP_WAIT", "86400")
    try:
        timeout = float(text)
    except ValueError:
        raise SweepError(f"JAXALLOC_SWEEP_WAIT = {text!r}: expected a number of seconds") from None
    deadline = time.monotonic() + timeout
    while not (found := ready()):
        if time.monotonic() > deadline:
            raise SweepError(f"sweep: gave up after {timeout:g} s (JAXALLOC_SWEEP_WAIT) waiting for {what()}")
        time.sleep(0.2)
    return found
