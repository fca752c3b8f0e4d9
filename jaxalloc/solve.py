"""`solve`: the entry point from a problem to its optimal budgets.

:func:`solve_point` is the pure, jit- and vmap-friendly core: it never raises,
and flags what went wrong in :attr:`Solution.status`. :func:`solve` validates
a concrete problem, runs the compiled core, and raises :class:`SolveError` on
any status but converged (unless `throw=False`).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jaxtyping import Array

from .model import Problem, validate
from .objective import gradient, kkt_residual, moments, objective
from .solution import Solution, Status, final_status
from .solvers import METHODS, AggregateNewton
from .solvers.base import kkt_tolerance, small_enough
from .solvers.newton_batched import newton_batch
from .solvers.projected_newton import hessian_diagonal

DEFAULT_SOLVER = AggregateNewton()
"""The solver of :func:`solve_point` and :func:`solve_batch` when none is given
(a module of hyperparameters only, so one instance serves every call)."""


class SolveError(RuntimeError):
    """A solve ended in a status other than converged."""


def get_solver(method="newton"):
    """A solver instance from a method name (a key of
    :data:`jaxalloc.solvers.METHODS`) or an instance, returned as is."""
    if isinstance(method, str):
        try:
            return METHODS[method]()
        except KeyError:
            raise ValueError(
                f"method = {method!r}: expected one of {', '.join(METHODS)}"
            ) from None
    return method


def _stand_in(problem: Problem):
    """(arrival rate to hand the solver, stable at ℓ = 0?). Unstable points are
    solved at a harmless stand-in load so that they stop at once under vmap
    instead of spinning to max_steps; their result is discarded by
    :func:`_summarize`."""
    m1_zero = moments(problem, jnp.zeros_like(problem.A))[0]
    stable0 = problem.arrival_rate * m1_zero < 1
    tiny = jnp.finfo(problem.A.dtype).tiny
    return jnp.where(stable0, problem.arrival_rate, 0.5 / jnp.maximum(m1_zero, tiny)), stable0


def scaled_kkt_residual(problem: Problem, budgets) -> Array:
    """Per task, |P(ℓ + ∇J(ℓ)/h) − ℓ| in tokens, h = diag(−∇²J(ℓ)) > 0 (Lemma 1).

    The KKT residual of :func:`~jaxalloc.objective.kkt_residual` with each
    gradient component divided by its curvature: the move of one diagonal
    Newton (Jacobi) step, so it compares with a tolerance on budgets, in the
    units of every solver's stopping test, whatever the scale of J.
    """
    g = gradient(problem, budgets)
    h = jnp.maximum(hessian_diagonal(problem, budgets), jnp.finfo(budgets.dtype).tiny)
    return jnp.abs(jnp.clip(g / h, -budgets, problem.max_tokens - budgets))


def stationary(problem: Problem, budgets) -> Array:
    """The check behind a `converged` status: ‖:func:`scaled_kkt_residual`‖∞ ≤
    :func:`~jaxalloc.solvers.base.kkt_tolerance` × max(1, ‖ℓ‖∞) (1e-9 relative
    in float64, 2e-3 in float32), independent of the solver and its `tol`."""
    return small_enough(scaled_kkt_residual(problem, budgets), budgets, kkt_tolerance(budgets.dtype))


def _summarize(problem: Problem, budgets, steps, done, stable0) -> Solution:
    value = objective(problem, budgets)
    residual = kkt_residual(problem, budgets)
    status = final_status(done, budgets, value, stable0, stationary(problem, budgets))
    return Solution(
        budgets=jnp.where(stable0, budgets, 0.0),
        objective=jnp.where(stable0, value, -jnp.inf),
        kkt_residual=jnp.where(stable0, residual, jnp.inf),
        iterations=jnp.asarray(steps, jnp.int32),
        status=status,
    )


def solve_point(problem: Problem, solver=DEFAULT_SOLVER, start=None) -> Solution:
    """Solve (9) for one problem; pure JAX, safe under `jit` and `vmap`.

    **Arguments:**

    - `problem`: the problem (may hold tracers).
    - `solver`: a solver module (see :mod:`jaxalloc.solvers`).
    - `start`: optional starting budgets (must be stable); default ℓ = 0.

    **Returns:** a :class:`Solution`. A point whose queue is unstable even at
    ℓ = 0 gets status `UNSTABLE_QUEUE`, budgets 0, objective −inf.
    """
    rate, stable0 = _stand_in(problem)
    budgets, steps, done = solver(problem.replace(arrival_rate=rate), start)
    return _summarize(problem, budgets, steps, done, stable0)


def solve_batch(problem: Problem, fields: dict, solver=DEFAULT_SOLVER, *, warm_start: int = 16) -> Solution:
    """Solve a batch of points, like `vmap(solve_point)`, but faster.

    **Arguments:**

    - `problem`: the base problem (unbatched).
    - `fields`: the fields that vary, each with a leading batch axis of equal
      size, e.g. `{"arrival_rate": lam, "alpha": alpha}`. Fields left out stay
      unbatched, so what depends only on them (logarithms of A, b, c) is
      computed once for the batch rather than per point.
    - `solver`: a solver module.
    - `warm_start`: for :class:`AggregateNewton`, solve every `warm_start`-th
      point from ℓ = 0 and start the others between their solutions (1: all
      from ℓ = 0). Pays where neighbouring points are neighbours in parameter
      space, as in grids (measured at N = 6: −25% time); costs +17% for
      points in random order. A point's result then depends on its
      neighbours in the batch at the level of the solver's tolerance (e.g.
      budgets within ~3e-12 tokens when a sweep is cut into other chunks).

    :class:`AggregateNewton` runs as :func:`~jaxalloc.solvers.newton_batched.newton_batch`:
    the whole batch task-major with a hand-written Jacobian, the points still
    running compacted into ever smaller batches so that a batch does not cost
    its slowest point's steps. The safeguard (:meth:`AggregateNewton.rescue`)
    runs only in batches where Newton failed. Other solvers are vmapped as
    they are.

    **Returns:** a :class:`Solution` with a leading batch axis.
    """
    at = problem.replace
    rate, stable0 = jax.vmap(lambda f: _stand_in(at(**f)))(fields)
    solve_fields = {**fields, "arrival_rate": rate}
    if not isinstance(solver, AggregateNewton):
        budgets, steps, done = jax.vmap(lambda f: solver(at(**f)))(solve_fields)
        return jax.vmap(lambda f, *r: _summarize(at(**f), *r))(fields, budgets, steps, done, stable0)

    budgets, steps, done = newton_batch(problem, solve_fields, solver.tol, solver.max_steps, warm_start)
    # the safeguard (rare), for the whole batch only when a point needs it
    rescue = jax.vmap(lambda f, *o: solver.rescue(at(**f), *o))
    budgets, steps, done = lax.cond(jnp.all(done), lambda f, *o: o, rescue, solve_fields, budgets, steps, done)
    return jax.vmap(lambda f, *r: _summarize(at(**f), *r))(fields, budgets, steps, done, stable0)


_solve_jit = eqx.filter_jit(solve_point)


def solve(problem: Problem, method="newton", *, start=None, throw: bool = True, check: bool = True) -> Solution:
    """Optimal continuous budgets ℓ* of problem (9).

    **Arguments:**

    - `problem`: a concrete :class:`Problem`.
    - `method`: "newton" (default, 2-D Newton on the aggregate moments),
      "fixed-point" (damped eq. 24), "gradient" (eq. 29 with the Lemma 3 step),
      "scaled-gradient" (Jacobi-scaled eq. 29), "projected-newton" (Newton in
      budget space, O(N) structured Hessian), or a solver instance.
    - `start`: optional starting budgets.
    - `throw`: raise :class:`SolveError` unless the status is converged.
    - `check`: validate the problem first (raises `ProblemError`).

    **Returns:** a :class:`Solution`.
    """
    if check:
        validate(problem)
    solution = _solve_jit(problem, get_solver(method), start)
    if throw:
        status = Status(int(solution.status))
        if status != Status.CONVERGED:
            raise SolveError(f"solve ({method if isinstance(method, str) else type(method).__name__}): {status.message}")
    return solution


def map_chunks(fn, values, chunk: int, devices: int):
    """`fn` over flat arrays of points (a pytree, equal leading axes): chunks of
    `chunk` points one after the other (lax.map), the chunks split evenly over
    `devices` local devices (`shard_map` on a 1-D mesh)."""

    def local(vals):
        out = lax.map(fn, jax.tree_util.tree_map(lambda v: v.reshape(-1, chunk, *v.shape[1:]), vals))
        return jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), out)

    if devices == 1:
        return local(values)
    mesh = Mesh(np.asarray(jax.local_devices()[:devices]), ("points",))
    # check_vma=False: the solvers' loop carries start replicated and become per-device
    return jax.shard_map(local, mesh=mesh, in_specs=P("points"), out_specs=P("points"), check_vma=False)(values)


def _batched(problem: Problem, solver, arrays: dict, shape: tuple, chunk: int, devices: int, warm_start: int) -> Solution:
    """Solve the points of `arrays` (broadcast to `shape`) in chunks over devices
    (see :func:`map_chunks`): flattening, padding (with the last point) and
    unpadding happen inside the one compiled program."""
    size = math.prod(shape)
    padded = -(-size // (chunk * devices)) * chunk * devices
    values = {}
    for k, a in arrays.items():
        flat = jnp.broadcast_to(a, shape).reshape(-1)
        values[k] = jnp.concatenate([flat, jnp.broadcast_to(flat[-1], (padded - size,))])
    out = map_chunks(lambda point: solve_batch(problem, point, solver, warm_start=warm_start), values, chunk, devices)
    return jax.tree_util.tree_map(lambda x: x[:size].reshape(*shape, *x.shape[1:]), out)


def chunk_layout(size: int, devices: int, chunk: int) -> int:
    """Points per chunk: at most `chunk` (if the points allow), chunks of equal
    size covering each device's share with the least padding, a multiple of 128
    when larger than that (so that warm starts and compaction divide it)."""
    per_device = -(-size // devices)
    count = -(-per_device // max(1, chunk))
    even = -(-per_device // count)
    return even if even <= 128 else -(-even // 128) * 128


_batched_jit = eqx.filter_jit(_batched)


def solve_many(problem: Problem, method="newton", *, chunk: int = 16384, warm_start: int = 16, devices: int | None = None,
               **fields) -> Solution:
    """Solve many operating points of one problem, each field varied elementwise.

    **Arguments:**

    - `problem`: the base problem (validated concrete values).
    - `method`: as in :func:`solve`.
    - `chunk`: at most this many points per vectorised block; blocks run one
      after another so that working arrays stay in cache (16384 is fastest at
      N = 6 on a 2-core CPU; see :func:`chunk_layout`).
    - `warm_start`: see :func:`solve_batch`; points are taken in the C order
      of the fields' shape, so grids (e.g. from `np.meshgrid(..., indexing="ij")`)
      profit. Pass 1 for points in random order.
    - `devices`: local devices to split the points over (default: all; on a
      CPU, start Python with `XLA_FLAGS=--xla_force_host_platform_device_count=K`
      to use K cores as K devices).
    - `fields`: arrays of equal shape for scalar fields to vary, e.g.
      `arrival_rate=lam_grid, alpha=alpha_grid`.

    **Returns:** a :class:`Solution` whose leaves have the fields' shape
    (plus the task axis for `budgets`). Never raises for a bad point: read
    `status` (points unstable at ℓ = 0 are `UNSTABLE_QUEUE`).
    """
    if not fields:
        raise ValueError("solve_many: give at least one field to vary, e.g. arrival_rate=...")
    dtype = problem.A.dtype
    arrays = {k: jnp.asarray(v, dtype) for k, v in fields.items()}
    shape = jnp.broadcast_shapes(*(a.shape for a in arrays.values()))
    size = int(np.prod(shape)) if shape else 1
    devices = jax.local_device_count() if devices is None else int(devices)
    chunk = chunk_layout(size, devices, chunk)
    return _batched_jit(problem, get_solver(method), arrays, tuple(shape), chunk, devices, int(warm_start))
