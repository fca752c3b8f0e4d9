"""`solve`: the entry point from a problem to its optimal budgets.

:func:`solve_point` is the pure, jit- and vmap-friendly core: it never raises,
and flags what went wrong in :attr:`Solution.status`. :func:`solve` validates
a concrete problem, runs the compiled core, and raises :class:`SolveError` on
any status but converged (unless `throw=False`).

**Servers.** The solver follows the problem's server (`problem.server`):
without a method, an aggregate server (FIFO, batching) is solved by
:class:`AggregateNewton` and any other (priority) by :class:`ProjectedNewton`
with the dense Hessian. A method asked for by name that cannot solve the
server raises `ValueError` naming both. A server with parts to choose
(a priority order "auto", :meth:`~jaxalloc.servers.Server.searched`) is
solved by :func:`jaxalloc.solvers.order.search_order`, and the solution's
`server` holds the choice.
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
from .objective import gradient, is_one_server, kkt_residual, moments, objective
from .solution import Solution, Status, final_status
from .solvers import METHODS, AggregateNewton, ProjectedNewton
from .solvers.base import kkt_tolerance, small_enough
from .solvers.newton_batched import newton_batch
from .solvers.order import search_order
from .solvers.projected_newton import hessian_diagonal

DEFAULT_SOLVER = AggregateNewton()
"""The solver of :func:`solve_point` and :func:`solve_batch` when none is given,
for an aggregate server (a module of hyperparameters only, so one instance
serves every call)."""

GENERAL_SOLVER = ProjectedNewton()
"""The solver when none is given and the server is not aggregate (priority)."""


class SolveError(RuntimeError):
    """A solve ended in a status other than converged."""


def get_solver(method="newton"):
    """A solver instance from a method name (a key of
    :data:`jaxalloc.solvers.METHODS`) or an instance, returned as is;
    None or "auto": None (the default of :func:`solver_for`)."""
    if method is None or method == "auto":
        return None
    if isinstance(method, str):
        try:
            return METHODS[method]()
        except KeyError:
            raise ValueError(
                f"method = {method!r}: expected one of {', '.join(METHODS)}"
            ) from None
    return method


def method_name(solver) -> str:
    """The name of a solver in :data:`METHODS` (else its class name)."""
    return next((k for k, v in METHODS.items() if type(solver) is v), type(solver).__name__)


def solver_for(problem: Problem, method=None):
    """The solver for `problem`'s server: `method` (a name or an instance),
    checked to handle the server (else `ValueError` naming the method and the
    server kind); None or "auto": :data:`DEFAULT_SOLVER` for an aggregate
    server, :data:`GENERAL_SOLVER` otherwise."""
    solver = get_solver(method)
    server = problem.server
    if solver is None:
        return DEFAULT_SOLVER if server.aggregate else GENERAL_SOLVER
    if getattr(solver, "needs_aggregate", False) and not server.aggregate:
        raise ValueError(f"method = {method_name(solver)!r} cannot solve a {server.kind!r} server: it needs a delay "
                         "that depends on the budgets only through E[S] and E[S²] (use 'projected-newton' or the default)")
    if getattr(solver, "needs_one_server", False) and not is_one_server(problem):
        raise ValueError(f"method = {method_name(solver)!r} cannot solve a {server.kind!r} server: its step bound "
                         "(Lemma 3) holds for the paper's one FIFO server only (use 'projected-newton' or the default)")
    return solver


def _stand_in(problem: Problem):
    """(arrival rate to hand the solver, stable at ℓ = 0?). Unstable points are
    solved at a harmless stand-in load so that they stop at once under vmap
    instead of spinning to max_steps; their result is discarded by
    :func:`_summarize`."""
    m1_zero = moments(problem, jnp.zeros_like(problem.A))[0]
    capacity = problem.server.capacity(problem.arrival_rate)
    stable0 = problem.arrival_rate * m1_zero < capacity
    tiny = jnp.finfo(problem.A.dtype).tiny
    return jnp.where(stable0, problem.arrival_rate, 0.5 * capacity / jnp.maximum(m1_zero, tiny)), stable0


def _run(problem: Problem, solver, start=None):
    """(ℓ, steps, converged, server) of `solver` on `problem` (the order searched
    where the server asks for it)."""
    if problem.server.searched():
        return search_order(problem, solver, start)
    return (*solver(problem, start), problem.server)


def scaled_kkt_residual(problem: Problem, budgets, g=None) -> Array:
    """Per task, |P(ℓ + ∇J(ℓ)/h) − ℓ| in tokens, h = diag(−∇²J(ℓ)) > 0 (Lemma 1).

    The KKT residual of :func:`~jaxalloc.objective.kkt_residual` with each
    gradient component divided by its curvature: the move of one diagonal
    Newton (Jacobi) step, so it compares with a tolerance on budgets, in the
    units of every solver's stopping test, whatever the scale of J. `g`: ∇J(ℓ)
    where the caller has it.
    """
    g = gradient(problem, budgets) if g is None else g
    # |h|: where J is not concave (some servers) a diagonal entry can be negative
    h = jnp.maximum(jnp.abs(hessian_diagonal(problem, budgets)), jnp.finfo(budgets.dtype).tiny)
    return jnp.abs(jnp.clip(g / h, -budgets, problem.max_tokens - budgets))


def stationary(problem: Problem, budgets, g=None) -> Array:
    """The check behind a `converged` status: ‖:func:`scaled_kkt_residual`‖∞ ≤
    :func:`~jaxalloc.solvers.base.kkt_tolerance` × max(1, ‖ℓ‖∞) (1e-9 relative
    in float64, 2e-3 in float32), independent of the solver and its `tol`."""
    return small_enough(scaled_kkt_residual(problem, budgets, g), budgets, kkt_tolerance(budgets.dtype))


def _summarize(problem: Problem, budgets, steps, done, stable0, server=None) -> Solution:
    if server is not None:
        problem = problem.replace(server=server)
    # J and ∇J in one pass through the delay (batching: −1.4 ms of 12 per 16384 points), ∇J shared by both checks
    value, g = jax.value_and_grad(objective, argnums=1)(problem, budgets)
    residual = kkt_residual(problem, budgets, g)
    status = final_status(done, budgets, value, stable0, stationary(problem, budgets, g))
    return Solution(
        budgets=jnp.where(stable0, budgets, 0.0),
        objective=jnp.where(stable0, value, -jnp.inf),
        kkt_residual=jnp.where(stable0, residual, jnp.inf),
        iterations=jnp.asarray(steps, jnp.int32),
        status=status,
        server=problem.server,
    )


def solve_point(problem: Problem, solver=None, start=None) -> Solution:
    """Solve (9) for one problem; pure JAX, safe under `jit` and `vmap`.

    **Arguments:**

    - `problem`: the problem (may hold tracers).
    - `solver`: a solver module (see :mod:`jaxalloc.solvers`); None: the
      default for the server (:func:`solver_for`).
    - `start`: optional starting budgets (must be stable); default ℓ = 0.

    **Returns:** a :class:`Solution`. A point whose queue is unstable even at
    ℓ = 0 gets status `UNSTABLE_QUEUE`, budgets 0, objective −inf.
    """
    solver = solver_for(problem, solver)
    rate, stable0 = _stand_in(problem)
    budgets, steps, done, server = _run(problem.replace(arrival_rate=rate), solver, start)
    return _summarize(problem, budgets, steps, done, stable0, server)


def solve_batch(problem: Problem, fields: dict, solver=None, *, warm_start: int = 16) -> Solution:
    """Solve a batch of points, like `vmap(solve_point)`, but faster.

    **Arguments:**

    - `problem`: the base problem (unbatched).
    - `fields`: the fields that vary, each with a leading batch axis of equal
      size, e.g. `{"arrival_rate": lam, "alpha": alpha}`; server parameters
      (`servers`, `max_batch`, `batch_slowdown`) too, put in through
      :meth:`Problem.replace`. Fields left out stay unbatched, so what depends only on them (logarithms of A, b, c) is
      computed once for the batch rather than per point.
    - `solver`: a solver module; None: the default for the server.
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
    its slowest point's steps. Warm-started points where Newton failed start
    again from ℓ = 0 (:func:`_cold_newton`); the safeguard (:meth:`AggregateNewton.rescue`)
    runs only where it failed again; both on those points alone when they are few
    (:func:`safeguard`). Other solvers are vmapped as they are.

    **Returns:** a :class:`Solution` with a leading batch axis.
    """
    solver = solver_for(problem, solver)
    at = problem.replace
    rate, stable0 = jax.vmap(lambda f: _stand_in(at(**f)))(fields)
    solve_fields = {**fields, "arrival_rate": rate}
    if not isinstance(solver, AggregateNewton) or problem.server.searched():
        budgets, steps, done, server = jax.vmap(lambda f: _run(at(**f), solver))(solve_fields)
        return jax.vmap(lambda f, *r: _summarize(at(**f), *r))(fields, budgets, steps, done, stable0, server)

    budgets, steps, done = newton_batch(problem, solve_fields, solver.tol, solver.max_steps, warm_start)
    if warm_start > 1:
        budgets, steps, done = safeguard(lambda *a: _cold_newton(problem, solver, *a), solve_fields, budgets,
                                         steps, done)
    rescue = jax.vmap(lambda f, *o: solver.rescue(at(**f), *o))
    budgets, steps, done = safeguard(rescue, solve_fields, budgets, steps, done)
    return jax.vmap(lambda f, *r: _summarize(at(**f), *r))(fields, budgets, steps, done, stable0)


def _cold_newton(problem: Problem, solver, fields: dict, budgets, steps, done):
    """Newton from ℓ = 0 on the points not `done`: the warm-started points where it
    failed. A start between two coarse solutions that are far apart misleads the
    linear model: in C order, the last points of a grid row start between the
    row's end and the next row's start (FIFO c = 4, 16384 points of a 128 × 128
    (λ, α) grid: 258 such failures, all in the last stride of a row; 6 from ℓ = 0)."""
    ell, more, ok = newton_batch(problem, fields, solver.tol, solver.max_steps)
    return jnp.where(done[:, None], budgets, ell), steps + jnp.where(done, 0, more), done | ok


RESCUE_SHARE = 32
""":func:`safeguard` rescues at most 1/`RESCUE_SHARE` of a batch's points compacted."""

RESCUE_FEW = 32
""":func:`safeguard`'s smallest compacted batch: a handful of failures (the usual case
where any fail) cost a rescue of this many lanes, not of B / :data:`RESCUE_SHARE` (batching
server, B = 64, 27 failures in 16384 points: 31 ms at 512 lanes, 4 ms at 32, measured)."""


def safeguard(rescue, fields: dict, budgets, steps, done, size=None):
    """(budgets, steps, done) after `rescue` (the vmapped :meth:`AggregateNewton.rescue`
    on `fields`, budgets, steps, done; a no-op on points already done) of the points
    where Newton failed: none, nothing runs; at most one of the `size` tiers (static
    ints, ascending; default :data:`RESCUE_FEW` and max(1, B // :data:`RESCUE_SHARE`)),
    only those, gathered into a batch of the smallest tier that holds them; more,
    the whole batch. A vmapped loop runs every lane until its slowest is done, so
    one failing point would otherwise cost the safeguard's steps for the whole
    batch (measured: 1 to 24 failures in chunks of 3456 points at N = 6 on FIFO
    c = 4 and batching servers, each costing the whole chunk). Each point's
    result is the same either way: lanes do not interact."""
    n = done.shape[0]
    if size is None:
        size = (RESCUE_FEW, max(1, n // RESCUE_SHARE))
    tiers = sorted({int(x) for x in ((size,) if isinstance(size, int) else size) if int(x) < n})
    failed = jnp.sum(~done)

    def compacted(size):
        def run(f, b, s, d):
            # padding: index n, out of range, gathers the last point (clipped) and is dropped on scatter
            idx = jnp.nonzero(~d, size=size, fill_value=n)[0]
            take = lambda x: jnp.take(x, idx, axis=0, mode="clip")
            out = rescue(jax.tree_util.tree_map(take, f), take(b), take(s), take(d))
            return tuple(x.at[idx].set(y, mode="drop") for x, y in zip((b, s, d), out))

        return run

    branches = [lambda f, *o: o, *map(compacted, tiers), rescue]
    # 0: none failed; i: tier i − 1 holds them; last: the whole batch
    which = jnp.where(failed == 0, 0, 1 + sum((failed > t).astype(jnp.int32) for t in tiers))
    return lax.switch(which, branches, fields, budgets, steps, done)


_solve_jit = eqx.filter_jit(solve_point)


def solve(problem: Problem, method=None, *, start=None, throw: bool = True, check: bool = True) -> Solution:
    """Optimal continuous budgets ℓ* of problem (9).

    **Arguments:**

    - `problem`: a concrete :class:`Problem`.
    - `method`: None or "auto" (default): "newton" for an aggregate server
      (FIFO, batching), "projected-newton" for another (priority);
      "newton" (2-D Newton on the aggregate moments),
      "fixed-point" (damped eq. 24), "gradient" (eq. 29 with the Lemma 3 step),
      "scaled-gradient" (Jacobi-scaled eq. 29), "projected-newton" (Newton in
      budget space, O(N) structured Hessian, or the dense one for a server
      that is not aggregate), or a solver instance. A method that cannot
      solve the problem's server raises `ValueError`.
    - `start`: optional starting budgets.
    - `throw`: raise :class:`SolveError` unless the status is converged.
    - `check`: validate the problem first (raises `ProblemError`).

    **Returns:** a :class:`Solution`.
    """
    if check:
        validate(problem)
    solver = solver_for(problem, method)
    solution = _solve_jit(problem, solver, start)
    if throw:
        status = Status(int(solution.status))
        if status != Status.CONVERGED:
            raise SolveError(f"solve ({method_name(solver)}): {status.message}")
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


def solve_many(problem: Problem, method=None, *, chunk: int = 16384, warm_start: int = 16, devices: int | None = None,
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
    return _batched_jit(problem, solver_for(problem, method), arrays, tuple(shape), chunk, devices, int(warm_start))
