"""Discrete-event check of the queue model: the problem's server simulated in JAX.

The server (`problem.server`, by default the paper's one FIFO server) is
simulated as modelled: Poisson arrivals at rate λ, each query of type k with
probability π_k, needing the deterministic batch-1 service time t_k(ℓ_k)
(eq. 1), and answered correctly with probability p_k(ℓ_k) (eq. 2). Optionally
the service time is multiplied by a lognormal jitter factor with mean 1 and
coefficient of variation `service_cv`; then E[S_k²] = t_k² (1 + cv²), which
is what the theory values use (E[S²] = Σ π_k t_k² (1 + cv²) for one server).

**Disciplines.** Each server kind has its discrete-event core in
:mod:`jaxalloc.simulation` (c FIFO servers: Kiefer–Wolfowitz; non-preemptive
priority: service-order steps; continuous batching: exact event times), found
from the server's type; all read the same random streams. What follows
describes the one-server FIFO core, the default, unchanged.

**Algorithm.** Waits follow the Lindley recursion
W_{n+1} = max(0, W_n + S_n − A_{n+1}) (A: exponential inter-arrival times),
and system times are T_n = W_n + S_n; the first query finds the server idle.
The stream is cut into chunks of `chunk` queries: an outer ``lax.scan`` over
chunks carries the wait W and running sums, an inner ``lax.scan`` runs only the
recursion W ← max(0, W + S − A) within a chunk; the statistics are computed
vectorised on the chunk's arrays after it. Memory is O(replications × chunk), whatever the
number of queries, unless system times are kept for exact quantiles (below).
Replications are ``jax.vmap``-ed (:func:`simulate`), and so are operating
points (:func:`simulate_points`); everything is one ``jax.jit`` call.

**Random numbers.** The stream of replication r is cut into blocks of
``RNG_BLOCK`` (256) queries; block b draws all its random bits at once,
``bits(fold_in(fold_in(key(seed), r), b), (rows, 256))`` (Threefry, 32-bit
words): row 0 gives the inter-arrival time, row 1 the task type, row 2 (only
with `service_cv` > 0) the jitter. A word w becomes the uniform (w + ½) 2⁻³²
(fewer bits in float32), exact and strictly inside (0, 1). Correctness reuses
row 1: given type k, the position of that uniform within type k's interval
[Σ_{j<k} π_j, Σ_{j≤k} π_j) is again uniform, and the answer is correct when it
falls below p_k (resolution 2⁻³²/π_k). Hence a query's numbers depend on
(seed, r, n) only: `chunk` must be a multiple of ``RNG_BLOCK``, and then a
result does not depend on it (up to the summation order of the statistics),
and replication r is the same stream whatever `replications` is. All
operating points of :func:`simulate_points` share the streams (common random
numbers).

**Statistics.** Warm-up queries (the first `warmup`) are simulated but left
out of every statistic. Means come with 95% confidence intervals across
replications (a ratio estimator: sums over counts per replication), using the
Student t quantile (table to 30 degrees of freedom, Cornish–Fisher expansion
beyond); accuracies come with Wilson binomial intervals over all counted
queries. Quantiles (p50/p95/p99) are exact — all system times are kept —
when replications × padded queries ≤ `store_limit`; beyond that each
replication fills a log-spaced histogram (`bins` bins over 12 decades around
E[S], relative resolution about 1.4% for 2048 bins) and quantiles are read
from the pooled histogram; per-type quantiles are then not reported.

**Stability.** With λ E[S] ≥ the server's capacity (1 for one server, eq. 4) the queue grows without bound: the
simulation still runs, but :func:`simulation_report` sets ``stable`` false and
reports no mean, interval or quantile of the system time (they would only
measure the run length).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ProblemError
from .model import Problem
from .objective import moments, service_times, task_accuracy, utilization
from .report import json_number
from .servers import FIFO
from .simulation import RNG_BLOCK, Streams, core_for, theory_name

DEFAULT_CHUNK = 512
DEFAULT_STORE_LIMIT = 1 << 22
DEFAULT_BINS = 2048

# Student t 0.975 quantiles for 1..30 degrees of freedom.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
_Z975 = 1.959963984540054


class SimulationError(ValueError):
    """Invalid simulation input (counts, budgets, options); the message names it."""


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom.

    Exact to 4 decimals from a table up to 30; beyond, the Cornish–Fisher
    expansion z + (z³+z)/(4ν) + (5z⁵+16z³+3z)/(96ν²) (error < 1e-4).
    """
    if df < 1:
        raise SimulationError(f"t quantile: df = {df}, needs at least 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


class SimulationResult(NamedTuple):
    """Raw statistics of a simulation, per replication (leading axis R; a further
    leading axis P of operating points for :func:`simulate_points`).

    - `counts`, `sum_system_time`, `sum_wait`, `correct`: per task type (R, K):
      counted queries, Σ T, Σ W and correct answers.
    - `busy_time`: Σ S over counted queries (R,); `elapsed`: Σ of the inter-
      arrival times after them (R,). Their ratio is the realised utilisation.
    - `system_times`, `types`: (R, M) every simulated query's T and type
      (warm-up and padding included, see `warmup`, `queries`), or (R, 0) when
      not kept; `histogram`: (R, B) counts of counted T in log-spaced bins with
      edges `bin_edges` (B + 1,) (the first and last bins also take under- and
      overflow), or (R, 0) when T is kept.
    - `theory_mean_system_time`, `theory_mean_wait`, `theory_utilization`,
      `theory_accuracy`, `theory_task_system_time`: the server's predictions
      (with the jitter's E[S_k²]): E[T] (eq. 6 for one FIFO server), E[T] −
      E[S] (eq. 5), λE[S] / capacity (eq. 4), Σ π_k p_k(ℓ_k) and E[T_k];
      `capacity`: the server's (1 for one server); `service_time`,
      `task_accuracy`: t_k(ℓ_k), p_k(ℓ_k).
    - `queries`, `warmup`: the stream length and the dropped warm-up.
    """

    counts: jax.Array
    sum_system_time: jax.Array
    sum_wait: jax.Array
    correct: jax.Array
    busy_time: jax.Array
    elapsed: jax.Array
    system_times: jax.Array
    types: jax.Array
    histogram: jax.Array
    bin_edges: jax.Array
    theory_mean_system_time: jax.Array
    theory_mean_wait: jax.Array
    theory_utilization: jax.Array
    theory_accuracy: jax.Array
    theory_task_system_time: jax.Array
    capacity: jax.Array
    service_time: jax.Array
    task_accuracy: jax.Array
    queries: int
    warmup: int

    @property
    def stable(self):
        """λ E[S] below the server's capacity (eq. 4 for one server)."""
        return self.theory_utilization < 1

    def replication_means(self):
        """Mean system time of each replication, shape (..., R)."""
        return jnp.sum(self.sum_system_time, -1) / jnp.sum(self.counts, -1)


def _theory(problem: Problem, budgets, service_cv):
    """The server's predictions, with the jitter in E[S_k²] = t_k² (1 + cv²):
    (E[T], E[T] − E[S], load, accuracy, E[T_k], capacity)."""
    lam, server = problem.arrival_rate, problem.server
    m1, m2 = moments(problem, budgets)
    t = service_times(problem, budgets)
    t2 = t * t * (1.0 + service_cv**2)
    p = task_accuracy(problem, budgets)
    if server.aggregate:  # E[T] from the moments, as the objective writes it (eq. 6 for one FIFO server)
        total = server.delay(lam, m1, m2 * (1.0 + service_cv**2))
    else:
        total = server.system_time(lam, problem.prob, t, t2)
    wait = server.mean_wait(lam, m1, m2 * (1.0 + service_cv**2)) if isinstance(server, FIFO) else total - m1
    capacity = server.capacity(lam)
    return (
        total,
        wait,
        utilization(lam, m1) / capacity,
        jnp.sum(problem.prob * p, -1),
        server.task_system_time(lam, problem.prob, t, t2),
        capacity,
    )


def _one_replication(problem, budgets, key, service_cv, *, queries, warmup, chunk, nchunks, jitter, store, bins):
    """Simulate one replication of `problem.server`'s discipline; `key` is that replication's key (or,
    for a core marked ``replicated``, every replication's keys, (R,): the results get a leading axis R)."""
    streams = Streams(problem, budgets, key, service_cv, queries=queries, warmup=warmup, chunk=chunk, jitter=jitter,
                      bins=bins)
    raw = core_for(problem.server)(problem.server, streams, nchunks=nchunks, store=store)
    st = raw.stats
    return st.counts, st.sum_t, st.sum_w, st.correct, st.busy, st.elapsed, raw.times, raw.kinds, st.hist, streams.edges


@partial(
    jax.jit,
    static_argnames=("replications", "queries", "warmup", "chunk", "nchunks", "jitter", "store", "bins"),
)
def _simulate_jit(problem, budgets, key, service_cv, *, replications, **static):
    rep_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(replications))
    core = core_for(problem.server)
    one = lambda k: _one_replication(problem, budgets, k, service_cv, **static)
    group = getattr(core, "replication_group", 0)
    if getattr(core, "replicated", False):  # the core steps all replications itself
        run = partial(_one_replication, problem, budgets, service_cv=service_cv, **static)
    elif group and replications > group:  # a core that holds whole streams: vmapped groups, one after another
        run = partial(_in_groups, jax.vmap(one), group=group)
    else:
        run = jax.vmap(one)
    counts, sum_t, sum_w, correct, busy, elapsed, times, kinds, hist, edges = run(rep_keys)
    edges = jnp.broadcast_to(edges, (replications,) + edges.shape[-1:])
    theory = _theory(problem, budgets, service_cv)
    t = service_times(problem, budgets)
    p = task_accuracy(problem, budgets)
    return (counts, sum_t, sum_w, correct, busy, elapsed, times, kinds, hist, edges[0]), theory, t, p


def _in_groups(run, keys, *, group: int):
    """`run` (vmapped over its leading axis) on `keys`, `group` of them at a time in a `lax.map`, the rest
    after; outputs as one call on all keys would give. (`lax.map`'s own `batch_size` fails on the
    zero-size outputs of a run that keeps no system times.)"""
    n = keys.shape[0]
    whole = n - n % group
    out = jax.lax.map(run, keys[:whole].reshape((whole // group, group) + keys.shape[1:]))
    out = jax.tree_util.tree_map(lambda x: x.reshape((whole,) + x.shape[2:]), out)
    if whole == n:
        return out
    return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), out, run(keys[whole:]))


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < lo:
        raise SimulationError(f"{name} = {value}: must be an integer >= {lo}")
    return int(value)


def _check(problem: Problem, budgets, queries, replications, warmup, service_cv, chunk, bins):
    core_for(problem.server)  # a server the simulator has no core for is refused here, before jit
    queries = _check_int("queries", queries, 1)
    replications = _check_int("replications", replications, 1)
    warmup = _check_int("warmup", warmup, 0)
    if warmup >= queries:
        raise SimulationError(f"warmup = {warmup}: must be below queries = {queries}")
    chunk = _check_int("chunk", chunk, 1)
    if chunk % RNG_BLOCK:
        raise SimulationError(f"chunk = {chunk}: must be a multiple of {RNG_BLOCK} (the random-number block)")
    bins = _check_int("bins", bins, 1)
    if not (math.isfinite(service_cv) and service_cv >= 0):
        raise SimulationError(f"service_cv = {service_cv}: must be finite and >= 0")
    b = np.asarray(budgets, dtype=np.float64)
    n = problem.num_tasks
    if b.shape[-1:] != (n,):
        raise SimulationError(f"budgets: {b.shape[-1] if b.ndim else 1} values for {n} tasks")
    if not np.all(np.isfinite(b)):
        raise SimulationError(f"budgets = {b.tolist()}: must be finite")
    if np.any(b < 0):
        raise SimulationError(f"budgets = {b.tolist()}: must be >= 0")
    cap = np.asarray(problem.max_tokens, dtype=np.float64)
    if np.any(b > cap[..., None] if cap.ndim else b > cap):
        raise SimulationError(f"budgets = {b.tolist()}: exceed max_tokens = {cap.tolist()}")
    return queries, replications, warmup, chunk, bins


def _run(problem, budgets, queries, replications, seed, warmup, service_cv, chunk, store_limit, bins, points,
         exponential=False):
    queries, replications, warmup, chunk, bins = _check(
        problem, budgets, queries, replications, warmup, service_cv, chunk, bins
    )
    if exponential:
        if service_cv not in (0.0, 1.0):
            raise SimulationError(f"service_cv = {service_cv}: exponential service has cv = 1")
        service_cv = 1.0  # E[S²] = 2 t² for an exponential factor with mean 1
    chunk = min(chunk, -(-queries // RNG_BLOCK) * RNG_BLOCK)  # a multiple of RNG_BLOCK
    nchunks = -(-queries // chunk)
    store = replications * nchunks * chunk * max(points, 1) <= store_limit
    static = {
        "replications": replications, "queries": queries, "warmup": warmup, "chunk": chunk, "nchunks": nchunks,
        "jitter": "exponential" if exponential else ("lognormal" if service_cv > 0 else ""), "store": store, "bins": bins,
    }
    dtype = problem.A.dtype
    budgets = jnp.asarray(budgets, dtype)
    key = jax.random.key(seed)
    cv = jnp.asarray(service_cv, dtype)
    fn = partial(_simulate_jit, **static)
    if points:
        fn = jax.vmap(fn, in_axes=(0, 0, None, None))
    raw, theory, t, p = fn(problem, budgets, key, cv)
    return SimulationResult(*raw, *theory, t, p, queries, warmup)


def simulate(
    problem: Problem,
    budgets,
    *,
    queries: int = 10_000,
    replications: int = 100,
    seed: int = 0,
    warmup: int = 0,
    service_cv: float = 0.0,
    chunk: int = DEFAULT_CHUNK,
    store_limit: int = DEFAULT_STORE_LIMIT,
    bins: int = DEFAULT_BINS,
    exponential_service: bool = False,
) -> SimulationResult:
    """Simulate the problem's server (`problem.server`; by default the paper's
    M/G/1 FIFO server) at `budgets` (see the module docstring).

    **Arguments:**

    - `problem`: a concrete :class:`Problem` (one operating point); its
      server picks the discrete-event core (:mod:`jaxalloc.simulation`).
      The priority core holds each replication's stream whole (memory
      O(min(replications, 128) × queries), 128 replications at a time);
      the others O(replications × chunk).
    - `budgets`: ℓ, shape (N,), in [0, ℓ_max] (need not be integers).
    - `queries`: queries per replication, warm-up included.
    - `replications`: independent replications (vmapped).
    - `seed`: integer seed; equal seeds give identical results.
    - `warmup`: first queries of each replication left out of the statistics.
    - `service_cv`: coefficient of variation of a lognormal service-time
      factor with mean 1; 0 (default) is the paper's deterministic service.
    - `exponential_service`: multiply service times by a mean-1 exponential
      factor instead (cv = 1; with one task this is the M/M/1 queue).
    - `chunk`: queries per chunk (memory O(replications × chunk)), a multiple
      of ``RNG_BLOCK`` = 256 (else :class:`SimulationError`); the result does
      not depend on it beyond rounding.
    - `store_limit`: keep every system time (exact quantiles) while
      replications × queries (rounded up to whole chunks) stays within it;
      beyond, use `bins` log-spaced histogram bins.

    **Returns:** a :class:`SimulationResult`; :func:`simulation_report` turns
    it into numbers. Raises :class:`SimulationError` for bad input.
    """
    return _run(problem, budgets, queries, replications, seed, warmup, service_cv, chunk, store_limit, bins, 0,
                exponential_service)


def simulate_points(
    problems: Problem,
    budgets,
    *,
    queries: int = 10_000,
    replications: int = 100,
    seed: int = 0,
    warmup: int = 0,
    service_cv: float = 0.0,
    chunk: int = DEFAULT_CHUNK,
    store_limit: int = DEFAULT_STORE_LIMIT,
    bins: int = DEFAULT_BINS,
) -> SimulationResult:
    """:func:`simulate` vmapped over P operating points.

    `problems` has every numeric leaf with a leading axis P (e.g. stacked with
    ``jax.tree.map(lambda *x: jnp.stack(x), *ps)``), `budgets` shape (P, N).
    Every point sees the same random streams. The array fields of the result
    gain a leading axis P; take one point with :func:`point`.
    """
    budgets = jnp.asarray(budgets)
    if budgets.ndim != 2:
        raise SimulationError(f"budgets: shape {budgets.shape}, expected (points, tasks)")
    return _run(
        problems, budgets, queries, replications, seed, warmup, service_cv, chunk, store_limit, bins,
        budgets.shape[0],
    )


def point(result: SimulationResult, i: int) -> SimulationResult:
    """Operating point `i` of a :func:`simulate_points` result."""
    arrays = [x[i] for x in result[:-2]]
    return SimulationResult(*arrays, result.queries, result.warmup)


def _ratio_ci(sums: np.ndarray, counts: np.ndarray):
    """Pooled ratio Σsums/Σcounts and its 95% t interval across replications."""
    total = counts.sum()
    if total == 0:
        return math.nan, (math.nan, math.nan)
    est = sums.sum() / total
    r = len(sums)
    if r < 2:
        return est, (math.nan, math.nan)
    resid = sums - est * counts
    se = math.sqrt(float(np.sum(resid**2)) / (r * (r - 1))) / (total / r)
    h = t975(r - 1) * se
    return est, (est - h, est + h)


def _wilson(x: float, n: float):
    """95% Wilson score interval of a binomial proportion x/n."""
    if n == 0:
        return math.nan, (math.nan, math.nan)
    z = _Z975
    ph = x / n
    den = 1 + z * z / n
    mid = (ph + z * z / (2 * n)) / den
    h = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if x == 0 else max(mid - h, 0.0)  # exact ends: rounding must not exclude p = 0 or 1
    hi = 1.0 if x == n else min(mid + h, 1.0)
    return ph, (lo, hi)


def _quantiles(result: SimulationResult, qs=(0.5, 0.95, 0.99)):
    """Overall quantiles and, when T is kept, per-type quantiles."""
    K = result.counts.shape[-1]
    if result.system_times.shape[-1]:
        q, w = result.queries, result.warmup
        times = np.asarray(result.system_times)[:, w:q].ravel()
        kinds = np.asarray(result.types)[:, w:q].ravel()
        overall = np.quantile(times, qs).tolist()
        per = []
        for k in range(K):
            tk = times[kinds == k]
            per.append(np.quantile(tk, qs).tolist() if tk.size else [math.nan] * len(qs))
        return overall, per, "exact"
    hist = np.asarray(result.histogram).sum(0).astype(np.float64)
    edges = np.asarray(result.bin_edges)
    cdf = np.cumsum(hist) / hist.sum()
    overall = []
    for q in qs:
        i = int(np.searchsorted(cdf, q, side="left"))
        before = cdf[i - 1] if i > 0 else 0.0
        frac = (q - before) / max(cdf[i] - before, 1e-300)
        overall.append(float(edges[i] * (edges[i + 1] / edges[i]) ** frac))
    return overall, None, "histogram"


THEORY_LEVELS = (0.5, 0.95, 0.99)
"""The quantiles set beside the simulated ones (p50, p95, p99)."""


def theory_quantile_values(problem: Problem, budgets, service_cv: float = 0.0):
    """The model's p50, p95, p99 of the system time at `budgets` (:data:`THEORY_LEVELS`, the exact inversion
    of :mod:`jaxalloc.quantiles`), overall and per task, where the model gives them.

    **Returns:** `(overall, tasks, note)`: a list of 3 and one such list per task, in seconds (+inf where
    the queue is unstable), and ""; or `(None, None, note)`, `note` saying why there are none: the
    service time is jittered (the quantiles assume deterministic service per type, `service_cv` = 0), or
    the server has no quantiles (FIFO with servers > 1, batching).
    """
    from .quantiles import check_supported, quantiles_jit

    if service_cv != 0:
        return None, None, f"service_cv = {service_cv:g}: the theory's quantiles assume deterministic service per type"
    try:
        check_supported(problem, "exact")
    except ProblemError as err:
        return None, None, str(err)
    ell = jnp.asarray(budgets, problem.A.dtype)
    q = quantiles_jit(problem, ell, THEORY_LEVELS, "exact")
    return np.asarray(q.overall).tolist(), np.asarray(q.tasks).tolist(), ""


def _theory_quantile_keys(problem: Problem, budgets, service_cv: float, asked: bool, stable: bool):
    """The report's theory quantiles: (top-level keys, a dict of keys per task)."""
    names = ["theory_p50", "theory_p95", "theory_p99"]
    overall, tasks, note = None, None, "not computed (theory_quantiles=False)"
    if asked and not stable:
        note = "queue unstable: no quantiles"
    elif asked:
        overall, tasks, note = theory_quantile_values(problem, budgets, service_cv)
    top = {k: None if overall is None else json_number(v) for k, v in zip(names, overall or [None] * 3)}
    top.update(theory_quantiles="exact" if overall is not None else None, theory_quantiles_note=note)
    per = [{k: None if tasks is None else json_number(v) for k, v in zip(names, row)}
           for row in (tasks or [[None] * 3] * problem.num_tasks)]
    return top, per


def simulation_report(problem: Problem, budgets, result: SimulationResult, service_cv: float = 0.0,
                      theory_quantiles: bool = False) -> dict[str, Any]:
    """The contract's JSON fields for one simulated operating point.

    Contract keys: `mean_system_time`, `mean_system_time_ci95` ([lo, hi]),
    `theory_mean_system_time`, `p50`, `p95`, `p99`, `accuracy`,
    `utilization` (realised). Also `stable`, `status` and `message`, the
    wait (`mean_wait`, its interval and theory), `accuracy_ci95`,
    `theory_accuracy`, `theory_utilization` (λE[S] / the server's capacity;
    `utilization` likewise), `quantiles` ("exact" or "histogram"), `server`
    (kind and parameters), `theory` (the formula's name) and `per_task` (one
    dict per task type, its theory the server's E[T_k]). With
    `theory_quantiles` (off by default: its first call compiles for some
    seconds), `theory_p50`, `theory_p95`, `theory_p99`, overall and per task,
    are the model's quantiles of the system time (:func:`theory_quantile_values`,
    the exact inversion); they are null, with `theory_quantiles_note` saying
    why, for jittered service (`service_cv` > 0), a server without quantiles,
    or an unstable queue; `theory_quantiles` is "exact" or null. The wait is T − S,
    the time a query spends beyond its own batch-1 service time (the queueing
    wait for FIFO and priority servers). When the queue is
    unstable every system-time figure is null; with one replication the
    intervals are null (no spread to estimate). Non-finite numbers are null.
    """
    counts = np.asarray(result.counts, dtype=np.float64)
    sum_t = np.asarray(result.sum_system_time)
    sum_w = np.asarray(result.sum_wait)
    correct = np.asarray(result.correct, dtype=np.float64)
    R, K = counts.shape
    stable = bool(result.stable)
    names = list(problem.names) or [f"task{k}" for k in range(K)]
    mean_t, ci_t = _ratio_ci(sum_t.sum(1), counts.sum(1))
    mean_w, ci_w = _ratio_ci(sum_w.sum(1), counts.sum(1))
    acc, acc_ci = _wilson(correct.sum(), counts.sum())
    overall_q, per_q, qkind = _quantiles(result)
    busy, elapsed = float(np.sum(result.busy_time)), float(np.sum(result.elapsed))
    rho = float(result.theory_utilization)
    capacity = float(result.capacity)
    theory_w = float(result.theory_mean_wait)
    st = (lambda v: json_number(v) if stable else None)
    theory_q, theory_q_tasks = _theory_quantile_keys(problem, budgets, service_cv, theory_quantiles, stable)
    per_task = []
    for k in range(K):
        mk, cik = _ratio_ci(sum_t[:, k], counts[:, k])
        wk, ciwk = _ratio_ci(sum_w[:, k], counts[:, k])
        ak, acik = _wilson(correct[:, k].sum(), counts[:, k].sum())
        tk = float(result.service_time[k])
        entry = {
            "task": names[k],
            "budget": float(np.asarray(budgets)[k]),
            "share": json_number(counts[:, k].sum() / counts.sum()),
            "prob": float(problem.prob[k]),
            "service_time": tk,
            "queries": int(counts[:, k].sum()),
            "mean_system_time": st(mk),
            "mean_system_time_ci95": [st(cik[0]), st(cik[1])],
            "theory_mean_system_time": json_number(result.theory_task_system_time[k]),
            "mean_wait": st(wk),
            "mean_wait_ci95": [st(ciwk[0]), st(ciwk[1])],
            "accuracy": json_number(ak),
            "accuracy_ci95": [json_number(acik[0]), json_number(acik[1])],
            "theory_accuracy": float(result.task_accuracy[k]),
        }
        for name, i in (("p50", 0), ("p95", 1), ("p99", 2)):
            entry[name] = st(per_q[k][i]) if per_q is not None else None
        entry.update(theory_q_tasks[k])
        per_task.append(entry)
    if stable:
        status, message = "stable", ""
    else:
        status = "unstable"
        load = f"utilization λE[S] = {rho:.4g}" if capacity == 1 else f"load λE[S]/capacity = {rho:.4g}"
        message = (
            f"queue unstable: {load} >= 1, waits grow without bound; "
            "the simulated mean system time only reflects the run length and is not reported"
        )
    return {
        "mean_system_time": st(mean_t),
        "mean_system_time_ci95": [st(ci_t[0]), st(ci_t[1])],
        "theory_mean_system_time": json_number(result.theory_mean_system_time),
        "p50": st(overall_q[0]),
        "p95": st(overall_q[1]),
        "p99": st(overall_q[2]),
        **theory_q,
        "accuracy": json_number(acc),
        "accuracy_ci95": [json_number(acc_ci[0]), json_number(acc_ci[1])],
        "theory_accuracy": float(result.theory_accuracy),
        "utilization": json_number(busy / (elapsed * capacity)) if elapsed > 0 else None,
        "theory_utilization": rho,
        "mean_wait": st(mean_w),
        "mean_wait_ci95": [st(ci_w[0]), st(ci_w[1])],
        "theory_mean_wait": json_number(theory_w),
        "stable": stable,
        "status": status,
        "message": message,
        "quantiles": qkind,
        "tasks": names,
        "budgets": [float(x) for x in np.asarray(budgets)],
        "queries": result.queries,
        "warmup": result.warmup,
        "replications": R,
        "service_cv": float(service_cv),
        "arrival_rate": float(problem.arrival_rate),
        "server": problem.server.describe(tuple(names)),
        "theory": theory_name(problem.server),
        "per_task": per_task,
    }


def _theory_quantile_line(report: dict[str, Any], f) -> list[str]:
    """`p50 / p95 / p99 (theory) ...`: the model's quantiles, or why there are none (no line for a report
    without the keys)."""
    if "theory_quantiles_note" not in report:
        return []
    head = "p50 / p95 / p99 (theory)"
    if report["theory_quantiles"] is None:
        return [f"{head} — ({report['theory_quantiles_note']})"]
    values = " / ".join(f(report[k]) for k in ("theory_p50", "theory_p95", "theory_p99"))
    return [f"{head} {values} s (exact inversion)"]


def format_simulation_report(report: dict[str, Any], title: str = "") -> str:
    """A table for people."""

    def f(v, spec=".4f"):
        return "—" if v is None else format(v, spec)

    def ci(pair, spec=".4f"):
        return "—" if pair[0] is None else f"[{f(pair[0], spec)}, {f(pair[1], spec)}]"

    theory = report.get("theory", "Pollaczek–Khinchine")
    short = {"Pollaczek–Khinchine": "P-K", "Lee–Longton": "L-L", "Cobham": "Cobham"}.get(theory, "theory")
    lines = [title] if title else []
    lines.append(
        f"λ = {report['arrival_rate']:g}/s, {report['replications']} replications × {report['queries']} queries"
        f" (warm-up {report['warmup']}), service cv = {report['service_cv']:g}, quantiles: {report['quantiles']}"
    )
    width = max([4, *(len(n) for n in report["tasks"])])
    lines.append(
        f"{'task':<{width}}  {'budget':>8}  {'share':>6}  {'E[T] sim':>9}  {'E[T] ' + short:>9}  {'p95':>9}  "
        f"{'accuracy':>8}  {'p_k(ℓ_k)':>8}"
    )
    for t in report["per_task"]:
        lines.append(
            f"{t['task']:<{width}}  {t['budget']:>8g}  {f(t['share'], '.3f'):>6}  {f(t['mean_system_time']):>9}  "
            f"{f(t['theory_mean_system_time']):>9}  {f(t['p95']):>9}  {f(t['accuracy']):>8}  "
            f"{t['theory_accuracy']:>8.4f}"
        )
    lines += [
        f"mean system time      {f(report['mean_system_time'])} s, 95% CI {ci(report['mean_system_time_ci95'])}",
        f"{theory:<21} {f(report['theory_mean_system_time'])} s",
        (f"mean wait             {f(report['mean_wait'])} s, 95% CI {ci(report['mean_wait_ci95'])}"
         f" (theory {f(report['theory_mean_wait'])})"),
        f"p50 / p95 / p99       {f(report['p50'])} / {f(report['p95'])} / {f(report['p99'])} s",
        *_theory_quantile_line(report, f),
        (f"accuracy              {f(report['accuracy'])}, 95% CI {ci(report['accuracy_ci95'])}"
         f" (theory {report['theory_accuracy']:.4f})"),
        f"utilization           {f(report['utilization'])} (theory {report['theory_utilization']:.4f})",
    ]
    if not report["stable"]:
        lines.append(f"UNSTABLE: {report['message']}")
    return "\n".join(lines)
